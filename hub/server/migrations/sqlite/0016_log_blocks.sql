-- The root of each complete 256-leaf block of the log's Merkle tree, kept
-- so that a starting hub folds these (1/256th of the leaves) instead of
-- reading every leaf hash. Derived from `log_entries`; a missing row is
-- read from the leaves instead, and written again.
CREATE TABLE log_blocks (
    block INTEGER PRIMARY KEY,
    root BLOB NOT NULL CHECK (length(root) = 32)
);

CREATE TRIGGER log_blocks_append_only_update BEFORE UPDATE ON log_blocks
BEGIN SELECT RAISE(ABORT, 'the log''s block roots are append-only'); END;
CREATE TRIGGER log_blocks_append_only_delete BEFORE DELETE ON log_blocks
BEGIN SELECT RAISE(ABORT, 'the log''s block roots are append-only'); END;
