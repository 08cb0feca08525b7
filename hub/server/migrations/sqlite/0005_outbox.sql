-- The transactional outbox for remote providers (adapters reached over
-- AMQP): a row commits with its log entry; the relay publishes it with a
-- publisher confirm and only then deletes it. Each hub instance relays
-- its own rows, so that the answer comes back to the hub that waits for it.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    message     BLOB NOT NULL,
    UNIQUE (recipient, exchange_id)
);
CREATE INDEX outbox_instance ON outbox (instance, seq);
