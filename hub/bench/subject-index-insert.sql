-- The subject indexer's insert, three ways, on a scratch database: with
-- `ON CONFLICT DO NOTHING` (before), plain, and `SELECT DISTINCT` (what
-- hub/server/src/store/postgres.rs runs). 200,000 entries of two subjects
-- each (one of them shared by 40 entries), indexed in batches of 10,000
-- entries into a fresh `subjects` table per run, after a checkpoint;
-- three rounds alternating, each run's seconds printed:
--
--   createdb -h 127.0.0.1 -U postgres subjbench
--   psql -q -h 127.0.0.1 -U postgres -d subjbench -f hub/bench/subject-index-insert.sql
--   dropdb -h 127.0.0.1 -U postgres subjbench
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE TABLE log_entries (idx BIGINT PRIMARY KEY, subjects TEXT);
INSERT INTO log_entries
SELECT g, '["' || md5(g::text) || md5((g * 7)::text) || '","' || md5((g % 5000)::text) || md5('x') || '"]'
FROM generate_series(0, 199999) g;
VACUUM ANALYZE log_entries;

CREATE PROCEDURE index_into_fresh_table(variant text) LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
    distinct_ text := CASE variant WHEN 'distinct' THEN 'DISTINCT' ELSE '' END;
    conflict text := CASE variant WHEN 'on_conflict' THEN 'ON CONFLICT DO NOTHING' ELSE '' END;
BEGIN
    DROP TABLE IF EXISTS subjects;
    CREATE TABLE subjects (subject TEXT NOT NULL, idx BIGINT NOT NULL, PRIMARY KEY (subject, idx));
    COMMIT;
    CHECKPOINT;
    started := clock_timestamp();
    FOR b IN 0..19 LOOP
        EXECUTE format(
            'INSERT INTO subjects SELECT %s j, e.idx
             FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j
             WHERE e.idx >= $1 AND e.idx < $2 AND e.subjects IS NOT NULL %s',
            distinct_, conflict)
        USING b * 10000, (b + 1) * 10000;
    END LOOP;
    COMMIT;
    RAISE WARNING '%: % s', variant, round(extract(epoch FROM clock_timestamp() - started), 2);
END $$;

SELECT format('CALL index_into_fresh_table(%L)', v)
FROM generate_series(1, 3) r, unnest(ARRAY['on_conflict', 'plain', 'distinct']) WITH ORDINALITY AS u(v, i)
ORDER BY r, i
\gexec
