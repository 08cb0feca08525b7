//! `hub-report`: run every benchmark scenario side by side and write the
//! report (Markdown, JSON, SVG charts) into a results folder.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hub_bench::report::{self, Settings};

/// Run the benchmark scenarios and write the report.
#[derive(Debug, Parser)]
#[command(name = "hub-report", version)]
struct Args {
    /// The results folder; default `results/<UTC date and time>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A short run that checks every scenario works (CI), not how fast.
    #[arg(long)]
    smoke: bool,
    /// Seconds of each maximum-throughput measurement.
    #[arg(long)]
    seconds: Option<u64>,
    /// Rounds of the maximum-throughput measurements.
    #[arg(long)]
    rounds: Option<usize>,
    /// Entries of the audit bundle.
    #[arg(long)]
    audit_entries: Option<u64>,
    /// Where `hub` and `hub-direct` are; default: beside this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = match args.out {
        Some(o) => o,
        None => {
            let now = time::OffsetDateTime::now_utc();
            PathBuf::from("results").join(format!(
                "{:04}-{:02}-{:02}T{:02}{:02}{:02}Z",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            ))
        }
    };
    let out = std::path::absolute(&out)?;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .to_owned(),
    };
    let mut settings = if args.smoke {
        Settings::smoke(out, bin_dir)
    } else {
        Settings::full(out, bin_dir)
    };
    if let Some(s) = args.seconds {
        settings.seconds = Duration::from_secs(s);
    }
    if let Some(r) = args.rounds {
        settings.rounds = r.max(1);
    }
    if let Some(n) = args.audit_entries {
        settings.audit_entries = n;
        settings.bundle_dir = settings.bundle_dir.with_file_name(format!(".bundle-{n}"));
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let results = report::run(&settings, command).await?;
    println!(
        "report written to {}/report.md (queries through the hub: {:.0}/s)",
        settings.out.display(),
        report::median_throughput(&results.queries.throughput, "hub")
    );
    Ok(())
}
