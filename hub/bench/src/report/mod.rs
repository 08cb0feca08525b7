//! `hub-report`: every benchmark scenario in one invocation, side by side so
//! that ratios hold on a noisy machine, written as a Markdown table, a JSON
//! file and two SVG charts into a results folder.
//!
//! 1. a query (`citizen.lookup`) through the hub on embedded defaults, vs
//!    the population adapter served directly over the same mTLS (the floor,
//!    `hub-direct`), vs nginx as a TLS reverse proxy in front of it (a plain
//!    gateway): maximum throughput, alternating rounds, and latency at fixed
//!    offered rates;
//! 2. events with fan-out to two subscribers, embedded defaults, each
//!    counted once both subscribers have leased and acknowledged it;
//! 3. 1 and 2 on PostgreSQL + RabbitMQ with the population adapter as its
//!    own process;
//! 4. `hub audit verify` over a synthetic bundle (1,000,000 entries);
//! 5. the hub's resident memory idle and at its peak under 1 and 3.
//!
//! Each server is a separate process started from the binaries beside this
//! one (`hub`, `hub-direct`); the load comes from this process.

pub mod chart;
pub mod nginx;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hub_client::HttpVersion;
use hub_core::ids::Member;
use hub_e2e::services::{AmqpNamespace, PgDatabase};
use hub_server::pki::PkiPaths;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::{Bodies, Mode, Plan, Report, Workload};
use process::{CpuPerExchange, CpuTicks, Memory, Process};

/// Requests the adapter process of scenario 3 handles at once: its
/// synthetic registry answers from memory, so more in flight keeps
/// RabbitMQ's runs of acknowledgements and answers long (docs/performance.md,
/// "An adapter with more requests in flight"); the SDK's default of 64 is
/// for registries that answer over the network.
const ADAPTER_PREFETCH: u16 = 256;

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The results folder (created).
    pub out: PathBuf,
    /// Where the `hub` and `hub-direct` binaries are.
    pub bin_dir: PathBuf,
    /// Each maximum-throughput measurement.
    pub seconds: Duration,
    /// Each fixed-rate measurement.
    pub rate_seconds: Duration,
    /// Rounds of the maximum-throughput measurements, alternating targets.
    pub rounds: usize,
    /// Offered rates for the latency curve, exchanges per second.
    pub rates: Vec<f64>,
    /// Connections for maximum throughput (HTTP/1.1, kept alive).
    pub connections: usize,
    /// Connections for scenario 3's maximum throughput: an exchange there
    /// waits on PostgreSQL's group commits and, for a query, two broker
    /// hops (tens of milliseconds), so it takes more in flight than the
    /// embedded hub to keep the machine busy.
    pub production_connections: usize,
    /// Entries of the audit bundle.
    pub audit_entries: u64,
    /// Where the audit bundle is kept between runs (it takes a minute to make).
    pub bundle_dir: PathBuf,
    /// Synthetic citizens and enterprises in the registries.
    pub records: usize,
}

impl Settings {
    /// The full run: ~5 minutes, plus a minute to make the audit bundle once.
    pub fn full(out: PathBuf, bin_dir: PathBuf) -> Self {
        let bundle_dir = out
            .parent()
            .unwrap_or(Path::new("."))
            .join(".bundle-1000000");
        Self {
            out,
            bin_dir,
            seconds: Duration::from_secs(10),
            rate_seconds: Duration::from_secs(5),
            rounds: 2,
            rates: vec![1000.0, 2500.0, 5000.0, 10000.0],
            connections: 32,
            production_connections: 256,
            audit_entries: 1_000_000,
            bundle_dir,
            records: 1000,
        }
    }

    /// A check that every scenario works, not how fast (CI).
    pub fn smoke(out: PathBuf, bin_dir: PathBuf) -> Self {
        Self {
            bundle_dir: out.join("bundle"),
            seconds: Duration::from_millis(800),
            rate_seconds: Duration::from_millis(600),
            rounds: 1,
            rates: vec![100.0, 200.0],
            connections: 4,
            production_connections: 4,
            audit_entries: 2_000,
            records: 50,
            ..Self::full(out, bin_dir)
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// `hub`, `direct`, `nginx`.
    pub target: String,
    pub report: Report,
    /// Where the machine's CPU went (scenario 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerExchange>,
}

/// Scenario 1.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryComparison {
    pub throughput: Vec<Sample>,
    pub latency: Vec<Sample>,
    /// Why nginx is missing from the comparison, if it is.
    pub nginx_skipped: Option<String>,
}

/// Scenario 3.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Production {
    pub queries: Vec<Sample>,
    pub events: Vec<Sample>,
    pub hub_idle: Memory,
    pub hub_peak: Memory,
    pub skipped: Option<String>,
}

