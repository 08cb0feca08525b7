-- A counter that every change to the facts requests are decided on
-- advances: hubs keep those facts in memory, tagged with the version they
-- read, and the log writer sends a decision made on an older version back
-- to be made again (see hub_server::registry_cache).
CREATE TABLE registry_version (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT NOT NULL
);
INSERT INTO registry_version (one, version) VALUES (TRUE, 1);

CREATE FUNCTION advance_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER agencies_advance_registry_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON agencies
    FOR EACH STATEMENT EXECUTE FUNCTION advance_registry_version();
CREATE TRIGGER services_advance_registry_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON services
    FOR EACH STATEMENT EXECUTE FUNCTION advance_registry_version();
CREATE TRIGGER grants_advance_registry_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION advance_registry_version();
CREATE TRIGGER subscriptions_advance_registry_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION advance_registry_version();
