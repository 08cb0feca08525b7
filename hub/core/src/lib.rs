//! The hub's pure core: everything an auditor's tool, an adapter and the
//! server share, and nothing that does I/O.
//!
//! - [`ids`]: typed identifiers (agency codes, personal IDs, tax codes, exchange ids)
//! - [`body`]: salted body commitments and AES-256-GCM encryption at rest
//! - [`jcs`]: RFC 8785 canonical JSON
//! - [`jws`]: detached JWS with unencoded payload (RFC 7515 + RFC 7797), Ed25519 and P-256
//! - [`handover`]: the hub key's rotations, each new key signed by the one it retires
//! - [`envelope`]: the exchange envelope as a typed value
//! - [`fields`]: field-level grants: which parts of a response a consumer receives
//! - [`decide`]: the pipeline's decisions as pure steps (shared with replay)
//! - [`schema`]: the schema catalog, compiled once, with the named semantic checks
//! - [`semantic`]: checks a schema cannot express (ID vs birth year, tax-code check digit)
//! - [`log`]: log entries, their canonical form, hub signature and RFC 6962 leaf hash
//! - [`merkle`]: the RFC 9162 Merkle tree, proofs and their verification
//! - [`note`]: signed checkpoints (C2SP tlog-checkpoint in a signed-note)
//!
//! Time, randomness and keys are always parameters, so tests and replays are exact.
#![forbid(unsafe_code)]

pub mod body;
pub mod decide;
pub mod envelope;
pub mod fields;
pub mod handover;
pub mod hash;
pub mod ids;
pub mod jcs;
pub mod jws;
pub mod limits;
pub mod log;
pub mod merkle;
pub mod note;
pub mod schema;
pub mod semantic;
pub mod timefmt;