/// Scenario 4.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Audit {
    pub entries: u64,
    pub full_seconds: f64,
    pub full_peak: Memory,
    pub integrity_seconds: f64,
    pub integrity_peak: Memory,
}

/// The machine the figures are from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory: String,
    pub cpu: String,
    pub nginx: Option<String>,
    pub revision: Option<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub queries: QueryComparison,
    pub events: Vec<Sample>,
    pub embedded_idle: Memory,
    pub embedded_peak: Memory,
    pub direct_peak: Memory,
    pub production: Production,
    pub audit: Audit,
}

/// The median throughput of `target`'s samples.
pub fn median_throughput(samples: &[Sample], target: &str) -> f64 {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|s| s.target == target)
        .map(|s| s.report.throughput)
        .collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A server under test and a client for it.
struct Target {
    name: &'static str,
    client: crate::Clients,
}

/// Run every scenario and write the report into `settings.out`; returns
/// what was measured.
pub async fn run(settings: &Settings, command: String) -> anyhow::Result<Results> {
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("creating {}", settings.out.display()))?;
    let logs = settings.out.join("logs");
    let nginx_bin = nginx::binary();
    let steps = progress_steps(settings, nginx_bin.is_some());
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // Scenarios 1, 2 and the embedded half of 5.
    let embedded = settings.out.join("embedded");
    bar.set_message("starting the embedded hub");
    let (hub, api) = start_hub(settings, &embedded, &[], &logs, "hub-embedded")?;
    std::thread::sleep(Duration::from_secs(1));
    let embedded_idle = hub.memory().unwrap_or_default();
    let pki = PkiPaths::new(&embedded);
    let (direct, direct_addr) = start_direct(settings, &embedded, &logs)?;
    let one_stop: Member = Workload::Query.sender().parse()?;
    let (nginx, nginx_skipped) = match &nginx_bin {
        Some(bin) => {
            bar.set_message("starting nginx");
            let started = nginx::start(
                bin,
                &settings.out.join("nginx"),
                &logs,
                &pki,
                direct_addr,
                &one_stop,
            )?;
            (Some(started), None)
        }
        None => (
            None,
            Some("nginx is not installed (run .ci/nginx to install it from Debian)".to_owned()),
        ),
    };
    let client = |url: &str, w: Workload| crate::clients_for(url, &embedded, w);
    let mut targets = vec![
        Target {
            name: "hub",
            client: client(&api, Workload::Query)?,
        },
        Target {
            name: "direct",
            client: client(&format!("https://{direct_addr}"), Workload::Query)?,
        },
    ];
    if let Some((_, addr)) = &nginx {
        targets.push(Target {
            name: "nginx",
            client: client(&format!("https://{addr}"), Workload::Query)?,
        });
    }
    let queries = Arc::new(Bodies::prepare(Workload::Query, &pki, settings.records)?);
    let events = Arc::new(Bodies::prepare(Workload::Event, &pki, settings.records)?);
    for t in &targets {
        bar.set_message(format!("warming up {}", t.name));
        warm_up(
            &t.client,
            Workload::Query,
            &queries,
            Duration::from_secs(30),
        )
        .await?;
    }
    let mut comparison = QueryComparison {
        nginx_skipped,
        ..QueryComparison::default()
    };
    for round in 0..settings.rounds {
        for t in &targets {
            bar.set_message(format!(
                "scenario 1: {} at full speed, round {}",
                t.name,
                round + 1
            ));
            let plan = max_plan(settings, Workload::Query);
            let report = crate::run(&t.client, &plan, queries.clone()).await?;
            check(&report, t.name)?;
            comparison.throughput.push(Sample {
                target: t.name.into(),
                report,
                cpu: None,
            });
            bar.inc(1);
        }
    }
    for &rate in &settings.rates {
        for t in &targets {
            bar.set_message(format!("scenario 1: {} at {rate}/s offered", t.name));
            let plan = Plan {
                workload: Workload::Query,
                mode: Mode::Rate { per_second: rate },
                duration: settings.rate_seconds,
                connections: settings.connections * 2,
                streams: 1,
                http: HttpVersion::Http1,
            };
            let report = crate::run(&t.client, &plan, queries.clone()).await?;
            comparison.latency.push(Sample {
                target: t.name.into(),
                report,
                cpu: None,
            });
            bar.inc(1);
        }
    }
    let mut embedded_peak = hub.memory().unwrap_or_default();
    // The kernel's VmHWM misses memory handed back with madvise (mimalloc
    // does) and lags per-thread counters: it can read below an earlier
    // VmRSS (by 36 kB in one CI run). The peak is at least what was seen.
    embedded_peak.peak_kb = embedded_peak.peak_kb.max(embedded_idle.rss_kb);
    let direct_peak = direct.memory().unwrap_or_default();
    drop(nginx);
    direct.stop();

    let event_client = client(&api, Workload::Event)?;
    warm_up(
        &event_client,
        Workload::Event,
        &events,
        Duration::from_secs(30),
    )
    .await?;
    let mut event_samples = Vec::new();
    for round in 0..settings.rounds {
        bar.set_message(format!("scenario 2: events, round {}", round + 1));
        let report = crate::run(
            &event_client,
            &max_plan(settings, Workload::Event),
            events.clone(),
        )
        .await?;
        check(&report, "hub (events)")?;
        event_samples.push(Sample {
            target: "hub".into(),
            report,
            cpu: None,
        });
        bar.inc(1);
    }
    hub.stop();

    // Scenario 3 and its half of 5.
    bar.set_message("scenario 3: PostgreSQL + RabbitMQ");
    let production = production(settings, &logs, &bar).await?;

    // Scenario 4.
    bar.set_message(format!(
        "scenario 4: audit verify over {} entries",
        settings.audit_entries
    ));
    let audit = audit(settings, &logs, &bar)?;
    bar.finish_with_message("done");

    let results = Results {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command,
        machine: machine(nginx_bin.as_deref()),
        queries: comparison,
        events: event_samples,
        embedded_idle,
        embedded_peak,
        direct_peak,
        production,
        audit,
    };
    write(settings, &results)?;
    Ok(results)
}

