-- Data minimisation: the response fields a grant releases, as a JSON array
-- of JSON pointers; NULL releases the whole response.
ALTER TABLE grants ADD COLUMN fields TEXT;
