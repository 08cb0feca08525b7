-- Client certificates the hub refuses from their next handshake, whatever
-- their CA says: an administrator's logged registry change, shared by every
-- hub on this database (the CA's own CRL file, pki/crl.pem, is checked too).
CREATE TABLE revoked_certificates (
    serial     TEXT PRIMARY KEY,
    agency     TEXT NOT NULL,
    subsystem  TEXT NOT NULL,
    revoked_at TEXT NOT NULL
);
