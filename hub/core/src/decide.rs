//! The pipeline's decisions, as pure steps: parse a request, authenticate
//! its sender, route it, authorize it, validate its payload. The server runs
//! them with what it looks up in its store between steps; an auditor's
//! replay runs the same steps against an exported registry, so both reach
//! the same verdict from the same facts.

use std::fmt::Write as _;

use serde_json::Value;

use crate::envelope::{Envelope, ExchangeRequest, ServiceKind};
use crate::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use crate::jcs;
use crate::jws::{self, Jwk, Jwks, JwsError};
use crate::schema::{Catalog, SchemaRejection, Violation};

/// Why a request is refused. Every variant has a stable code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the request body is not JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be {{\"envelope\": {{...}}, \"signature\": \"...\"}}: {0}")]
    MalformedRequest(String),
    #[error("at {pointer:?}: {rule}")]
    JsonLimit { pointer: String, rule: String },
    #[error("the envelope is invalid ({} violation(s))", .0.len())]
    InvalidEnvelope(Vec<Violation>),
    #[error("the envelope names sender {claimed} but the client certificate is {authenticated}")]
    SenderMismatch {
        claimed: Member,
        authenticated: Member,
    },
    #[error("{0} is not a registered member")]
    UnknownMember(Member),
    #[error("{0} is suspended")]
    MemberSuspended(Member),
    #[error("{0} registered a signing key: the envelope must carry its signature")]
    SignatureRequired(Member),
    #[error("the envelope signature does not verify: {0}")]
    SignatureInvalid(JwsError),
    #[error("{0} has no registered signing key to verify a signature with")]
    SignatureUnexpected(Member),
    #[error("no service {service} version {version}")]
    UnknownService { service: ServiceName, version: u32 },
    #[error("the envelope names receiver {named}, but {service} is provided by {provider}")]
    ReceiverMismatch {
        service: ServiceName,
        named: Member,
        provider: Member,
    },
    #[error("{consumer} has no grant for {service} with purpose {purpose}")]
    NoGrant {
        consumer: Member,
        service: ServiceName,
        purpose: PurposeCode,
    },
    #[error("only {provider}, the provider of {service}, may publish it")]
    NotProvider {
        service: ServiceName,
        provider: Member,
    },
    #[error("the payload is invalid against {schema} ({} violation(s))", violations.len())]
    InvalidPayload {
        schema: String,
        violations: Vec<Violation>,
    },
}

impl Refusal {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::MalformedRequest(_) => "malformed_request",
            Self::JsonLimit { .. } => "json_limit_exceeded",
            Self::InvalidEnvelope(_) => "invalid_envelope",
            Self::SenderMismatch { .. } => "sender_mismatch",
            Self::UnknownMember(_) => "unknown_member",
            Self::MemberSuspended(_) => "member_suspended",
            Self::SignatureRequired(_) => "signature_required",
            Self::SignatureInvalid(_) => "signature_invalid",
            Self::SignatureUnexpected(_) => "signature_unexpected",
            Self::UnknownService { .. } => "unknown_service",
            Self::ReceiverMismatch { .. } => "receiver_mismatch",
            Self::NoGrant { .. } => "no_grant",
            Self::NotProvider { .. } => "not_provider",
            Self::InvalidPayload { .. } => "invalid_payload",
        }
    }

    /// Every violation the refusal carries.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::InvalidEnvelope(v) | Self::InvalidPayload { violations: v, .. } => v,
            _ => &[],
        }
    }
}

/// A service as the decisions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: ServiceName,
    pub version: u32,
    pub kind: ServiceKind,
    pub provider: Member,
    pub request_schema: String,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub envelope: Envelope,
    /// RFC 8785 form of the envelope as sent: what a signature covers and
    /// what the log stores.
    pub canonical: Vec<u8>,
    pub signature: Option<String>,
}

/// What could be read of a request before it was refused, for the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partial {
    pub exchange_id: Option<ExchangeId>,
    pub envelope: Option<Envelope>,
    /// The canonical envelope once known; until then the raw bytes.
    pub body: Vec<u8>,
    pub signature: Option<String>,
}

fn single(keyword: &str, message: String) -> Vec<Violation> {
    vec![Violation {
        pointer: String::new(),
        keyword: keyword.into(),
        schema_path: String::new(),
        message,
    }]
}

