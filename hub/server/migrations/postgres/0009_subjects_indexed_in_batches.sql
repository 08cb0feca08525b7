-- The subject index is filled in batches by a background task instead of
-- per entry in the group commit: entries carry their subjects in
-- `log_entries.subjects`, durably with the entry;
-- `subject_index_state.indexed_up_to` says where the index stops, and a
-- lookup also scans the entries past it, so it always sees every entry.
DROP TRIGGER log_entries_index_subjects ON log_entries;
DROP FUNCTION log_entries_index_subjects();
CREATE TABLE subject_index_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_up_to BIGINT NOT NULL
);
INSERT INTO subject_index_state (id, indexed_up_to)
SELECT 1, COALESCE(MAX(idx) + 1, 0) FROM log_entries;
