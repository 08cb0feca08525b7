//! RabbitMQ restarts in the middle of a stream of queries: the hub and the
//! adapter reconnect by themselves, and every exchange ends answered and
//! logged exactly once - the outbox and the durable queues lose nothing.
//! (Alone in its test binary: it restarts the machine's broker.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use hub_adapter_sdk::amqp::{Topology, WorkerConfig};
use hub_e2e::services::{AmqpNamespace, PgDatabase};
use hub_e2e::*;
use serde_json::{Value, json};

/// Starts the broker's application again even if the test fails midway.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl").arg(arg).output().unwrap();
    assert!(out.status.success(), "rabbitmqctl {arg}: {out:?}");
}

fn lookup(id: &str) -> Value {
    let mut e = citizen_lookup("001085012345");
    e["id"] = json!(id);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_costs_a_pause_never_a_message() {
    let Some(ns) = AmqpNamespace::create(&REFERENCE_PROVIDERS, &["restart"]).await else {
        return;
    };
    if Command::new("rabbitmqctl").arg("status").output().is_err() {
        // A remote broker: this test restarts a local one.
        let _: Option<()> = hub_e2e::services::unavailable("rabbitmqctl", "not installed");
        return;
    }
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        hub_e2e::services::run_on(c, &db, &ns, "restart");
        c.query_timeout_ms = 2_000;
    })
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(hub_adapter_sdk::amqp::run(
        Arc::new(adapter_population::PopulationAdapter::new(
            adapter_population::Registry::synthetic(1, 20),
        )),
        WorkerConfig {
            amqp_url: ns.url.clone(),
            topology: Topology::new(ns.prefix.clone()),
            hub_keys: hub.hub_keys(),
            prefetch: 16,
        },
        stopped,
    ));
    let (status, first) = hub.send(lookup(&uuid::Uuid::now_v7().to_string())).await;
    assert_eq!(status, StatusCode::OK, "{first}");

    let hub = Arc::new(hub);
    let ids: Vec<String> = (0..40).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().enumerate() {
        let (hub, id) = (hub.clone(), id.clone());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50 * n as u64)).await;
            let (status, body) = hub.send(lookup(&id)).await;
            (id, status, body)
        });
    }
    // Midway through the stream the broker goes down and comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart = Restart;
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_millis(700)).await;
    rabbitmqctl("start_app");
    drop(restart);

    let mut answered: HashMap<String, Value> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (id, status, body) = done.unwrap();
        if status == StatusCode::OK {
            answered.insert(id, body);
        }
    }
    // Whoever got 504 during the outage retries with the same id.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        while !answered.contains_key(id) {
            assert!(Instant::now() < deadline, "{id} was never answered");
            let (status, body) = hub.send(lookup(id)).await;
            if status == StatusCode::OK {
                answered.insert(id.clone(), body);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let records = hub.log_records().await;
    for id in &ids {
        let of = |kind: &str| {
            records
                .iter()
                .filter(|r| r["exchange_id"] == id.as_str() && r["kind"] == kind)
                .count()
        };
        assert_eq!(of("request"), 1, "{id}");
        assert_eq!(of("response"), 1, "{id}");
    }
    // Ready again once its connection is back (the last answers may come
    // in before the relay's next look at the broker).
    let ready = eventually(|| async {
        let (status, health) = hub.public_client().get_json("/readyz").await.unwrap();
        (status == StatusCode::OK).then_some(health)
    })
    .await;
    assert!(ready.is_some(), "the hub never reported ready again");
    let metrics = hub.metrics().await;
    assert!(metrics.contains("\nhub_broker_up 1\n"), "{metrics}");
    assert!(metrics.contains("\nhub_database_up 1\n"), "{metrics}");

    let _ = stop.send(true);
    worker.await.unwrap();
    let mut hub = Arc::into_inner(hub).unwrap();
    hub.stop().await;
    db.drop_now().await;
    ns.delete_now().await;
}