fn progress_steps(s: &Settings, nginx: bool) -> u64 {
    let targets = if nginx { 3 } else { 2 };
    let rounds = s.rounds as u64;
    rounds * targets + s.rates.len() as u64 * targets + rounds + 2 * rounds + 3
}

fn max_plan(settings: &Settings, workload: Workload) -> Plan {
    Plan {
        workload,
        mode: Mode::Max,
        duration: settings.seconds,
        connections: settings.connections,
        streams: 1,
        http: HttpVersion::Http1,
    }
}

/// A maximum-throughput run must not have failed anything: a fast error is
/// not a result.
fn check(report: &Report, target: &str) -> anyhow::Result<()> {
    if report.failed > 0 || report.ok == 0 {
        bail!(
            "{target}: {} ok, {} failed (first failure: {})",
            report.ok,
            report.failed,
            report.first_failure.as_deref().unwrap_or("none")
        );
    }
    if report.undelivered > 0 {
        bail!(
            "{target}: {} messages not delivered to their subscribers within {:?} of the last event",
            report.undelivered,
            crate::DRAIN_TIMEOUT
        );
    }
    Ok(())
}

/// Send until an exchange succeeds (adapters connecting, caches filling),
/// then a short burst, so that no measurement pays for start-up.
async fn warm_up(
    client: &crate::Clients,
    workload: Workload,
    bodies: &Arc<Bodies>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let plan = Plan {
        workload,
        mode: Mode::Max,
        duration: Duration::from_millis(500),
        connections: 4,
        streams: 1,
        http: HttpVersion::Http1,
    };
    loop {
        let report = crate::run(client, &plan, bodies.clone()).await?;
        if report.ok > 0 && report.failed == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no {workload:?} succeeded within {within:?}: {}",
                report.first_failure.as_deref().unwrap_or("no answer")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn bin(settings: &Settings, name: &str) -> anyhow::Result<PathBuf> {
    let path = settings.bin_dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p hub -p hub-bench)",
            path.display()
        );
    }
    Ok(path)
}

