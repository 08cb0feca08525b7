//! Exchange-log entries.
//!
//! Every outcome becomes one entry. The pipeline fills an [`EntryDraft`];
//! the log's single writer [`seal`]s it: gives it its index, the previous
//! entry's leaf hash and the time, signs the canonical statement with the
//! hub's key, and computes the RFC 6962 leaf hash of the canonical record
//! (statement + `hub_signature`): `SHA-256(0x00 || JCS(record))`.
//!
//! The record is also the receipt the hub hands out: whoever holds it can
//! check the hub's signature with the published JWKS, and later its
//! inclusion in the log.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::body::DataKey;
use crate::envelope::EndUser;
use crate::fields::FieldPointer;
use crate::hash::{Hash, b64url, sha256_parts};
use crate::ids::PersonalId;
use crate::ids::{CaseRef, ExchangeId, Member, PurposeCode, ServiceName};
use crate::jcs::{self, JcsError};
use crate::jws::{self, Jwks, JwsError, SigningKey};
use crate::timefmt::rfc3339_millis;

/// The entry format's version.
pub const ENTRY_VERSION: u32 = 1;

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

/// What the hub signs: the draft placed in the log.
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

/// A statement with the hub's detached JWS over its canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub statement: Statement,
    pub hub_signature: String,
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

/// Place `draft` at `index` after the entry whose leaf hash is `prev`, sign it.
pub fn seal(
    draft: EntryDraft,
    index: u64,
    prev: &Hash,
    time: OffsetDateTime,
    key: &SigningKey,
) -> Result<Sealed, JcsError> {
    let statement = Statement {
        v: ENTRY_VERSION,
        index,
        prev: b64url(prev),
        time: rfc3339_millis(time),
        draft,
    };
    // The record is the statement plus `hub_signature`: serialise and
    // canonicalise the statement once, and put the signature into its
    // canonical bytes where it belongs rather than canonicalise the record
    // again.
    let value = serde_json::to_value(&statement).map_err(|e| JcsError::NotJson(e.to_string()))?;
    let Value::Object(members) = &value else {
        return Err(JcsError::NotAnObject("the statement"));
    };
    let (canonical_statement, slot) = jcs::canonicalize_with_slot(members, "hub_signature")?;
    let hub_signature = key.sign_detached(&canonical_statement);
    let canonical = jcs::insert_member(&canonical_statement, slot, "hub_signature", &hub_signature);
    let record = Record {
        statement,
        hub_signature,
    };
    let leaf_hash = leaf_hash(&canonical);
    Ok(Sealed {
        record,
        canonical,
        leaf_hash,
    })
}

/// Check the hub's signature on a record given as JSON: the signature must
/// verify over the canonical form of the record without `hub_signature`.
pub fn verify_record_signature(record: &Value, keys: &Jwks) -> Result<String, RecordError> {
    let mut statement = record
        .as_object()
        .cloned()
        .ok_or(RecordError::NotAnObject)?;
    let sig = statement
        .remove("hub_signature")
        .and_then(|s| s.as_str().map(str::to_owned))
        .ok_or(RecordError::NoSignature)?;
    let canonical = jcs::canonicalize(&Value::Object(statement))?;
    Ok(jws::verify_detached(&sig, &canonical, keys)?)
}

/// A record that does not check out.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("the record has no hub_signature")]
    NoSignature,
    #[error(transparent)]
    Canonical(#[from] JcsError),
    #[error(transparent)]
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

    #[test]
    fn sealed_record_verifies_and_leaf_commits_to_it() {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = SigningKey::generate(&rng).unwrap();
        let keys = Jwks {
            keys: vec![key.public_jwk()],
        };
        let sealed = seal(draft(), 7, &[0; 32], OffsetDateTime::UNIX_EPOCH, &key).unwrap();
        let value = serde_json::to_value(&sealed.record).unwrap();
        assert_eq!(verify_record_signature(&value, &keys).unwrap(), key.kid());
        assert_eq!(jcs::canonicalize(&value).unwrap(), sealed.canonical);
        let mut expected = vec![0u8];
        expected.extend_from_slice(&sealed.canonical);
        assert_eq!(sealed.leaf_hash, sha256(&expected));
        // Any change to the statement breaks the signature.
        let mut tampered = value.clone();
        tampered["index"] = serde_json::json!(8);
        assert!(verify_record_signature(&tampered, &keys).is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = SigningKey::generate(&rng).unwrap();
        let sealed = seal(draft(), 0, &[0; 32], OffsetDateTime::UNIX_EPOCH, &key).unwrap();
        let back: Record = serde_json::from_slice(&sealed.canonical).unwrap();
        assert_eq!(back, sealed.record);
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
/// message, a request handed to an adapter: the hub's signature on the
/// record, and that `body_hash = SHA-256(salt || JCS(body))`. Returns the
/// key id.
pub fn verify_message(message: &Value, keys: &Jwks) -> Result<String, MessageError> {
    let record = message.get("record").ok_or(MessageError::NoRecord)?;
    let kid = verify_record_signature(record, keys)?;
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
