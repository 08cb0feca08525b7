//! The population adapter as its own process, consuming its queue on RabbitMQ.
//! Settings: see `hub_adapter_sdk::amqp::WorkerConfig::from_env`;
//! `ADAPTER_SYNTHETIC_RECORDS` sizes the synthetic registry (default 1000).
#![forbid(unsafe_code)]

use std::sync::Arc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let records = std::env::var("ADAPTER_SYNTHETIC_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let adapter = adapter_population::PopulationAdapter::new(
        adapter_population::Registry::synthetic(1, records),
    );
    hub_adapter_sdk::amqp::main_with(Arc::new(adapter)).await
}
