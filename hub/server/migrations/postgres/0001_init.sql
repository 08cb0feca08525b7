-- The hub's PostgreSQL schema: the same tables as the SQLite backend, with
-- PostgreSQL types. One file because this backend starts here.

-- The registry of agencies, services, grants and subscriptions.
CREATE TABLE agencies (
    agency      TEXT NOT NULL,
    subsystem   TEXT NOT NULL,
    name        TEXT NOT NULL,
    signing_jwk TEXT,
    PRIMARY KEY (agency, subsystem)
);

CREATE TABLE services (
    name               TEXT NOT NULL,
    version            BIGINT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('query', 'event')),
    provider_agency    TEXT NOT NULL,
    provider_subsystem TEXT NOT NULL,
    request_schema     TEXT NOT NULL,
    response_schema    TEXT,
    PRIMARY KEY (name, version),
    FOREIGN KEY (provider_agency, provider_subsystem) REFERENCES agencies (agency, subsystem)
);

-- Default deny: a consumer may call a service for a purpose only with a row here.
CREATE TABLE grants (
    consumer_agency    TEXT NOT NULL,
    consumer_subsystem TEXT NOT NULL,
    service            TEXT NOT NULL,
    purpose            TEXT NOT NULL,
    PRIMARY KEY (consumer_agency, consumer_subsystem, service, purpose),
    FOREIGN KEY (consumer_agency, consumer_subsystem) REFERENCES agencies (agency, subsystem)
);

CREATE TABLE subscriptions (
    agency    TEXT NOT NULL,
    subsystem TEXT NOT NULL,
    service   TEXT NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (agency, subsystem, service, version),
    FOREIGN KEY (service, version) REFERENCES services (name, version)
);

-- The exchange log: append-only. `record` is the canonical (RFC 8785) JSON
-- of the signed record; `leaf_hash` its RFC 6962 leaf hash.
CREATE TABLE log_entries (
    idx         BIGINT PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    record      TEXT NOT NULL,
    leaf_hash   BYTEA NOT NULL
);
CREATE INDEX log_entries_exchange ON log_entries (exchange_id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER log_entries_append_only BEFORE UPDATE OR DELETE ON log_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER log_entries_no_truncate BEFORE TRUNCATE ON log_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The bodies whose commitments the entries carry, sealed with the data key
-- (AES-256-GCM over salt || body), kept apart so that a retention policy
-- can purge them while the log still verifies.
CREATE TABLE log_bodies (
    idx        BIGINT PRIMARY KEY REFERENCES log_entries (idx),
    key_id     TEXT NOT NULL,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL
);

-- Idempotency: one row per accepted exchange id; `reply` is sealed.
CREATE TABLE exchanges (
    exchange_id  TEXT PRIMARY KEY,
    sender       TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    reply        BYTEA,
    created_at   BIGINT NOT NULL
);
CREATE INDEX exchanges_created ON exchanges (created_at);

-- The embedded durable queue (and outbox): one row per message a recipient
-- has not yet acknowledged; `message` is sealed.
CREATE TABLE deliveries (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient   TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    message     BYTEA NOT NULL,
    visible_at  BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (recipient, exchange_id)
);
CREATE INDEX deliveries_ready ON deliveries (recipient, visible_at, seq);

-- Signed checkpoints (C2SP tlog-checkpoint in a signed note), one per tree
-- size. Append-only like the log.
CREATE TABLE checkpoints (
    size BIGINT PRIMARY KEY,
    root BYTEA NOT NULL,
    note TEXT NOT NULL
);
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Witnesses whose cosignatures the hub accepts.
CREATE TABLE witnesses (
    name TEXT PRIMARY KEY,
    vkey TEXT NOT NULL
);

-- Cosignature lines, one per witness and checkpoint.
CREATE TABLE cosignatures (
    size    BIGINT NOT NULL REFERENCES checkpoints (size),
    witness TEXT NOT NULL REFERENCES witnesses (name),
    line    TEXT NOT NULL,
    PRIMARY KEY (size, witness)
);
