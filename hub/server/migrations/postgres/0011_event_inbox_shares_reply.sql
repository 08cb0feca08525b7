-- An event's inbox rows no longer copy its sealed message: NULL means the
-- message is the exchange's reply (see PgStore::insert).
ALTER TABLE deliveries ALTER COLUMN message DROP NOT NULL;