/// Turn a schema rejection into violations.
pub fn violations_of(r: SchemaRejection) -> Vec<Violation> {
    match r {
        SchemaRejection::Invalid(v) => v,
        SchemaRejection::UnknownSchema(id) => {
            single("$ref", format!("the catalog has no schema {id}"))
        }
    }
}

/// Deepest nesting of arrays and objects a request may have (the JSON
/// parser itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest string, member names included, in bytes.
pub const MAX_JSON_STRING_BYTES: usize = 65_536;

/// Append `key` to a JSON pointer (RFC 6901: `~` as `~0`, `/` as `~1`),
/// without allocating for the usual key that needs neither.
fn push_escaped(pointer: &mut String, key: &str) {
    if !key.contains(['~', '/']) {
        pointer.push_str(key);
        return;
    }
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// The first place `value` goes past [`MAX_JSON_DEPTH`] or
/// [`MAX_JSON_STRING_BYTES`], as a refusal naming its JSON pointer.
fn check_json_limits(value: &Value, pointer: &mut String, depth: usize) -> Result<(), Refusal> {
    let refuse = |pointer: &str, rule: String| {
        Err(Refusal::JsonLimit {
            pointer: pointer.to_owned(),
            rule,
        })
    };
    match value {
        Value::String(s) if s.len() > MAX_JSON_STRING_BYTES => refuse(
            pointer,
            format!(
                "a string of {} bytes; at most {MAX_JSON_STRING_BYTES}",
                s.len()
            ),
        ),
        Value::Array(_) | Value::Object(_) if depth >= MAX_JSON_DEPTH => refuse(
            pointer,
            format!("nesting deeper than {MAX_JSON_DEPTH} levels"),
        ),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                // Writing to a String cannot fail.
                let _ = write!(pointer, "/{i}");
                check_json_limits(item, pointer, depth + 1)?;
                pointer.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                pointer.push('/');
                push_escaped(pointer, key);
                if key.len() > MAX_JSON_STRING_BYTES {
                    return refuse(
                        pointer,
                        format!(
                            "a member name of {} bytes; at most {MAX_JSON_STRING_BYTES}",
                            key.len()
                        ),
                    );
                }
                check_json_limits(item, pointer, depth + 1)?;
                pointer.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Step 1: JSON, the request wrapper, the canonical envelope, the envelope
/// schema, the typed envelope. On a refusal `partial` holds what was read
/// before it; a parsed request becomes a [`Partial`] only if a later step
/// refuses it (`Partial::from`), so the accepted path copies nothing.
pub fn parse(raw: &[u8], catalog: &Catalog, partial: &mut Partial) -> Result<Parsed, Refusal> {
    let refused = |partial: &mut Partial, body: &[u8], refusal: Refusal| {
        partial.body = body.to_vec();
        refusal
    };
    let value: Value = jcs::parse_strict(raw)
        .map_err(|e| refused(partial, raw, Refusal::MalformedJson(e.to_string())))?;
    check_json_limits(&value, &mut String::new(), 0).map_err(|r| refused(partial, raw, r))?;
    let request = ExchangeRequest::from_parsed(value)
        .map_err(|e| refused(partial, raw, Refusal::MalformedRequest(e)))?;
    partial.signature.clone_from(&request.signature);
    let canonical = jcs::canonicalize(&request.envelope).map_err(|e| {
        let refusal = Refusal::InvalidEnvelope(single("rfc8785", e.to_string()));
        refused(partial, raw, refusal)
    })?;
    if let Some(id) = request.envelope.get("id").and_then(Value::as_str) {
        partial.exchange_id = ExchangeId::parse(id).ok();
    }
    if let Err(r) = catalog.validate("envelope/v1", &request.envelope) {
        return Err(refused(
            partial,
            &canonical,
            Refusal::InvalidEnvelope(violations_of(r)),
        ));
    }
    let envelope: Envelope = match serde_json::from_value(request.envelope) {
        Ok(envelope) => envelope,
        Err(e) => {
            let refusal = Refusal::InvalidEnvelope(single("type", e.to_string()));
            return Err(refused(partial, &canonical, refusal));
        }
    };
    Ok(Parsed {
        envelope,
        canonical,
        signature: request.signature,
    })
}

impl From<Parsed> for Partial {
    /// Everything of a request that parsed, for logging its refusal.
    fn from(parsed: Parsed) -> Self {
        Self {
            exchange_id: parsed.envelope.id,
            envelope: Some(parsed.envelope),
            body: parsed.canonical,
            signature: parsed.signature,
        }
    }
}

/// Step 2b: a member an administrator suspended is refused whatever it
/// sends, from its next request on.
pub fn not_suspended(who: &Member, suspended: bool) -> Result<(), Refusal> {
    if suspended {
        return Err(Refusal::MemberSuspended(who.clone()));
    }
    Ok(())
}

/// Step 2: the envelope speaks for the certificate's member only, the member
/// is registered (`agency` is `None` if not; `Some(key)` with its key, if
/// any), and signs exactly when it registered a key.
pub fn authenticate(
    who: &Member,
    parsed: &Parsed,
    agency: Option<Option<&Jwk>>,
) -> Result<(), Refusal> {
    if &parsed.envelope.sender != who {
        return Err(Refusal::SenderMismatch {
            claimed: parsed.envelope.sender.clone(),
            authenticated: who.clone(),
        });
    }
    let key = agency.ok_or_else(|| Refusal::UnknownMember(who.clone()))?;
    match (key, &parsed.signature) {
        (Some(key), Some(sig)) => {
            let keys = Jwks {
                keys: vec![key.clone()],
            };
            jws::verify_detached(sig, &parsed.canonical, &keys)
                .map_err(Refusal::SignatureInvalid)?;
            Ok(())
        }
        (Some(_), None) => Err(Refusal::SignatureRequired(who.clone())),
        (None, Some(_)) => Err(Refusal::SignatureUnexpected(who.clone())),
        (None, None) => Ok(()),
    }
}

/// Step 3: the service exists and a named receiver is its provider.
pub fn route(parsed: &Parsed, service: Option<ServiceView>) -> Result<ServiceView, Refusal> {
    let env = &parsed.envelope;
    let service = service.ok_or_else(|| Refusal::UnknownService {
        service: env.service.clone(),
        version: env.version,
    })?;
    if let Some(named) = &env.receiver
        && named != &service.provider
    {
        return Err(Refusal::ReceiverMismatch {
            service: service.name.clone(),
            named: named.clone(),
            provider: service.provider.clone(),
        });
    }
    Ok(service)
}

/// Step 4, default deny: a query needs a grant for (consumer, service,
/// purpose) - `granted` says whether one exists; only the provider
/// publishes an event.
pub fn authorize(
    who: &Member,
    parsed: &Parsed,
    service: &ServiceView,
    granted: bool,
) -> Result<(), Refusal> {
    match service.kind {
        ServiceKind::Query if !granted => Err(Refusal::NoGrant {
            consumer: who.clone(),
            service: service.name.clone(),
            purpose: parsed.envelope.purpose.clone(),
        }),
        ServiceKind::Event if &service.provider != who => Err(Refusal::NotProvider {
            service: service.name.clone(),
            provider: service.provider.clone(),
        }),
        _ => Ok(()),
    }
}

/// Step 5: the payload against the service's schema and semantic checks.
pub fn validate_payload(
    parsed: &Parsed,
    service: &ServiceView,
    catalog: &Catalog,
) -> Result<(), Refusal> {
    catalog
        .validate(&service.request_schema, &parsed.envelope.payload)
        .map_err(|r| Refusal::InvalidPayload {
            schema: service.request_schema.clone(),
            violations: violations_of(r),
        })
}

/// The facts the decisions look up.
pub trait Registry {
    /// `None`: not registered; `Some(key)`: registered, with its signing key if any.
    fn agency(&self, member: &Member) -> Option<Option<&Jwk>>;
    /// Suspended by an administrator.
    fn suspended(&self, member: &Member) -> bool;
    fn service(&self, name: &ServiceName, version: u32) -> Option<ServiceView>;
    fn granted(&self, consumer: &Member, service: &ServiceName, purpose: &PurposeCode) -> bool;
}

/// Every step at once, against an in-memory registry (an auditor's replay).
pub fn decide(
    raw: &[u8],
    who: &Member,
    registry: &dyn Registry,
    catalog: &Catalog,
) -> Result<ServiceView, Refusal> {
    let parsed = parse(raw, catalog, &mut Partial::default())?;
    authenticate(who, &parsed, registry.agency(who))?;
    not_suspended(who, registry.suspended(who))?;
    let service = route(
        &parsed,
        registry.service(&parsed.envelope.service, parsed.envelope.version),
    )?;
    let granted = registry.granted(who, &service.name, &parsed.envelope.purpose);
    authorize(who, &parsed, &service, granted)?;
    validate_payload(&parsed, &service, catalog)?;
    Ok(service)
}
