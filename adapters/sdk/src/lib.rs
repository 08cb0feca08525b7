//! The adapter SDK: what an integrator writes to connect a registry to the hub.
//!
//! An adapter is a provider member (`agency/subsystem`) with a list of the
//! services it provides and one handler. The hub validates every request
//! against the service's request schema before the handler sees it, and the
//! handler's answer against the response schema before the consumer does,
//! so a handler converts between its registry's native format and the
//! national schema and does nothing else.
//!
//! ```
//! use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
//! use hub_core::ids::Member;
//! use serde_json::json;
//!
//! struct Echo(Member);
//!
//! impl Adapter for Echo {
//!     fn provider(&self) -> &Member { &self.0 }
//!     fn services(&self) -> Vec<ServiceSpec> { vec![ServiceSpec::query("echo.say", 1)] }
//!     fn handle<'a>(&'a self, req: &'a AdapterRequest) -> HandlerFuture<'a> {
//!         Box::pin(async move { Ok(json!({ "said": req.payload })) })
//!     }
//! }
//! # let _ = Echo("000.00.00.G99/echo".parse().unwrap());
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;

use hub_core::envelope::EndUser;
use hub_core::ids::{CaseRef, ExchangeId, Member, PurposeCode, ServiceName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod amqp;
pub mod synthetic;

pub use hub_core;
pub use hub_core::envelope::ServiceKind;

/// A service an adapter provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: ServiceName,
    pub version: u32,
    pub kind: ServiceKind,
}

impl ServiceSpec {
    /// A query service. Panics on a malformed name: specs are written in code.
    pub fn query(name: &str, version: u32) -> Self {
        Self::new(name, version, ServiceKind::Query)
    }

    /// An event the adapter's registry publishes.
    pub fn event(name: &str, version: u32) -> Self {
        Self::new(name, version, ServiceKind::Event)
    }

    #[allow(clippy::expect_used)]
    fn new(name: &str, version: u32, kind: ServiceKind) -> Self {
        Self {
            name: ServiceName::parse(name).expect("service names in code are well formed"),
            version,
            kind,
        }
    }

    /// The catalog id of the request (or event) schema, by convention.
    pub fn request_schema(&self) -> String {
        let part = match self.kind {
            ServiceKind::Query => "request",
            ServiceKind::Event => "event",
        };
        format!("services/{}/v{}/{part}", self.name, self.version)
    }

    /// The catalog id of the response schema; events have none.
    pub fn response_schema(&self) -> Option<String> {
        match self.kind {
            ServiceKind::Query => {
                Some(format!("services/{}/v{}/response", self.name, self.version))
            }
            ServiceKind::Event => None,
        }
    }
}

/// A request as the provider's handler sees it: already authenticated,
/// authorized and validated by the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRequest {
    pub exchange_id: ExchangeId,
    pub service: ServiceName,
    pub version: u32,
    pub sender: Member,
    pub purpose: PurposeCode,
    pub case_ref: CaseRef,
    pub on_behalf_of: Option<EndUser>,
    pub payload: Value,
}

impl AdapterRequest {
    /// The request an envelope the hub accepted asks the adapter to answer.
    pub fn from_envelope(exchange_id: ExchangeId, envelope: hub_core::envelope::Envelope) -> Self {
        Self {
            exchange_id,
            service: envelope.service,
            version: envelope.version,
            sender: envelope.sender,
            purpose: envelope.purpose,
            case_ref: envelope.case_ref,
            on_behalf_of: envelope.on_behalf_of,
            payload: envelope.payload,
        }
    }
}

/// Why a handler did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The registry cannot be reached or failed; the exchange may be retried.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The adapter has no handler for this service.
    #[error("the adapter does not provide {0}")]
    UnknownService(String),
}

/// The future a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, AdapterError>> + Send + 'a>>;

/// A registry adapter.
pub trait Adapter: Send + Sync {
    /// The member the adapter answers as (the registry's subsystem).
    fn provider(&self) -> &Member;
    /// Every service the adapter provides or publishes.
    fn services(&self) -> Vec<ServiceSpec>;
    /// Answer a query; the payload is valid against the request schema.
    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a>;
}

/// Resolves on Ctrl-C or SIGTERM: when a process of the hub's (hub,
/// adapter, benchmark endpoint) should stop gracefully.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
    }
}
