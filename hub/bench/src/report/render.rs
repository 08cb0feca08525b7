//! The report as Markdown and its charts, from [`Results`].

use std::fmt::Write;

use super::chart::{self, Bar, Series};
use super::{Results, Sample, median_throughput};
use crate::Mode;

/// A target of the issue that set it, and what was measured against it.
struct Goal {
    what: &'static str,
    wanted: String,
    measured: Option<String>,
    met: Option<bool>,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn rate_of(s: &Sample) -> Option<f64> {
    match s.report.mode {
        Mode::Rate { per_second } => Some(per_second),
        Mode::Max => None,
    }
}

fn goals(r: &Results) -> Vec<Goal> {
    let hub = median_throughput(&r.queries.throughput, "hub");
    let nginx = median_throughput(&r.queries.throughput, "nginx");
    let at_10k = r
        .queries
        .latency
        .iter()
        .find(|s| s.target == "hub" && rate_of(s) == Some(10_000.0));
    let events = median_throughput(&r.events, "hub");
    let production = r.production.skipped.is_none();
    let pq = median_throughput(&r.production.queries, "hub");
    let pe = median_throughput(&r.production.events, "hub");
    let at_least = |what, wanted: f64, got: Option<f64>, unit: &str| Goal {
        what,
        wanted: format!(">= {wanted:.0} {unit}"),
        measured: got.map(|g| format!("{g:.0} {unit} ({:.0} % of the target)", g / wanted * 100.0)),
        met: got.map(|g| g >= wanted),
    };
    let at_most = |what, wanted: f64, got: Option<f64>, unit: &str| Goal {
        what,
        wanted: format!("< {wanted} {unit}"),
        measured: got.map(|g| format!("{g:.1} {unit}")),
        met: got.map(|g| g < wanted),
    };
    vec![
        at_least(
            "1. queries through the hub, embedded",
            15_000.0,
            Some(hub),
            "/s",
        ),
        at_most(
            "1. hub p99 at 10,000/s offered",
            10.0,
            at_10k.map(|s| s.report.p99_ms),
            "ms",
        ),
        Goal {
            what: "1. hub throughput against nginx's, same run",
            wanted: ">= 50 %".into(),
            measured: (nginx > 0.0).then(|| format!("{:.0} %", hub / nginx * 100.0)),
            met: (nginx > 0.0).then_some(hub / nginx >= 0.5),
        },
        at_least("2. events, embedded", 20_000.0, Some(events), "/s"),
        at_least(
            "3. queries, PostgreSQL + RabbitMQ",
            5_000.0,
            production.then_some(pq),
            "/s",
        ),
        at_least(
            "3. events, PostgreSQL + RabbitMQ",
            10_000.0,
            production.then_some(pe),
            "/s",
        ),
        at_most(
            "4. audit verify, every check, 1M entries",
            60.0,
            (r.audit.entries == 1_000_000).then_some(r.audit.full_seconds),
            "s",
        ),
        at_most(
            "4. audit verify --integrity-only, 1M entries",
            5.0,
            (r.audit.entries == 1_000_000).then_some(r.audit.integrity_seconds),
            "s",
        ),
        at_most(
            "5. hub peak resident memory, scenario 1",
            150.0,
            Some(mb(r.embedded_peak.peak_kb)),
            "MB",
        ),
    ]
}

fn throughput_rows(out: &mut String, samples: &[Sample], targets: &[&str]) {
    let _ = writeln!(
        out,
        "| target | median /s | each round /s | p50 ms | p99 ms | max ms | failed |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for t in targets {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.target == *t).collect();
        let Some(last) = mine.last() else { continue };
        let rounds: Vec<String> = mine
            .iter()
            .map(|s| format!("{:.0}", s.report.throughput))
            .collect();
        let failed: u64 = mine.iter().map(|s| s.report.failed).sum();
        let _ = writeln!(
            out,
            "| {t} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {failed} |",
            median_throughput(samples, t),
            rounds.join(", "),
            last.report.p50_ms,
            last.report.p99_ms,
            last.report.max_ms,
        );
    }
}

/// Where the CPU of each round of scenario 3 went, against what the
/// machine's cores leave per exchange at the target rate.
fn cpu_rows(out: &mut String, nproc: usize, workloads: &[(&str, f64, &Vec<Sample>)]) {
    let _ = writeln!(
        out,
        "\nCPU per exchange, microseconds, each round (from `/proc`; PostgreSQL and RabbitMQ counted as every `postgres` and `beam.smp` process on the machine):\n\n| workload | /s | hub | adapter | PostgreSQL | RabbitMQ | load generator | all | machine idle | {nproc} cores at the target rate leave |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (name, target, samples) in workloads {
        let budget = nproc as f64 * 1e6 / target;
        for s in samples.iter() {
            let Some(c) = &s.cpu else { continue };
            let all = c.hub_us + c.adapter_us + c.postgres_us + c.rabbitmq_us + c.load_generator_us;
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {all:.0} | {:.0} % | {budget:.0} |",
                s.report.throughput,
                c.hub_us,
                c.adapter_us,
                c.postgres_us,
                c.rabbitmq_us,
                c.load_generator_us,
                c.idle_percent,
            );
        }
    }
}

