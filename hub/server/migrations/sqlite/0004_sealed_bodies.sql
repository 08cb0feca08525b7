-- Bodies are kept encrypted (AES-256-GCM under the data key; the plaintext
-- is salt || body). Development databases lose their plaintext bodies here:
-- their entries still verify, as after a purge.
DROP TABLE log_bodies;
CREATE TABLE log_bodies (
    idx        INTEGER PRIMARY KEY REFERENCES log_entries (idx),
    key_id     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);

-- For purging the reply cache after the retention period.
ALTER TABLE exchanges ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
