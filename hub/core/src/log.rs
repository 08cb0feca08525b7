//! Exchange-log entries.
//!
//! Every outcome becomes one entry. The pipeline fills an [`EntryDraft`];
//! the log's single writer [`place`]s it - gives it its index, the previous
//! entry's leaf hash and the time - and [`seal_batch`]es each group commit:
//! the statements' RFC 6962 leaf hashes, `SHA-256(0x00 || JCS(statement))`,
//! form the batch's own Merkle tree, the hub signs that tree's root once,
//! and each record carries the signature and its leaf's path to the root
//! (`hub_seal`). One signature per commit instead of one per entry: that is
//! what entry version 2 changed. Version 1 records (`hub_signature`, a JWS
//! over each statement, the leaf hash over the whole record) still verify.
//!
//! The record is also the receipt the hub hands out: whoever holds it can
//! check the hub's seal with the published JWKS, and later its inclusion in
//! the log.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::body::DataKey;
use crate::envelope::EndUser;
use crate::fields::FieldPointer;
use crate::hash::{Hash, b64url, from_b64url, sha256_parts};
use crate::ids::PersonalId;
use crate::ids::{CaseRef, ExchangeId, Member, PurposeCode, ServiceName};
use crate::jcs::{self, JcsError};
use crate::jws::{self, Jwks, JwsError, SigningKey};
use crate::merkle::{self, ProofError, Tree};
use crate::timefmt::rfc3339_millis;

/// The entry format's version: 2 seals entries by the batch.
pub const ENTRY_VERSION: u32 = 2;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A query accepted and queued for its provider.
    Request,
    /// A provider's answer to a request.
    Response,
    /// An event accepted and queued for every subscriber.
    Event,
    /// Something refused: invalid, denied, unknown service, bad signature.
    Refusal,
    /// A recipient acknowledged a delivery.
    Receipt,
    /// An accepted exchange that failed: provider unavailable, timed out, invalid answer.
    Failure,
    /// An administrator changed the registry (the body is the change).
    Admin,
}

impl EntryKind {
    /// Every kind, in declaration order.
    pub const ALL: [EntryKind; 7] = [
        Self::Request,
        Self::Response,
        Self::Event,
        Self::Refusal,
        Self::Receipt,
        Self::Failure,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
            Self::Event => "event",
            Self::Refusal => "refusal",
            Self::Receipt => "receipt",
            Self::Failure => "failure",
            Self::Admin => "admin",
        }
    }
}

/// The end user as the log records them. A citizen is recorded by a hash
/// of their personal ID keyed with the hub's data key: the log shows that
/// an exchange was made on some citizen's behalf, and the hub (or an auditor
/// given the key) can find every exchange for one citizen, but nobody can
/// test guesses of an ID against the log. Officials act in their role and
/// are recorded as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoggedEndUser {
    Citizen {
        subject: String,
    },
    Official {
        official_id: String,
        full_name: String,
    },
}

impl LoggedEndUser {
    /// The logged form of `user`; `subject_of` keys a personal ID.
    pub fn of(user: &EndUser, subject_of: impl Fn(&PersonalId) -> String) -> Self {
        match user {
            EndUser::Citizen { personal_id } => Self::Citizen {
                subject: subject_of(personal_id),
            },
            EndUser::Official {
                official_id,
                full_name,
            } => Self::Official {
                official_id: official_id.clone(),
                full_name: full_name.clone(),
            },
        }
    }
}

/// The keyed hash a data subject is logged and indexed by: HMAC-SHA-256 of
/// the personal ID under the hub's data key. Without the key nobody can
/// test a guessed ID against the log; with it, the hub finds every
/// exchange that touched one person.
pub fn subject_of(data_key: &DataKey, personal_id: &str) -> String {
    data_key.keyed_hash(format!("personal-id:{personal_id}").as_bytes())
}

/// The error a refusal or failure carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryError {
    pub code: String,
    pub message: String,
}