/// The whole report.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "# Benchmark report\n\n- date: {}\n- command: `{}`\n- machine: `nproc` {}, {} memory, {}\n- nginx: {}\n- revision: {}\n\nEverything - servers, databases, broker, adapters and the load generator - shares this machine's cores. Throughput is from kept-alive HTTP/1.1 connections over mTLS sending their next exchange as soon as the last is answered; latency at a fixed offered rate is measured from each request's scheduled time (no coordinated omission).\n",
        r.date,
        r.command,
        m.nproc,
        m.memory,
        m.cpu,
        m.nginx.as_deref().unwrap_or("not installed"),
        m.revision.as_deref().unwrap_or("unknown"),
    );
    let _ = writeln!(
        out,
        "## Targets\n\n| target | wanted | measured | met |\n| --- | --- | --- | --- |"
    );
    for g in goals(r) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            g.what,
            g.wanted,
            g.measured.as_deref().unwrap_or("not measured in this run"),
            match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
    let _ = writeln!(
        out,
        "\n![throughput per scenario](throughput.svg)\n\n## 1. A query: the hub, the adapter directly, nginx in front of it\n\n`citizen.lookup` by the one-stop office. *hub*: the full exchange on embedded defaults (mTLS identity, authorization, schema and semantic validation, two hub signatures, durable tamper-evident log, in-process adapter). *direct*: the same adapter logic behind the same TLS listener, nothing else (`hub-direct`). *nginx*: nginx terminating the same mTLS and proxying to *direct* over kept-alive TLS.\n"
    );
    let targets = ["hub", "direct", "nginx"];
    throughput_rows(&mut out, &r.queries.throughput, &targets);
    if let Some(why) = &r.queries.nginx_skipped {
        let _ = writeln!(out, "\nnginx was left out: {why}.");
    }
    let hub = median_throughput(&r.queries.throughput, "hub");
    for other in ["direct", "nginx"] {
        let o = median_throughput(&r.queries.throughput, other);
        if o > 0.0 {
            let _ = writeln!(
                out,
                "\nThe hub sustains {:.0} % of *{other}*'s throughput.",
                hub / o * 100.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\n### Latency at fixed offered load\n\n![latency against offered load](latency.svg)\n\n| offered /s | target | achieved /s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | failed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for s in &r.queries.latency {
        let p = &s.report;
        let _ = writeln!(
            out,
            "| {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            rate_of(s).unwrap_or(0.0),
            s.target,
            p.throughput,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms,
            p.failed
        );
    }
    let _ = writeln!(
        out,
        "\n## 2. Events, embedded defaults\n\nSigned `enterprise.registered` from the enterprise registry; an event counts once both subscribers (tax, social insurance) have leased it from their inboxes and acknowledged it, each acknowledgement logged as a signed receipt.\n"
    );
    throughput_rows(&mut out, &r.events, &["hub"]);
    let _ = writeln!(
        out,
        "\n## 3. PostgreSQL + RabbitMQ, the adapter as its own process\n"
    );
    match &r.production.skipped {
        Some(why) => {
            let _ = writeln!(out, "Skipped: {why}.");
        }
        None => {
            if let Some(first) = r.production.queries.first() {
                let _ = writeln!(
                    out,
                    "{} kept-alive connections: an exchange here waits on PostgreSQL's group commits and, for a query, on two broker hops, so it takes more in flight than scenario 1 to keep the machine busy. The adapter (`hub adapter population`) handles up to {} requests at once (`ADAPTER_PREFETCH`; its synthetic registry answers from memory).\n",
                    first.report.connections,
                    super::ADAPTER_PREFETCH
                );
            }
            let _ = writeln!(out, "Queries:\n");
            throughput_rows(&mut out, &r.production.queries, &["hub"]);
            let _ = writeln!(out, "\nEvents:\n");
            throughput_rows(&mut out, &r.production.events, &["hub"]);
            cpu_rows(
                &mut out,
                r.machine.nproc,
                &[
                    ("query", 5_000.0, &r.production.queries),
                    ("event", 10_000.0, &r.production.events),
                ],
            );
        }
    }
    let a = &r.audit;
    let _ = writeln!(
        out,
        "\n## 4. `hub audit verify`, {} entries\n\n| check | seconds | peak RSS MB |\n| --- | --- | --- |\n| every check (signatures, canonical form, bodies opened and committed, chain, tree, checkpoints, consistency) | {:.1} | {:.0} |\n| `--integrity-only` | {:.2} | {:.0} |",
        a.entries,
        a.full_seconds,
        mb(a.full_peak.peak_kb),
        a.integrity_seconds,
        mb(a.integrity_peak.peak_kb),
    );
    let _ = writeln!(
        out,
        "\n## 5. Resident memory\n\n| process | idle MB | peak MB |\n| --- | --- | --- |\n| hub, embedded (peak over scenario 1) | {:.0} | {:.0} |\n| hub-direct (peak over scenario 1) | - | {:.0} |",
        mb(r.embedded_idle.rss_kb),
        mb(r.embedded_peak.peak_kb),
        mb(r.direct_peak.peak_kb),
    );
    if r.production.skipped.is_none() {
        let _ = writeln!(
            out,
            "| hub, PostgreSQL + RabbitMQ (peak over scenario 3) | {:.0} | {:.0} |",
            mb(r.production.hub_idle.rss_kb),
            mb(r.production.hub_peak.peak_kb),
        );
    }
    out
}

/// Throughput per scenario against its target.
pub fn throughput_chart(r: &Results) -> String {
    let mut bars = vec![
        Bar {
            label: "1. query via hub (embedded)".into(),
            value: median_throughput(&r.queries.throughput, "hub"),
            target: Some(15_000.0),
        },
        Bar {
            label: "1. query, adapter direct".into(),
            value: median_throughput(&r.queries.throughput, "direct"),
            target: None,
        },
    ];
    if r.queries.nginx_skipped.is_none() {
        bars.push(Bar {
            label: "1. query via nginx".into(),
            value: median_throughput(&r.queries.throughput, "nginx"),
            target: None,
        });
    }
    bars.push(Bar {
        label: "2. events (embedded)".into(),
        value: median_throughput(&r.events, "hub"),
        target: Some(20_000.0),
    });
    if r.production.skipped.is_none() {
        bars.push(Bar {
            label: "3. queries (PostgreSQL+RabbitMQ)".into(),
            value: median_throughput(&r.production.queries, "hub"),
            target: Some(5_000.0),
        });
        bars.push(Bar {
            label: "3. events (PostgreSQL+RabbitMQ)".into(),
            value: median_throughput(&r.production.events, "hub"),
            target: Some(10_000.0),
        });
    }
    chart::bars("Throughput per scenario (median of rounds)", "/s", &bars)
}

/// p50 and p99 against offered load, per target.
pub fn latency_chart(r: &Results) -> String {
    let colors = [
        ("hub", "#1f77b4"),
        ("direct", "#2ca02c"),
        ("nginx", "#ff7f0e"),
    ];
    let mut series = Vec::new();
    for (target, color) in colors {
        let mine: Vec<&Sample> = r
            .queries
            .latency
            .iter()
            .filter(|s| s.target == target)
            .collect();
        if mine.is_empty() {
            continue;
        }
        for (label, dashed, pick) in [
            (
                "p99",
                false,
                (|s: &Sample| s.report.p99_ms) as fn(&Sample) -> f64,
            ),
            ("p50", true, |s: &Sample| s.report.p50_ms),
        ] {
            series.push(Series {
                label: format!("{target} {label}"),
                points: mine
                    .iter()
                    .filter_map(|s| Some((rate_of(s)?, pick(s))))
                    .collect(),
                dashed,
                color,
            });
        }
    }
    chart::latency(
        "Query latency against offered load (scenario 1)",
        &series,
        Some(10.0),
    )
}
