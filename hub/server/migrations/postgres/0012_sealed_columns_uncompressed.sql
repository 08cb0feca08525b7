-- Sealed columns hold AES-GCM ciphertext, which does not compress; yet a
-- row over ~2 KB (an exchange with its sealed reply, most of them) made
-- PostgreSQL try pglz on it at every insert, ~4 % of its CPU in the group
-- commit. Rows up to a page stay inline without that attempt, and a larger
-- value goes out of line as it is.
ALTER TABLE exchanges SET (toast_tuple_target = 8160);
ALTER TABLE exchanges ALTER COLUMN reply SET STORAGE EXTERNAL;
ALTER TABLE log_bodies SET (toast_tuple_target = 8160);
ALTER TABLE log_bodies ALTER COLUMN ciphertext SET STORAGE EXTERNAL;
ALTER TABLE deliveries SET (toast_tuple_target = 8160);
ALTER TABLE deliveries ALTER COLUMN message SET STORAGE EXTERNAL;
ALTER TABLE outbox SET (toast_tuple_target = 8160);
ALTER TABLE outbox ALTER COLUMN message SET STORAGE EXTERNAL;
