//! The hub's server: the mTLS HTTP API, the exchange pipeline, storage,
//! the embedded queue, the in-process reference adapters and the dev PKI.
//!
//! - [`app`]: start-up ([`app::start`]) and the demo seed
//! - [`pipeline`]: the exchange pipeline ([`pipeline::Hub`])
//! - [`admin`]: registry changes by administrators, each a log entry
//! - [`access_history`]: the hub's own service `subject.access_history` ("who saw my data")
//! - [`http`]: routes, and the one mapping of errors to HTTP
//! - [`serve`]: the TLS accept loop with identity from the client certificate
//! - [`store`]: the storage trait and its SQLite and PostgreSQL backends
//! - [`queue`]: the delivery trait and the embedded durable queue
//! - [`backlog`]: the backlog's last count: the inbox cap and `/metrics`' gauges
//! - [`broker`]: delivery to adapter processes over RabbitMQ (outbox relay, answers)
//! - [`log_writer`]: the log's single writer with group commit and the Merkle tree
//! - [`transparency`]: signed checkpoints and proofs
//! - [`metrics`]: figures for Prometheus (`GET /metrics` on the admin listener)
//! - [`pki`], [`tls`], [`identity`]: certificates, keys and who is calling
//! - [`config`], [`clock`]: configuration, time and randomness
#![forbid(unsafe_code)]

pub mod access_history;
pub mod admin;
pub mod app;
pub mod backlog;
pub mod broker;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod identity;
pub mod limits;
pub mod log_writer;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod queue;
pub mod registry_cache;
pub mod serve;
pub mod store;
pub mod tls;
pub mod transparency;
pub mod withdrawal;

pub use app::{RunningHub, start};
pub use config::Config;
