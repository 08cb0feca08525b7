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
    version            INTEGER NOT NULL,
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
    version   INTEGER NOT NULL,
    PRIMARY KEY (agency, subsystem, service, version),
    FOREIGN KEY (service, version) REFERENCES services (name, version)
);

-- The exchange log: append-only. `record` is the canonical (RFC 8785) JSON
-- of the signed record; `leaf_hash` its RFC 6962 leaf hash.
CREATE TABLE log_entries (
    idx         INTEGER PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    record      TEXT NOT NULL,
    leaf_hash   BLOB NOT NULL
);
CREATE INDEX log_entries_exchange ON log_entries (exchange_id);

CREATE TRIGGER log_entries_append_only_update BEFORE UPDATE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the exchange log is append-only'); END;
CREATE TRIGGER log_entries_append_only_delete BEFORE DELETE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the exchange log is append-only'); END;

-- The bodies whose hashes the entries carry, kept apart so that a retention
-- policy can purge them while the log still verifies.
CREATE TABLE log_bodies (
    idx  INTEGER PRIMARY KEY REFERENCES log_entries (idx),
    body BLOB NOT NULL
);

-- Idempotency: one row per accepted exchange id.
CREATE TABLE exchanges (
    exchange_id  TEXT PRIMARY KEY,
    sender       TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    reply        TEXT
);

-- The embedded durable queue (and outbox): one row per message a recipient
-- has not yet acknowledged.
CREATE TABLE deliveries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    message     TEXT NOT NULL,
    visible_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (recipient, exchange_id)
);
CREATE INDEX deliveries_ready ON deliveries (recipient, visible_at);
