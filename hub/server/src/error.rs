//! The pipeline's error enum: a refusal decided by `hub_core::decide`, or
//! what went wrong after acceptance. Each has a stable machine code; the
//! HTTP layer (`crate::http`) maps them to statuses in one place.

use hub_core::decide::Refusal;
use hub_core::ids::{ExchangeId, Member, ServiceName};
use hub_core::schema::Violation;

/// Why an exchange was refused or did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// A decision of the pipeline (see `hub_core::decide`); always logged.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("exchange id {0} was already used for a different request")]
    IdConflict(ExchangeId),
    #[error("exchange {0} is still in progress; retry later or GET /v1/exchanges/{0}")]
    InProgress(ExchangeId),
    #[error("the provider of {0} is unavailable")]
    ProviderUnavailable(ServiceName),
    #[error("the provider of {0} already has as many queries waiting as it may; retry later")]
    ProviderQueueFull(ServiceName),
    /// A subscriber's inbox is at its cap (`crate::backlog`); nothing was written.
    #[error(
        "the inbox of subscriber {recipient} holds {size} messages, the most it may ({max}); nothing was logged: publish again later, with the same exchange id"
    )]
    InboxFull {
        recipient: Member,
        size: u64,
        max: u64,
    },
    #[error("the provider of {0} did not answer in time; GET /v1/exchanges/<id> later")]
    ProviderTimeout(ServiceName),
    #[error("the provider of {service} answered with an invalid payload ({} violation(s))", violations.len())]
    ProviderInvalidResponse {
        service: ServiceName,
        violations: Vec<Violation>,
    },
    #[error("the hub's storage is unavailable")]
    StorageUnavailable(String),
    /// The hub's own stored data is broken (a bug, or the database changed
    /// behind the hub's back): retrying cannot help. The cause is for the
    /// log, never for the client.
    #[error("the hub failed to handle the request")]
    Internal(String),
    /// The registry kept changing while the request was decided (an
    /// administrator's changes at that moment); nothing was written.
    #[error("the registry changed while the request was being decided; retry")]
    RegistryChanged,
}

impl ExchangeError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code(),
            Self::IdConflict(_) => "exchange_id_conflict",
            Self::InProgress(_) => "exchange_in_progress",
            Self::ProviderUnavailable(_) => "provider_unavailable",
            Self::ProviderQueueFull(_) => "provider_queue_full",
            Self::InboxFull { .. } => "inbox_full",
            Self::ProviderTimeout(_) => "provider_timeout",
            Self::ProviderInvalidResponse { .. } => "provider_invalid_response",
            Self::StorageUnavailable(_) => "storage_unavailable",
            Self::Internal(_) => "internal_error",
            Self::RegistryChanged => "registry_changed",
        }
    }

    /// Every violation the error carries.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::Refused(r) => r.violations(),
            Self::ProviderInvalidResponse { violations, .. } => violations,
            _ => &[],
        }
    }
}

impl From<crate::store::StoreError> for ExchangeError {
    /// An outage is worth a retry; stored data that does not read is not.
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Corrupt(_) => Self::Internal(e.to_string()),
            _ => Self::StorageUnavailable(e.to_string()),
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
