//! PostgreSQL stops under a running hub: requests are answered `503
//! storage_unavailable` at once, readiness says so, and the hub serves
//! again by itself once the database is back. (Alone in its test binary:
//! it stops the machine's PostgreSQL.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use hub_e2e::services::PgDatabase;
use hub_e2e::*;

/// The local cluster's version, if `pg_ctlcluster` manages one here.
fn cluster() -> Option<String> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    let version = versions.flatten().next()?.file_name().into_string().ok()?;
    Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .ok()
        .map(|_| version)
}

fn pg_ctl(version: &str, action: &str) {
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .args(if action == "stop" {
            &["-m", "fast"][..]
        } else {
            &[][..]
        })
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctlcluster {action}: {out:?}");
}

/// Starts PostgreSQL again even if the test fails midway.
struct Restart(String);

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.0, "main", "start"])
            .output();
    }
}

fn lookup() -> serde_json::Value {
    citizen_lookup("001085012345")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_gets_503_at_once_and_the_hub_recovers_by_itself() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let Some(version) = cluster() else {
        // A remote PostgreSQL: this test stops a local one.
        let _: Option<()> = hub_e2e::services::unavailable("pg_ctlcluster", "no local cluster");
        return;
    };
    let url = db.url.clone();
    let mut hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.database_url = url;
        c.database_acquire_timeout_ms = 500;
    })
    .await;
    let (status, reply) = hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");

    let restart = Restart(version.clone());
    pg_ctl(&version, "stop");
    let asked = Instant::now();
    let (status, headers, reply) = hub.send_full(lookup()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["code"], "storage_unavailable", "{reply}");
    assert_eq!(headers["retry-after"], "1", "when to send it again");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered without hanging"
    );
    let (status, ready) = hub.public_client().get_json("/readyz").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["database"], "unavailable");
    // The metrics say so too, and still answer.
    let metrics = hub.metrics().await;
    assert!(metrics.contains("\nhub_database_up 0\n"), "{metrics}");
    assert!(!metrics.contains("hub_inbox_messages"), "{metrics}");

    pg_ctl(&version, "start");
    drop(restart);
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        let (status, reply) = hub.send(lookup()).await;
        if status == StatusCode::OK {
            break reply;
        }
        assert!(Instant::now() < deadline, "never served again: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let records = hub.log_records().await;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r["index"], i as u64,
            "no gap or duplicate across the outage"
        );
    }
    assert_eq!(records.last().unwrap()["index"], reply["record"]["index"]);
    let (status, _) = hub.public_client().get_json("/readyz").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    hub.stop().await;
    db.drop_now().await;
}
