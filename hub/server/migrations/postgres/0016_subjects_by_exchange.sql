-- A data subject's access history is read a page at a time, its exchanges
-- in the order they began: the index keeps, with each entry that named
-- the subject, the first entry of that entry's exchange, and is ordered by
-- it, so that a page reads the index up to its last exchange and stops
-- (before, every page read every exchange that ever touched the person).
-- An exchange's first entry is written before any other of its entries,
-- so what is kept here never changes. (`idx + 0`: the exchange's entries
-- found by the exchange index, not by walking the log in key order.)
ALTER TABLE subjects ADD COLUMN exchange_first BIGINT;
UPDATE subjects s SET exchange_first = (
    SELECT MIN(f.idx + 0) FROM log_entries h JOIN log_entries f ON f.exchange_id = h.exchange_id
    WHERE h.idx = s.idx);
ALTER TABLE subjects ALTER COLUMN exchange_first SET NOT NULL;
ALTER TABLE subjects DROP CONSTRAINT subjects_pkey;
ALTER TABLE subjects ADD PRIMARY KEY (subject, exchange_first, idx);