/// `hub serve` on free loopback ports; returns it and its API address.
fn start_hub(
    settings: &Settings,
    data: &Path,
    env: &[(&str, &str)],
    logs: &Path,
    name: &str,
) -> anyhow::Result<(Process, String)> {
    let mut command = Command::new(bin(settings, "hub")?);
    command
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .envs(env.iter().copied())
        .env("HUB_API_LISTEN", "127.0.0.1:0")
        .env("HUB_PUBLIC_LISTEN", "127.0.0.1:0")
        .env("HUB_ADMIN_LISTEN", "127.0.0.1:0")
        .env("HUB_SYNTHETIC_RECORDS", settings.records.to_string())
        .env("RUST_LOG", "warn");
    let (process, line) = Process::start(
        name,
        command,
        logs,
        "hub API (mTLS):",
        Duration::from_secs(120),
    )?;
    let api = line
        .split_once("hub API (mTLS):")
        .map(|(_, a)| a.trim().to_owned())
        .context("no API address")?;
    Ok((process, api))
}

fn start_direct(
    settings: &Settings,
    data: &Path,
    logs: &Path,
) -> anyhow::Result<(Process, std::net::SocketAddr)> {
    let mut command = Command::new(bin(settings, "hub-direct")?);
    command
        .arg("--data-dir")
        .arg(data)
        .arg("--records")
        .arg(settings.records.to_string())
        .env("RUST_LOG", "warn");
    let (process, line) = Process::start(
        "direct",
        command,
        logs,
        "direct endpoint (mTLS):",
        Duration::from_secs(30),
    )?;
    let addr = line
        .rsplit_once("https://")
        .and_then(|(_, a)| a.trim().parse().ok())
        .context("no direct endpoint address")?;
    Ok((process, addr))
}