/// An entry before the log's writer places it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryDraft {
    pub kind: EntryKind,
    pub exchange_id: ExchangeId,
    /// Who sent what this entry records (the provider, for a response).
    pub sender: Member,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Member>,
    /// Every subscriber an event goes to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<PurposeCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<CaseRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<LoggedEndUser>,
    /// Data minimisation: on a request, the response fields the consumer's
    /// grant releases; on its response, the fields the answer held and the
    /// consumer received (the body holds nothing else). Absent: the grant
    /// releases the whole response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldPointer>>,
    /// The catalog id of the schema the body was validated against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The salted commitment to the body (`hub_core::body::commitment`):
    /// base64url `SHA-256(salt || body)`, the body being the canonical
    /// envelope, response payload or acknowledgment, or for unparseable
    /// input the raw bytes.
    pub body_hash: String,
    /// base64url SHA-256 of the body as stored (`nonce || ciphertext`), so
    /// that an auditor without the data key can still check that the stored
    /// body is the one logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_body_hash: Option<String>,
    /// The index of the entry this one answers or acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EntryError>,
    /// The sending agency's detached JWS over the canonical envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_signature: Option<String>,
}

impl EntryDraft {
    /// A draft of `kind` for `exchange_id` sent by `sender`, every other
    /// field empty; `body_hash` is filled by whoever commits to the body
    /// (the server's `Body::describe`).
    pub fn new(kind: EntryKind, exchange_id: ExchangeId, sender: Member) -> Self {
        Self {
            kind,
            exchange_id,
            sender,
            receiver: None,
            recipients: Vec::new(),
            service: None,
            version: None,
            purpose: None,
            case_ref: None,
            on_behalf_of: None,
            fields: None,
            schema: None,
            body_hash: String::new(),
            sealed_body_hash: None,
            refers_to: None,
            error: None,
            sender_signature: None,
        }
    }
}

/// The draft placed in the log: what the hub vouches for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub v: u32,
    pub index: u64,
    /// base64url leaf hash of entry `index - 1` (32 zero bytes for entry 0).
    pub prev: String,
    pub time: String,
    #[serde(flatten)]
    pub draft: EntryDraft,
}

/// How the hub vouches for a statement: the one member a record has
/// beside the statement's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HubSeal {
    /// Version 2: the statement's leaf is in a batch whose root the hub
    /// signed; the leaf hash covers the statement only.
    #[serde(rename = "hub_seal")]
    Batch(BatchSeal),
    /// Version 1: the hub's detached JWS over the canonical statement; the
    /// leaf hash covers the whole record.
    #[serde(rename = "hub_signature")]
    Signature(String),
}

/// The name of a version 2 record's seal member.
pub const SEAL_MEMBER: &str = "hub_seal";

/// A version 2 record's seal: the batch of entries `first..first + size`
/// that was written in one commit, the hub's detached JWS over
/// [`batch_statement`], and the entry's leaf's inclusion path in the tree
/// of the batch's leaves (RFC 9162 2.1.3.1, at `index - first`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSeal {
    pub first: u64,
    pub size: u64,
    /// base64url hashes, leaf to root.
    pub path: Vec<String>,
    pub signature: String,
}

/// What the hub signs for a batch: the canonical JSON
/// `{"first":F,"root":"<base64url>","size":N,"v":2}`.
pub fn batch_statement(first: u64, size: u64, root: &Hash) -> Vec<u8> {
    // Every member is a number or base64url: this is already RFC 8785's form.
    format!(
        r#"{{"first":{first},"root":"{}","size":{size},"v":2}}"#,
        b64url(root)
    )
    .into_bytes()
}

/// A statement with the hub's seal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub statement: Statement,
    #[serde(flatten)]
    pub seal: HubSeal,
}

/// A sealed entry: the record, its canonical bytes and its leaf hash.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub record: Record,
    pub canonical: Vec<u8>,
    pub leaf_hash: Hash,
}

/// The RFC 6962 leaf hash: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(canonical_entry: &[u8]) -> Hash {
    sha256_parts(&[&[0u8], canonical_entry])
}

/// A statement placed in the log and not yet sealed: its canonical bytes,
/// where the seal goes in them, and its leaf hash.
#[derive(Debug, Clone)]
pub struct Placed {
    statement: Statement,
    canonical: Vec<u8>,
    slot: usize,
    pub leaf_hash: Hash,
}

impl Placed {
    /// The statement, as its canonical bytes and leaf hash have it.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }
}

