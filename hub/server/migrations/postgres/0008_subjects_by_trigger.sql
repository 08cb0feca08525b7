-- The subject index is written by the entry's own insert: each entry
-- carries the keyed hashes of its data subjects as a JSON array, and this
-- trigger indexes them, so indexing costs the group commit no statement
-- (no round trip) of its own.
ALTER TABLE log_entries ADD COLUMN subjects TEXT;
CREATE FUNCTION log_entries_index_subjects() RETURNS trigger AS $$
BEGIN
    INSERT INTO subjects (subject, idx)
    SELECT s, NEW.idx FROM jsonb_array_elements_text(NEW.subjects::jsonb) AS s
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER log_entries_index_subjects AFTER INSERT ON log_entries
FOR EACH ROW WHEN (NEW.subjects IS NOT NULL) EXECUTE FUNCTION log_entries_index_subjects();
