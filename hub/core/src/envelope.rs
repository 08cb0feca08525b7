//! The exchange envelope and the wire shapes around it.
//!
//! A request body is `{"envelope": {...}, "signature": "<detached JWS>"}`;
//! the signature (present when the sending agency registered a key) is over
//! the RFC 8785 canonical form of `envelope` exactly as sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{CaseRef, ExchangeId, Member, PersonalId, PurposeCode, ServiceName};
use crate::schema::Violation;

/// Whether a service answers (query) or announces (event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Query,
    Event,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "query" => Some(Self::Query),
            "event" => Some(Self::Event),
            _ => None,
        }
    }
}

/// The person on whose behalf an agency acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndUser {
    /// A citizen signed in with the national e-identity (VNeID).
    Citizen { personal_id: PersonalId },
    /// The official handling the case.
    Official {
        official_id: String,
        full_name: String,
    },
}

/// What an agency sends: who, to which service, why, and the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Set by the sender to make retries idempotent; otherwise the hub assigns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ExchangeId>,
    pub sender: Member,
    /// The provider, when the sender names it; it must match the service's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Member>,
    pub service: ServiceName,
    pub version: u32,
    pub purpose: PurposeCode,
    pub case_ref: CaseRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<EndUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub payload: Value,
}

/// The body of `POST /v1/exchanges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub envelope: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ExchangeRequest {
    /// The request in `value`, taken apart by moving its members: the
    /// envelope's tree is not rebuilt, as `serde_json::from_value` would.
    /// The same rules as the derived `Deserialize`.
    pub fn from_parsed(value: Value) -> Result<Self, String> {
        let Value::Object(mut members) = value else {
            return Err(
                "invalid type: expected an object with `envelope` and optional `signature`".into(),
            );
        };
        let envelope = members
            .remove("envelope")
            .ok_or("missing field `envelope`")?;
        let signature = match members.remove("signature") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("invalid type: `signature` must be a string".into()),
        };
        if let Some(name) = members.keys().next() {
            return Err(format!(
                "unknown field `{name}`, expected `envelope` or `signature`"
            ));
        }
        Ok(Self {
            envelope,
            signature,
        })
    }
}

/// The JSON body of every error the API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// The exchange the refusal was logged under, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_id: Option<ExchangeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
}
