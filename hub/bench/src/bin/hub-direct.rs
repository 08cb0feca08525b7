//! `hub-direct`: the population adapter served directly over the hub's
//! mutual TLS - the floor the hub is compared with (see `hub_bench::direct`).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hub_server::pki::PkiPaths;
use tokio::net::TcpListener;

/// Serve `citizen.lookup` straight from the population adapter over mTLS,
/// with the certificates of an existing hub data directory.
#[derive(Debug, Parser)]
#[command(name = "hub-direct", version)]
struct Args {
    /// A hub data directory whose dev PKI to use (made by `hub serve`).
    #[arg(long, default_value = "hub-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Synthetic citizens beyond the fixtures, as the hub's `synthetic_records`.
    #[arg(long, default_value_t = 1000)]
    records: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    hub_server::tls::install_default_provider();
    let pki = PkiPaths::new(&args.data_dir);
    let tls = hub_server::tls::api_server_config(&pki, Default::default()).with_context(|| {
        format!(
            "reading the dev PKI in {} (run `hub serve` there once first)",
            args.data_dir.display()
        )
    })?;
    let adapter = Arc::new(adapter_population::PopulationAdapter::new(
        adapter_population::Registry::synthetic(1, args.records),
    ));
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("direct endpoint (mTLS): https://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        hub_adapter_sdk::stop_signal().await;
        let _ = stop.send(true);
    });
    hub_server::serve::serve_tls(
        listener,
        hub_server::tls::ServerTls::fixed(tls),
        hub_bench::direct::router(adapter),
        hub_server::serve::Timeouts::default(),
        stopped,
    )
    .await;
    Ok(())
}