/// Scenario 3: the hub on PostgreSQL + RabbitMQ (a fresh database and
/// namespace), the population adapter as its own process.
async fn production(
    settings: &Settings,
    logs: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Production> {
    let rounds = settings.rounds as u64;
    // Without the services (and without CI=true, which makes this fatal)
    // the scenario is reported as skipped.
    let Some(db) = PgDatabase::create().await else {
        bar.inc(2 * rounds);
        return Ok(Production {
            skipped: Some("PostgreSQL is unreachable".into()),
            ..Production::default()
        });
    };
    // The hub declares a queue for every provider in its registry.
    let providers = [
        adapter_population::PROVIDER,
        "000.00.00.G13/land-registry",
        adapter_enterprise::PROVIDER,
    ];
    let Some(ns) = AmqpNamespace::create(&providers, &["hub-1"]).await else {
        db.drop_now().await;
        bar.inc(2 * rounds);
        return Ok(Production {
            skipped: Some("RabbitMQ is unreachable".into()),
            ..Production::default()
        });
    };
    let outcome = production_with(settings, logs, bar, &db.url, &ns).await;
    db.drop_now().await;
    ns.delete_now().await;
    outcome
}

async fn production_with(
    settings: &Settings,
    logs: &Path,
    bar: &ProgressBar,
    database_url: &str,
    ns: &AmqpNamespace,
) -> anyhow::Result<Production> {
    let data = settings.out.join("production");
    let env = [
        ("HUB_DATABASE_URL", database_url),
        ("HUB_AMQP_URL", ns.url.as_str()),
        ("HUB_AMQP_PREFIX", ns.prefix.as_str()),
    ];
    let (hub, api) = start_hub(settings, &data, &env, logs, "hub-production")?;
    let mut command = Command::new(bin(settings, "hub")?);
    command
        .arg("--data-dir")
        .arg(&data)
        .args(["adapter", "population"])
        .envs(env.iter().copied())
        .env("HUB_SYNTHETIC_RECORDS", settings.records.to_string())
        .env("ADAPTER_PREFETCH", ADAPTER_PREFETCH.to_string())
        .env("RUST_LOG", "warn");
    let (adapter, _) = Process::start(
        "adapter-population",
        command,
        logs,
        "consuming its queue",
        Duration::from_secs(30),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let hub_idle = hub.memory().unwrap_or_default();
    let pki = PkiPaths::new(&data);
    let queries = Arc::new(Bodies::prepare(Workload::Query, &pki, settings.records)?);
    let events = Arc::new(Bodies::prepare(Workload::Event, &pki, settings.records)?);
    let mut result = Production {
        hub_idle,
        ..Production::default()
    };
    for (workload, bodies) in [(Workload::Query, &queries), (Workload::Event, &events)] {
        let client = crate::clients_for(&api, &data, workload)?;
        warm_up(&client, workload, bodies, Duration::from_secs(60)).await?;
        for round in 0..settings.rounds {
            bar.set_message(format!(
                "scenario 3: {workload:?} on PostgreSQL + RabbitMQ, round {}",
                round + 1
            ));
            let plan = Plan {
                connections: settings.production_connections,
                ..max_plan(settings, workload)
            };
            let before = CpuTicks::now(hub.pid(), adapter.pid());
            let report = crate::run(&client, &plan, bodies.clone()).await?;
            let cpu =
                Some(before.per_exchange(&CpuTicks::now(hub.pid(), adapter.pid()), report.ok));
            check(&report, "hub on PostgreSQL + RabbitMQ")?;
            let sample = Sample {
                target: "hub".into(),
                report,
                cpu,
            };
            match workload {
                Workload::Query => result.queries.push(sample),
                Workload::Event => result.events.push(sample),
            }
            bar.inc(1);
        }
    }
    result.hub_peak = hub.memory().unwrap_or_default();
    adapter.stop();
    hub.stop();
    Ok(result)
}

/// Scenario 4: make (or reuse) the bundle, then time `hub audit verify`
/// with every check and with `--integrity-only`.
fn audit(settings: &Settings, logs: &Path, bar: &ProgressBar) -> anyhow::Result<Audit> {
    let dir = &settings.bundle_dir;
    let keys = hub_audit::synthetic::KeyedBundle {
        pinned_jwks: dir.join("pinned-jwks.json"),
        data_key: dir.join("data.key"),
    };
    if !hub_audit::synthetic::is_reusable(dir, settings.audit_entries) {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| {
                format!(
                    "removing the incomplete or outdated bundle {}",
                    dir.display()
                )
            })?;
        }
        let entries = settings.audit_entries;
        hub_audit::synthetic::write_keyed_bundle(
            dir,
            entries,
            1000,
            &ring::rand::SystemRandom::new(),
            &|n| {
                bar.set_message(format!(
                    "scenario 4: writing the bundle, {n}/{entries} entries"
                ))
            },
        )
        .with_context(|| format!("writing the audit bundle in {}", dir.display()))?;
    }
    bar.inc(1);
    let verify = |name: &str, extra: &[&std::ffi::OsStr]| -> anyhow::Result<(f64, Memory)> {
        bar.set_message(format!("scenario 4: {name}"));
        let mut command = Command::new(bin(settings, "hub")?);
        command
            .args(["audit", "verify"])
            .arg(dir)
            .arg("--jwks")
            .arg(&keys.pinned_jwks)
            .args(extra)
            .env("RUST_LOG", "warn");
        let started = Instant::now();
        let process = Process::start_detached(name, command, logs)?;
        let log = process.log().to_owned();
        let (status, memory) = process.wait_sampling()?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("{name} failed ({status}); see {}", log.display());
        }
        bar.inc(1);
        Ok((seconds, memory))
    };
    let (full_seconds, full_peak) = verify(
        "audit-verify-full",
        &["--data-key".as_ref(), keys.data_key.as_os_str()],
    )?;
    let (integrity_seconds, integrity_peak) =
        verify("audit-verify-integrity", &["--integrity-only".as_ref()])?;
    Ok(Audit {
        entries: settings.audit_entries,
        full_seconds,
        full_peak,
        integrity_seconds,
        integrity_peak,
    })
}

fn machine(nginx: Option<&Path>) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    let output = |cmd: &mut Command| {
        cmd.output().ok().filter(|o| o.status.success()).map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        memory: field(&meminfo, "MemTotal"),
        cpu: field(&cpuinfo, "model name"),
        nginx: nginx.and_then(|n| output(Command::new(n).arg("-v"))),
        revision: output(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
    }
}

fn write(settings: &Settings, results: &Results) -> anyhow::Result<()> {
    let out = &settings.out;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(out.join("report.md"), render::markdown(results))?;
    std::fs::write(
        out.join("throughput.svg"),
        render::throughput_chart(results),
    )?;
    std::fs::write(out.join("latency.svg"), render::latency_chart(results))?;
    Ok(())
}

mod render;