/// Place `draft` at `index` after the entry whose leaf hash is `prev`.
pub fn place(
    draft: EntryDraft,
    index: u64,
    prev: &Hash,
    time: OffsetDateTime,
) -> Result<Placed, JcsError> {
    let statement = Statement {
        v: ENTRY_VERSION,
        index,
        prev: b64url(prev),
        time: rfc3339_millis(time),
        draft,
    };
    // The seal goes into these canonical bytes where RFC 8785's order puts
    // it, rather than canonicalising the record again.
    let (canonical, slot) = jcs::canonicalize_with_slot(&statement, SEAL_MEMBER)?;
    let leaf_hash = leaf_hash(&canonical);
    Ok(Placed {
        statement,
        canonical,
        slot,
        leaf_hash,
    })
}

/// Seal `placed`, statements at consecutive indexes, as one batch: one
/// signature over the root of their leaves' tree.
pub fn seal_batch(placed: Vec<Placed>, key: &SigningKey) -> Result<Vec<Sealed>, JcsError> {
    let Some(first) = placed.first().map(|p| p.statement.index) else {
        return Ok(Vec::new());
    };
    debug_assert!(
        placed
            .iter()
            .zip(first..)
            .all(|(p, i)| p.statement.index == i),
        "a batch's statements are consecutive"
    );
    let size = placed.len() as u64;
    let mut tree = Tree::new();
    for p in &placed {
        tree.push(p.leaf_hash);
    }
    let root = tree.root_at(size).unwrap_or_else(merkle::empty_root);
    let signature = key.sign_detached(&batch_statement(first, size, &root));
    // The tree holds exactly these leaves, so there is a path for each.
    let mut paths = tree.inclusion_proofs(size).unwrap_or_default().into_iter();
    placed
        .into_iter()
        .map(|p| {
            let path = paths.next().unwrap_or_default();
            let seal = BatchSeal {
                first,
                size,
                path: path.iter().map(|h| b64url(h)).collect(),
                signature: signature.clone(),
            };
            let value = jcs::canonicalize_serialize(&seal)?;
            let canonical = jcs::insert_member(&p.canonical, p.slot, SEAL_MEMBER, &value);
            Ok(Sealed {
                record: Record {
                    statement: p.statement,
                    seal: HubSeal::Batch(seal),
                },
                canonical,
                leaf_hash: p.leaf_hash,
            })
        })
        .collect()
}

/// Place and seal one entry, a batch of its own.
pub fn seal(
    draft: EntryDraft,
    index: u64,
    prev: &Hash,
    time: OffsetDateTime,
    key: &SigningKey,
) -> Result<Sealed, JcsError> {
    let placed = place(draft, index, prev, time)?;
    seal_batch(vec![placed], key)?
        .pop()
        .ok_or(JcsError::NotAnObject("the statement"))
}

/// The leaf hash of a record given as JSON: of its statement (the record
/// without `hub_seal`) for version 2, of the whole record for version 1.
pub fn record_leaf_hash(record: &Value) -> Result<Hash, RecordError> {
    let members = record.as_object().ok_or(RecordError::NotAnObject)?;
    if !members.contains_key(SEAL_MEMBER) {
        return Ok(leaf_hash(&jcs::canonicalize(record)?));
    }
    let mut statement = members.clone();
    statement.remove(SEAL_MEMBER);
    statement_leaf_hash(statement)
}

/// The leaf hash of a version 2 statement: the record without its seal.
fn statement_leaf_hash(statement: Map<String, Value>) -> Result<Hash, RecordError> {
    Ok(leaf_hash(&jcs::canonicalize(&Value::Object(statement))?))
}

/// The leaf hash of a record in canonical form - a line of the log -
/// without parsing it: for version 2 the line without its one
/// `,"hub_seal":{...}` member (RFC 8785 writes members independently, and
/// no string in a seal holds a brace), for version 1 the whole line.
pub fn canonical_record_leaf_hash(line: &str) -> Hash {
    match seal_span(line) {
        Some((start, end)) => {
            sha256_parts(&[&[0u8], &line.as_bytes()[..start], &line.as_bytes()[end..]])
        }
        None => leaf_hash(line.as_bytes()),
    }
}

/// Where a canonical line's seal member, `,"hub_seal":{...}`, starts and
/// ends; `None` unless the line names `hub_seal` exactly once.
fn seal_span(line: &str) -> Option<(usize, usize)> {
    const MEMBER: &str = ",\"hub_seal\":{";
    let start = line.find(MEMBER)?;
    if line.matches("\"hub_seal\":").count() != 1 {
        return None;
    }
    let end = start + line[start..].find('}')? + 1;
    Some((start, end))
}

