-- The subject indexer's insert, three ways, on a scratch database: with
-- `ON CONFLICT DO NOTHING` (before), plain, and `SELECT DISTINCT` (what
-- hub/server/src/store/postgres.rs runs). 200,000 entries of two subjects
-- each (one of them shared by 40 entries), indexed in batches of 10,000
-- entries into a fresh `subjects` table per run, three rounds alternating:
--
--   createdb -h 127.0.0.1 -U postgres subjbench
--   psql -h 127.0.0.1 -U postgres -d subjbench -f hub/bench/subject-index-insert.sql | grep -E '^[a-z_]+$|Time: [0-9]{4}'
--   dropdb -h 127.0.0.1 -U postgres subjbench
\set ON_ERROR_STOP 1
CREATE TABLE log_entries (idx BIGINT PRIMARY KEY, subjects TEXT);
INSERT INTO log_entries
SELECT g, '["' || md5(g::text) || md5((g * 7)::text) || '","' || md5((g % 5000)::text) || md5('x') || '"]'
FROM generate_series(0, 199999) g;
VACUUM ANALYZE log_entries;
\timing on
\echo on_conflict
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL ON CONFLICT DO NOTHING; END LOOP; END $$;
DROP TABLE subjects;
\echo plain
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
\echo distinct
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT DISTINCT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
\echo on_conflict
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL ON CONFLICT DO NOTHING; END LOOP; END $$;
DROP TABLE subjects;
\echo plain
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
\echo distinct
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT DISTINCT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
\echo on_conflict
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL ON CONFLICT DO NOTHING; END LOOP; END $$;
DROP TABLE subjects;
\echo plain
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
\echo distinct
CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
CHECKPOINT;
DO $$ BEGIN FOR b IN 0..19 LOOP INSERT INTO subjects SELECT DISTINCT j, e.idx FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j WHERE e.idx >= b * 10000 AND e.idx < (b + 1) * 10000 AND e.subjects IS NOT NULL; END LOOP; END $$;
DROP TABLE subjects;
