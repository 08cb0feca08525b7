//! `hub-load`: offer load to a running hub and print what it sustained.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hub_bench::{Bodies, Mode, Plan, Workload};
use hub_client::HttpVersion;
use hub_server::pki::PkiPaths;

/// Drive a running hub with the demo agencies' certificates.
#[derive(Debug, Parser)]
#[command(name = "hub-load", version)]
struct Args {
    /// The hub's API, e.g. https://127.0.0.1:8443
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    api: String,
    /// The hub's data directory (its dev PKI holds the agencies' certificates).
    #[arg(long, default_value = "hub-data")]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "query")]
    workload: Workload,
    /// Offer a fixed arrival rate (exchanges per second) instead of the most the hub takes.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// HTTP/2 instead of HTTP/1.1, with this many concurrent streams per connection.
    #[arg(long)]
    h2_streams: Option<usize>,
    /// Distinct request bodies to cycle through.
    #[arg(long, default_value_t = 1000)]
    payloads: usize,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan {
        workload: args.workload,
        mode: args
            .rate
            .map_or(Mode::Max, |per_second| Mode::Rate { per_second }),
        duration: Duration::from_secs(args.seconds),
        connections: args.connections,
        streams: args.h2_streams.unwrap_or(1),
        http: if args.h2_streams.is_some() {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        },
    };
    let bodies = Arc::new(Bodies::prepare(
        args.workload,
        &PkiPaths::new(&args.data_dir),
        args.payloads,
    )?);
    let client = hub_bench::clients_for(&args.api, &args.data_dir, args.workload)?;
    let report = hub_bench::run(&client, &plan, bodies).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:?} {:?} over {} x{} ({}): {} ok, {} failed in {:.1}s = {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            report.workload,
            report.mode,
            report.connections,
            report.streams,
            report.http,
            report.ok,
            report.failed,
            report.seconds,
            report.throughput,
            report.p50_ms,
            report.p90_ms,
            report.p99_ms,
            report.p999_ms,
            report.max_ms
        );
        if !report.workload.subscribers().is_empty() {
            println!(
                "delivered {} to {} subscribers (leased and acknowledged) in {:.1}s = {:.0}/s; {} undelivered",
                report.delivered,
                report.workload.subscribers().len(),
                report.delivery_seconds,
                report.delivered as f64 / report.delivery_seconds.max(f64::EPSILON),
                report.undelivered
            );
        }
        if let Some(f) = &report.first_failure {
            println!("first failure: {f}");
        }
    }
    Ok(())
}
