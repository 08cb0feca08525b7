-- Witnesses whose cosignatures the hub accepts, by name, with their
-- verifier key (<name>+<key id>+<base64(0x04 || Ed25519 key)>).
CREATE TABLE witnesses (
    name TEXT PRIMARY KEY,
    vkey TEXT NOT NULL
);

-- Cosignature lines, one per witness and checkpoint.
CREATE TABLE cosignatures (
    size    INTEGER NOT NULL REFERENCES checkpoints (size),
    witness TEXT NOT NULL REFERENCES witnesses (name),
    line    TEXT NOT NULL,
    PRIMARY KEY (size, witness)
);
