-- "Who saw my data": every log entry by the data subjects it touched, each
-- as the keyed hash of their personal ID (hub_core::log::subject_of).
CREATE TABLE subjects (
    subject TEXT NOT NULL,
    idx     BIGINT NOT NULL,
    PRIMARY KEY (subject, idx)
);
