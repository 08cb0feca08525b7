-- A counter that every change to the facts requests are decided on
-- advances: the hub keeps those facts in memory, tagged with the version it
-- read, and the log writer sends a decision made on an older version back
-- to be made again (see hub_server::registry_cache).
CREATE TABLE registry_version (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_version (one, version) VALUES (1, 1);

CREATE TRIGGER agencies_insert_advances_registry_version AFTER INSERT ON agencies
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER agencies_update_advances_registry_version AFTER UPDATE ON agencies
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER agencies_delete_advances_registry_version AFTER DELETE ON agencies
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER services_insert_advances_registry_version AFTER INSERT ON services
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER services_update_advances_registry_version AFTER UPDATE ON services
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER services_delete_advances_registry_version AFTER DELETE ON services
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER grants_insert_advances_registry_version AFTER INSERT ON grants
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER grants_update_advances_registry_version AFTER UPDATE ON grants
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER grants_delete_advances_registry_version AFTER DELETE ON grants
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER subscriptions_insert_advances_registry_version AFTER INSERT ON subscriptions
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER subscriptions_update_advances_registry_version AFTER UPDATE ON subscriptions
BEGIN
    UPDATE registry_version SET version = version + 1;
END;

CREATE TRIGGER subscriptions_delete_advances_registry_version AFTER DELETE ON subscriptions
BEGIN
    UPDATE registry_version SET version = version + 1;
END;
