-- An agency suspended by an administrator: its requests are refused (403 member_suspended) from the next one on.
ALTER TABLE agencies ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;
