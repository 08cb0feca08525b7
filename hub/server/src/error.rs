//! The pipeline's error enum. Each variant has a stable machine code; the
//! HTTP layer (`crate::http`) maps them to statuses in one place.

use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::JwsError;
use hub_core::schema::Violation;

/// Why an exchange was refused or did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("the request body is not JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be {{\"envelope\": {{...}}, \"signature\": \"...\"}}: {0}")]
    MalformedRequest(String),
    #[error("the envelope is invalid ({} violation(s))", .0.len())]
    InvalidEnvelope(Vec<Violation>),
    #[error("the envelope names sender {claimed} but the client certificate is {authenticated}")]
    SenderMismatch {
        claimed: Member,
        authenticated: Member,
    },
    #[error("{0} is not a registered member")]
    UnknownMember(Member),
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
    #[error("exchange id {0} was already used for a different request")]
    IdConflict(ExchangeId),
    #[error("exchange {0} is still in progress; retry later or GET /v1/exchanges/{0}")]
    InProgress(ExchangeId),
    #[error("the provider of {0} is unavailable")]
    ProviderUnavailable(ServiceName),
    #[error("the provider of {0} did not answer in time; GET /v1/exchanges/<id> later")]
    ProviderTimeout(ServiceName),
    #[error("the provider of {service} answered with an invalid payload ({} violation(s))", violations.len())]
    ProviderInvalidResponse {
        service: ServiceName,
        violations: Vec<Violation>,
    },
    #[error("the hub's storage is unavailable")]
    StorageUnavailable(String),
}

impl ExchangeError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::MalformedRequest(_) => "malformed_request",
            Self::InvalidEnvelope(_) => "invalid_envelope",
            Self::SenderMismatch { .. } => "sender_mismatch",
            Self::UnknownMember(_) => "unknown_member",
            Self::SignatureRequired(_) => "signature_required",
            Self::SignatureInvalid(_) => "signature_invalid",
            Self::SignatureUnexpected(_) => "signature_unexpected",
            Self::UnknownService { .. } => "unknown_service",
            Self::ReceiverMismatch { .. } => "receiver_mismatch",
            Self::NoGrant { .. } => "no_grant",
            Self::NotProvider { .. } => "not_provider",
            Self::InvalidPayload { .. } => "invalid_payload",
            Self::IdConflict(_) => "exchange_id_conflict",
            Self::InProgress(_) => "exchange_in_progress",
            Self::ProviderUnavailable(_) => "provider_unavailable",
            Self::ProviderTimeout(_) => "provider_timeout",
            Self::ProviderInvalidResponse { .. } => "provider_invalid_response",
            Self::StorageUnavailable(_) => "storage_unavailable",
        }
    }

    /// Every violation the error carries.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::InvalidEnvelope(v) => v,
            Self::InvalidPayload { violations, .. }
            | Self::ProviderInvalidResponse { violations, .. } => violations,
            _ => &[],
        }
    }
}

/// Where an outcome was logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub exchange_id: ExchangeId,
    pub index: u64,
}

/// An error and, when it was logged, where.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: ExchangeError,
    pub logged: Option<Logged>,
}

impl From<ExchangeError> for Failure {
    fn from(error: ExchangeError) -> Self {
        Self {
            error,
            logged: None,
        }
    }
}
