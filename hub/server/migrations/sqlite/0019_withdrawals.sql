-- Events to take out of a recipient's inbox after a registry change that
-- stops their delivery (a revoked grant, a removed subscription). The row is
-- written in the change's own transaction; the messages are removed after
-- it, in batches, and the row deleted once they are. While one is pending,
-- the recipient's inbox hands out nothing. AUTOINCREMENT: an id is never
-- reused, so finishing one withdrawal cannot delete a newer one.
CREATE TABLE withdrawals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  TEXT NOT NULL,
    service    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX withdrawals_recipient ON withdrawals (recipient);
