//! The load generator against the real hub, briefly: every mode and HTTP
//! version works and every exchange it sends is accepted. Checks that the
//! benchmark works, not how fast (figures come from `hub-load` runs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hub_bench::{Bodies, Mode, Plan, Workload};
use hub_client::HttpVersion;
use hub_e2e::TestHub;

async fn smoke(hub: &TestHub, workload: Workload, mode: Mode, http: HttpVersion) {
    let pki = &hub.running().pki;
    let bodies = Arc::new(Bodies::prepare(workload, pki, 50).unwrap());
    let client = hub_bench::clients_for(&hub.api_base(), &hub.config.data_dir, workload).unwrap();
    let plan = Plan {
        workload,
        mode,
        duration: Duration::from_millis(700),
        connections: 2,
        streams: if http == HttpVersion::Http2 { 4 } else { 1 },
        http,
    };
    let report = hub_bench::run(&client, &plan, bodies).await.unwrap();
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    let subscribers = workload.subscribers().len() as u64;
    assert_eq!(report.undelivered, 0, "{report:?}");
    assert_eq!(report.delivered, report.ok * subscribers, "{report:?}");
    assert!(
        report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_events_in_both_modes_over_http1_and_h2() {
    let hub = TestHub::start().await;
    smoke(&hub, Workload::Query, Mode::Max, HttpVersion::Http1).await;
    smoke(&hub, Workload::Query, Mode::Max, HttpVersion::Http2).await;
    smoke(
        &hub,
        Workload::Query,
        Mode::Rate { per_second: 100.0 },
        HttpVersion::Http1,
    )
    .await;
    smoke(&hub, Workload::Event, Mode::Max, HttpVersion::Http2).await;
}
