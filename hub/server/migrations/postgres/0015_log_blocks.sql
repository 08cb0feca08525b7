-- The root of each complete 256-leaf block of the log's Merkle tree, kept
-- so that a starting hub folds these (1/256th of the leaves) instead of
-- reading every leaf hash. Derived from `log_entries`; a missing row is
-- read from the leaves instead, and written again.
CREATE TABLE log_blocks (
    block BIGINT PRIMARY KEY,
    root BYTEA NOT NULL CHECK (length(root) = 32)
);
