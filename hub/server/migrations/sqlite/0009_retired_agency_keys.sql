-- Agencies' retired envelope-signing keys (public JWKs with valid_until):
-- no new request is accepted under them, but what they signed still
-- verifies for an auditor (exported with the registry).
CREATE TABLE retired_agency_keys (
    agency    TEXT NOT NULL,
    subsystem TEXT NOT NULL,
    kid       TEXT NOT NULL,
    jwk       TEXT NOT NULL,
    PRIMARY KEY (agency, subsystem, kid)
);
