//! `hub-report --smoke` end to end: every scenario runs against real
//! processes (the hub on embedded defaults, the direct endpoint, nginx, the
//! hub on PostgreSQL + RabbitMQ with its adapter process, `hub audit
//! verify`) and the report, its data and its charts are written. Checks
//! that the benchmark works, not how fast.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn throughput(samples: &Value, target: &str) -> f64 {
    samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["target"] == target)
        .map(|s| s["report"]["throughput"].as_f64().unwrap())
        .fold(0.0, f64::max)
}

#[test]
fn the_smoke_report_runs_every_scenario_and_writes_table_and_charts() {
    let report = Path::new(env!("CARGO_BIN_EXE_hub-report"));
    let bin_dir = report.parent().unwrap();
    assert!(
        bin_dir.join("hub").exists(),
        "the hub binary is not built beside hub-report: run the whole suite (cargo test --workspace) or cargo build -p hub first"
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(report)
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "hub-report failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    let ci = hub_e2e::services::required();

    let queries = &results["queries"]["throughput"];
    assert!(throughput(queries, "hub") > 0.0, "{queries}");
    assert!(throughput(queries, "direct") > 0.0, "{queries}");
    match results["queries"]["nginx_skipped"].as_str() {
        None => assert!(throughput(queries, "nginx") > 0.0, "{queries}"),
        Some(why) if ci => panic!("CI=true requires nginx (.ci/nginx installs it): {why}"),
        Some(why) => eprintln!("SKIPPED: the nginx comparison ({why})"),
    }
    let latency = results["queries"]["latency"].as_array().unwrap();
    assert!(
        latency.iter().all(|s| s["report"]["failed"] == 0),
        "{latency:?}"
    );
    assert!(throughput(&results["events"], "hub") > 0.0);
    match results["production"]["skipped"].as_str() {
        None => {
            assert!(throughput(&results["production"]["queries"], "hub") > 0.0);
            assert!(throughput(&results["production"]["events"], "hub") > 0.0);
            // Each round says where the CPU went: the hub worked in every
            // round, the services (on this machine) over the scenario; the
            // clock ticks /proc counts in are too coarse to ask more of a
            // smoke run.
            let mut services = 0.0;
            for workload in ["queries", "events"] {
                for sample in results["production"][workload].as_array().unwrap() {
                    let cpu = &sample["cpu"];
                    assert!(cpu["hub_us"].as_f64().unwrap() > 0.0, "{sample}");
                    services +=
                        cpu["postgres_us"].as_f64().unwrap() + cpu["rabbitmq_us"].as_f64().unwrap();
                    let idle = cpu["idle_percent"].as_f64().unwrap();
                    assert!((0.0..=100.0).contains(&idle), "{sample}");
                }
            }
            assert!(services > 0.0, "{}", results["production"]);
            assert!(
                results["production"]["hub_peak"]["peak_kb"]
                    .as_u64()
                    .unwrap()
                    > 0
            );
        }
        Some(why) => {
            assert!(!ci, "CI=true requires scenario 3: {why}");
            eprintln!("SKIPPED: scenario 3 ({why})");
        }
    }
    assert_eq!(results["audit"]["entries"], 2000);
    assert!(results["audit"]["full_seconds"].as_f64().unwrap() > 0.0);
    let idle = results["embedded_idle"]["rss_kb"].as_u64().unwrap();
    let peak = results["embedded_peak"]["peak_kb"].as_u64().unwrap();
    assert!(
        idle > 1000 && peak >= idle,
        "idle {idle} kB, peak {peak} kB"
    );

    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for heading in [
        "## Targets",
        "## 1. A query",
        "### Latency at fixed offered load",
        "## 2. Events",
        "## 3. PostgreSQL + RabbitMQ",
        "## 4. `hub audit verify`",
        "## 5. Resident memory",
    ] {
        assert!(markdown.contains(heading), "{heading} missing:\n{markdown}");
    }
    for chart in ["throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    let latency_svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(latency_svg.contains("<polyline"), "no latency lines drawn");
}
