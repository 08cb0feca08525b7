//! The population adapter as its own process, consuming its queue on RabbitMQ.
//! Settings: see `hub_adapter_sdk::amqp::WorkerConfig::from_env`;
//! `ADAPTER_SYNTHETIC_RECORDS` sizes the synthetic registry (default 1000).
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let records = hub_adapter_sdk::synthetic::records_from_env();
    let registry = adapter_population::Registry::synthetic(1, records);
    let adapter = adapter_population::PopulationAdapter::new(registry);
    hub_adapter_sdk::amqp::main_with(std::sync::Arc::new(adapter)).await
}
