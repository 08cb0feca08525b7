-- A body's entry cannot be missing: the log writer inserts both in one
-- statement from the same indexes, and entries are never updated, deleted
-- or truncated (`refuse_change`). The foreign key guarded nothing more, and
-- its check locked each new entry's row again (a heap write and a WAL
-- record per entry): ~10 % of PostgreSQL's CPU per event in the group
-- commit (docs/performance.md).
ALTER TABLE log_bodies DROP CONSTRAINT log_bodies_idx_fkey;
