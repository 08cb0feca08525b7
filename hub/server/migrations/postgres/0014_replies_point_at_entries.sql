-- An exchange's reply is the message of one logged entry: point at that
-- entry instead of storing its record and body a second time (sealed).
-- Replies stored before keep their `reply` bytes and are read as before.
ALTER TABLE exchanges ADD COLUMN reply_idx BIGINT;
