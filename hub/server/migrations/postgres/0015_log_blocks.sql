-- The root of each complete 256-leaf block of the log's Merkle tree, kept
-- so that a starting hub folds these (1/256th of the leaves) instead of
-- reading every leaf hash. Derived from `log_entries`; a missing row is
-- read from the leaves instead, and written again.
CREATE TABLE log_blocks (
    block BIGINT PRIMARY KEY,
    root BYTEA NOT NULL CHECK (length(root) = 32)
);

CREATE TRIGGER log_blocks_append_only BEFORE UPDATE OR DELETE ON log_blocks
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER log_blocks_no_truncate BEFORE TRUNCATE ON log_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