/// How many verified batch signatures a [`SealVerifier`] remembers.
const REMEMBERED_BATCHES: usize = 64;

/// Checks the hub's seals, remembering the batch signatures it verified:
/// of the records of one batch only the first costs a signature check,
/// the others hashing. Shared between tasks.
#[derive(Debug, Default)]
pub struct SealVerifier {
    /// `(signature, signed batch statement, key id)`, newest last.
    verified: std::sync::Mutex<std::collections::VecDeque<(String, Vec<u8>, String)>>,
}

impl SealVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check the hub's seal on a record given as JSON; returns the key id.
    pub fn verify_record(&self, record: &Value, keys: &Jwks) -> Result<String, RecordError> {
        let mut statement = record
            .as_object()
            .cloned()
            .ok_or(RecordError::NotAnObject)?;
        if let Some(seal) = statement.remove(SEAL_MEMBER) {
            let seal: BatchSeal =
                serde_json::from_value(seal).map_err(|e| RecordError::BadSeal(e.to_string()))?;
            let index = statement
                .get("index")
                .and_then(Value::as_u64)
                .ok_or_else(|| RecordError::BadSeal("the record has no index".into()))?;
            return self.verify_seal(&seal, index, &statement_leaf_hash(statement)?, keys);
        }
        let sig = statement
            .remove("hub_signature")
            .and_then(|s| s.as_str().map(str::to_owned))
            .ok_or(RecordError::NoSignature)?;
        let canonical = jcs::canonicalize(&Value::Object(statement))?;
        Ok(jws::verify_detached(&sig, &canonical, keys)?)
    }

    /// Check that `seal` vouches for the statement with leaf hash `leaf`
    /// at `index`; returns the key id.
    pub fn verify_seal(
        &self,
        seal: &BatchSeal,
        index: u64,
        leaf: &Hash,
        keys: &Jwks,
    ) -> Result<String, RecordError> {
        let at = index
            .checked_sub(seal.first)
            .filter(|at| *at < seal.size)
            .ok_or(RecordError::OutsideBatch {
                index,
                first: seal.first,
                size: seal.size,
            })?;
        let path = seal
            .path
            .iter()
            .map(|h| from_b64url(h))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RecordError::BadSeal("a path hash is not base64url".into()))?;
        let root = merkle::root_from_inclusion(at, seal.size, leaf, &path)?;
        let signed = batch_statement(seal.first, seal.size, &root);
        if let Some(kid) = self.remembered(&seal.signature, &signed, keys) {
            return Ok(kid);
        }
        let kid = jws::verify_detached(&seal.signature, &signed, keys)?;
        self.remember(&seal.signature, signed, &kid);
        Ok(kid)
    }

    fn remembered(&self, signature: &str, signed: &[u8], keys: &Jwks) -> Option<String> {
        let verified = self.verified.lock().ok()?;
        verified
            .iter()
            .rev()
            .find(|(s, b, kid)| s == signature && b == signed && keys.find(kid).is_some())
            .map(|(_, _, kid)| kid.clone())
    }

    fn remember(&self, signature: &str, signed: Vec<u8>, kid: &str) {
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() == REMEMBERED_BATCHES {
                verified.pop_front();
            }
            verified.push_back((signature.to_owned(), signed, kid.to_owned()));
        }
    }
}

/// Check the hub's seal on a record given as JSON (either version);
/// returns the key id.
pub fn verify_record_signature(record: &Value, keys: &Jwks) -> Result<String, RecordError> {
    SealVerifier::new().verify_record(record, keys)
}

