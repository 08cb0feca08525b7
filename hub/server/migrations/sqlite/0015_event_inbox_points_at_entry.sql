-- An event's inbox messages are its exchange's reply, which is its logged
-- entry: they point there (message NULL, read through exchanges.reply_idx)
-- instead of keeping a sealed copy per subscriber, as on PostgreSQL.
-- SQLite cannot drop a NOT NULL constraint, so the table is rebuilt; rows
-- queued before keep their sealed copies and are read as before.
CREATE TABLE deliveries_new (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    message     TEXT,
    visible_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (recipient, exchange_id)
);
INSERT INTO deliveries_new (seq, recipient, exchange_id, message, visible_at, attempts)
    SELECT seq, recipient, exchange_id, message, visible_at, attempts FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_ready ON deliveries (recipient, visible_at);
