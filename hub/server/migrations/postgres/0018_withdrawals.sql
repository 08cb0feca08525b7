-- Events to take out of a recipient's inbox after a registry change that
-- stops their delivery (a revoked grant, a removed subscription). The row is
-- written in the change's own transaction; the messages are removed after
-- it, in batches outside the writers' lock, and the row deleted once they
-- are. While one is pending, the recipient's inbox hands out nothing.
CREATE TABLE withdrawals (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient  TEXT NOT NULL,
    service    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX withdrawals_recipient ON withdrawals (recipient);