/// A record that does not check out.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("the record has neither hub_seal nor hub_signature")]
    NoSignature,
    #[error("hub_seal is malformed: {0}")]
    BadSeal(String),
    #[error("hub_seal: index {index} is outside the batch of {size} from {first}")]
    OutsideBatch { index: u64, first: u64, size: u64 },
    #[error("hub_seal: the path does not lead to a batch root: {0}")]
    Path(#[from] ProofError),
    #[error(transparent)]
    Canonical(#[from] JcsError),
    #[error("the hub's signature: {0}")]
    Signature(#[from] JwsError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;
    use crate::ids::ExchangeId;

    fn draft() -> EntryDraft {
        EntryDraft {
            receiver: Some("000.00.00.G01/population-registry".parse().unwrap()),
            service: Some(ServiceName::parse("citizen.lookup").unwrap()),
            version: Some(1),
            body_hash: crate::body::commitment(&[0; 16], br#"{"personal_id":"001085012345"}"#),
            ..EntryDraft::new(
                EntryKind::Request,
                ExchangeId::from_parts(1_700_000_000_000, [1; 10]),
                "000.00.00.H29/one-stop".parse().unwrap(),
            )
        }
    }

    fn key() -> (SigningKey, Jwks) {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = SigningKey::generate(&rng).unwrap();
        let keys = Jwks {
            keys: vec![key.public_jwk()],
        };
        (key, keys)
    }

    /// `n` entries from index `first`, chained, sealed as one batch.
    fn batch(first: u64, n: usize, key: &SigningKey) -> Vec<Sealed> {
        let mut prev = [0; 32];
        let placed = (first..first + n as u64)
            .map(|i| {
                let p = place(draft(), i, &prev, OffsetDateTime::UNIX_EPOCH).unwrap();
                prev = p.leaf_hash;
                p
            })
            .collect();
        seal_batch(placed, key).unwrap()
    }

    fn value(sealed: &Sealed) -> Value {
        serde_json::from_slice(&sealed.canonical).unwrap()
    }

    #[test]
    fn a_batch_is_signed_once_and_each_record_verifies_alone() {
        let (key, keys) = key();
        let sealed = batch(7, 5, &key);
        let leaves: Vec<Hash> = sealed.iter().map(|s| s.leaf_hash).collect();
        let signed = batch_statement(7, 5, &merkle::root(&leaves));
        for (s, index) in sealed.iter().zip(7..) {
            let HubSeal::Batch(seal) = &s.record.seal else {
                panic!("not sealed by the batch")
            };
            assert_eq!((seal.first, seal.size), (7, 5));
            // One signature, over the root of the batch's leaves.
            assert_eq!(
                jws::verify_detached(&seal.signature, &signed, &keys).unwrap(),
                key.kid()
            );
            let v = value(s);
            assert_eq!(v["index"], index);
            assert_eq!(jcs::canonicalize(&v).unwrap(), s.canonical);
            assert_eq!(
                serde_json::to_value(&s.record).unwrap(),
                v,
                "the record serialises as its canonical bytes say"
            );
            // The leaf hash covers the statement: the record without its seal.
            let mut statement = v.as_object().unwrap().clone();
            statement.remove(SEAL_MEMBER);
            let mut expected = vec![0u8];
            expected.extend_from_slice(&jcs::canonicalize(&Value::Object(statement)).unwrap());
            assert_eq!(s.leaf_hash, sha256(&expected));
            assert_eq!(record_leaf_hash(&v).unwrap(), s.leaf_hash);
            let line = std::str::from_utf8(&s.canonical).unwrap();
            assert_eq!(canonical_record_leaf_hash(line), s.leaf_hash);
            // Each record verifies alone, with a verifier that saw no other.
            assert_eq!(verify_record_signature(&v, &keys).unwrap(), key.kid());
        }
        // The chain: each statement names the leaf before it.
        for pair in sealed.windows(2) {
            assert_eq!(pair[1].record.statement.prev, b64url(&pair[0].leaf_hash));
        }
    }

    #[test]
    fn a_sealed_record_changed_anywhere_fails() {
        let (key, keys) = key();
        let sealed = batch(3, 6, &key);
        let other = batch(3, 7, &key);
        let verifier = SealVerifier::new();
        let v = value(&sealed[2]);
        assert!(verifier.verify_record(&v, &keys).is_ok());
        type Change = Box<dyn Fn(&mut Value)>;
        let changes: Vec<(&str, Change)> = vec![
            ("the index", Box::new(|v| v["index"] = 4.into())),
            (
                "the time",
                Box::new(|v| v["time"] = "2000-01-01T00:00:00.000Z".into()),
            ),
            (
                "the body hash",
                Box::new(|v| v["body_hash"] = "AAAA".into()),
            ),
            (
                "the batch's first",
                Box::new(|v| v["hub_seal"]["first"] = 2.into()),
            ),
            (
                "the batch's size",
                Box::new(|v| v["hub_seal"]["size"] = 7.into()),
            ),
            ("a path hash", {
                let swapped = value(&sealed[3])["hub_seal"]["path"][0].clone();
                Box::new(move |v| v["hub_seal"]["path"][0] = swapped.clone())
            }),
            (
                "the path's length",
                Box::new(|v| {
                    v["hub_seal"]["path"].as_array_mut().unwrap().pop();
                }),
            ),
            ("another batch's signature", {
                let theirs = value(&other[2])["hub_seal"]["signature"].clone();
                Box::new(move |v| v["hub_seal"]["signature"] = theirs.clone())
            }),
            (
                "an unknown member in the seal",
                Box::new(|v| v["hub_seal"]["extra"] = 1.into()),
            ),
            (
                "no seal",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove(SEAL_MEMBER);
                }),
            ),
        ];
        for (what, change) in changes {
            let mut tampered = v.clone();
            change(&mut tampered);
            // Even with the batch's signature remembered from the record above.
            assert!(
                verifier.verify_record(&tampered, &keys).is_err(),
                "{what} changed, yet it verified"
            );
        }
        // Remembered only with the key still published.
        let none = Jwks { keys: Vec::new() };
        assert!(verifier.verify_record(&value(&sealed[4]), &none).is_err());
    }

    #[test]
    fn a_version_1_record_still_verifies() {
        let (key, keys) = key();
        let placed = place(draft(), 0, &[0; 32], OffsetDateTime::UNIX_EPOCH).unwrap();
        let mut record = serde_json::to_value(&placed.statement).unwrap();
        record["v"] = 1.into();
        let signature = key.sign_detached(&jcs::canonicalize(&record).unwrap());
        record["hub_signature"] = signature.clone().into();
        assert_eq!(verify_record_signature(&record, &keys).unwrap(), key.kid());
        // The leaf hash of a version 1 record covers the signature too.
        let mut expected = vec![0u8];
        expected.extend_from_slice(&jcs::canonicalize(&record).unwrap());
        assert_eq!(record_leaf_hash(&record).unwrap(), sha256(&expected));
        let line = String::from_utf8(jcs::canonicalize(&record).unwrap()).unwrap();
        assert_eq!(canonical_record_leaf_hash(&line), sha256(&expected));
        let back: Record = serde_json::from_value(record.clone()).unwrap();
        assert_eq!(back.seal, HubSeal::Signature(signature));
        record["index"] = 1.into();
        assert!(verify_record_signature(&record, &keys).is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let (key, _) = key();
        for sealed in batch(0, 3, &key) {
            let back: Record = serde_json::from_slice(&sealed.canonical).unwrap();
            assert_eq!(back, sealed.record);
        }
    }
}

/// A `{"record", "body", "body_salt"}` message that does not check out.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the message has no record")]
    NoRecord,
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the body does not match the record's body_hash")]
    BodyMismatch,
}

/// Check a `{"record", "body", "body_salt"}` message - a reply, an inbox
/// message, a request handed to an adapter: the hub's seal on the record,
/// and that `body_hash = SHA-256(salt || JCS(body))`. Returns the key id.
pub fn verify_message(message: &Value, keys: &Jwks) -> Result<String, MessageError> {
    SealVerifier::new().verify_message(message, keys)
}

impl SealVerifier {
    /// [`verify_message`], remembering batch signatures.
    pub fn verify_message(&self, message: &Value, keys: &Jwks) -> Result<String, MessageError> {
        let record = message.get("record").ok_or(MessageError::NoRecord)?;
        let kid = self.verify_record(record, keys)?;
        let body = message.get("body").ok_or(MessageError::BodyMismatch)?;
        let salt = message
            .get("body_salt")
            .and_then(Value::as_str)
            .and_then(crate::hash::from_b64url)
            .ok_or(MessageError::BodyMismatch)?;
        let canonical = crate::jcs::canonicalize(body).map_err(RecordError::from)?;
        let hash = crate::body::commitment(&salt, &canonical);
        if record.get("body_hash").and_then(Value::as_str) != Some(hash.as_str()) {
            return Err(MessageError::BodyMismatch);
        }
        Ok(kid)
    }
}
