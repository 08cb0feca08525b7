-- The subject index is written by the entry's own insert: each entry
-- carries the keyed hashes of its data subjects as a JSON array, and this
-- trigger indexes them, so indexing costs the group commit no statement
-- of its own.
ALTER TABLE log_entries ADD COLUMN subjects TEXT;
CREATE TRIGGER log_entries_index_subjects AFTER INSERT ON log_entries
WHEN NEW.subjects IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO subjects (subject, idx)
    SELECT value, NEW.idx FROM json_each(NEW.subjects);
END;
