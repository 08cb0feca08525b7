-- The transactional outbox for remote providers (adapters reached over
-- AMQP): a row commits with its log entry; the relay publishes it with a
-- publisher confirm and only then deletes it.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    message     BLOB NOT NULL,
    UNIQUE (recipient, exchange_id)
);
