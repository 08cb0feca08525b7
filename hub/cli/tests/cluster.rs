//! Two hub processes share one PostgreSQL and one RabbitMQ, with the
//! population adapter as a process of its own. Under a stream of queries
//! to both, one hub is killed with SIGKILL and restarted; every exchange
//! a sender retries ends answered, and the one log holds each exchange
//! exactly once and still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hub_client::HubClient;
use hub_core::ids::Member;
use hub_e2e::services::{AmqpNamespace, PgDatabase};
use hub_server::pki::PkiPaths;
use serde_json::{Value, json};

const ONE_STOP: &str = "000.00.29.H29/one-stop";
const EXCHANGES: usize = 120;

fn client(data: &std::path::Path, api: &str) -> HubClient {
    let pki = PkiPaths::new(data);
    let m: Member = ONE_STOP.parse().unwrap();
    HubClient::from_files(
        api,
        &pki.ca_cert(),
        Some((&pki.agency_cert(&m), &pki.agency_key(&m))),
    )
    .unwrap()
}

fn request(id: &str, n: usize) -> Value {
    // Citizens of the synthetic registry and the fixture, so answers differ.
    let pid = if n.is_multiple_of(2) {
        "001085012345"
    } else {
        "079192000123"
    };
    json!({"envelope": {
        "id": id,
        "sender": {"agency": "000.00.29.H29", "subsystem": "one-stop"},
        "service": "citizen.lookup",
        "version": 1,
        "purpose": "public_service",
        "case_ref": format!("HS-2026-{n:06}"),
        "payload": {"personal_id": pid},
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hubs_keep_one_log_through_a_killed_hub() {
    let providers = [
        "000.00.00.G01/population-registry",
        "000.00.00.G13/land-registry",
        "000.00.00.G09/enterprise-registry",
    ];
    let Some(ns) = AmqpNamespace::create(&providers, &["a", "b"]).await else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let shared = [
        ("HUB_DATABASE_URL", db.url.as_str()),
        ("HUB_AMQP_URL", ns.url.as_str()),
        ("HUB_AMQP_PREFIX", ns.prefix.as_str()),
        ("HUB_QUERY_TIMEOUT_MS", "5000"),
    ];
    let with = |instance: &'static str| {
        let mut env = shared.to_vec();
        env.push(("HUB_INSTANCE", instance));
        env
    };
    let a = serve_with(&data, &with("a"));
    let mut b = Some(serve_with(&data, &with("b")));
    let adapter = Running(
        Command::new(HUB)
            .arg("--data-dir")
            .arg(&data)
            .args(["adapter", "population"])
            .envs(shared.iter().copied())
            .env("HUB_SYNTHETIC_RECORDS", "20")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let ids: Vec<String> = (0..EXCHANGES)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let clients = Arc::new([
        client(&data, &a.api),
        client(&data, &b.as_ref().unwrap().api),
    ]);
    // A stream of queries over both hubs; hub b is killed midway.
    let mut answered: HashMap<String, Value> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().enumerate() {
        let (clients, id) = (clients.clone(), id.clone());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * n as u64)).await;
            let outcome = clients[n % 2]
                .post_json("/v1/exchanges", &request(&id, n))
                .await;
            (id, outcome)
        });
    }
    let kill_at = Instant::now() + Duration::from_millis(10 * EXCHANGES as u64 / 2);
    let mut killed = false;
    while let Some(done) = tasks.join_next().await {
        let (id, outcome) = done.unwrap();
        if let Ok((status, body)) = outcome
            && status == http::StatusCode::OK
        {
            answered.insert(id, body);
        }
        if !killed && Instant::now() >= kill_at {
            let mut hub_b = b.take().unwrap();
            hub_b.child.kill().unwrap(); // SIGKILL
            hub_b.child.wait().unwrap();
            killed = true;
        }
    }
    assert!(killed, "the stream outlasted the kill");
    assert!(answered.len() < EXCHANGES, "some exchanges were cut off");
    eprintln!(
        "{} of {EXCHANGES} answered before hub b came back",
        answered.len()
    );

    // Hub b comes back under the same instance name; senders retry what
    // they have no answer for, with the same exchange ids, on either hub.
    let b = serve_with(&data, &with("b"));
    let clients = [client(&data, &a.api), client(&data, &b.api)];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, id) in ids.iter().enumerate() {
        while !answered.contains_key(id) {
            assert!(Instant::now() < deadline, "exchange {id} never answered");
            match clients[n % 2]
                .post_json("/v1/exchanges", &request(id, n))
                .await
            {
                Ok((http::StatusCode::OK, body)) => {
                    answered.insert(id.clone(), body);
                }
                // In progress (its answer is on its way), or 503/504 while
                // the system settles: retry, as a sender does.
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    // The one log: each exchange exactly once as a request and once as a
    // response, indexes without a gap, and it verifies with checkpoints
    // signed by one hub at a time.
    stop(b);
    stop(a);

    // A request forged by someone with broker access but not the hub's key:
    // the adapter process dead-letters it, and the CLI shows and re-drives it.
    let topology = hub_adapter_sdk::amqp::Topology::new(ns.prefix.clone());
    let (conn, ch) = ns.client_channel().await;
    let population: Member = "000.00.00.G01/population-registry".parse().unwrap();
    hub_e2e::services::publish_taken(
        &ch,
        (
            &topology.exchange(),
            &hub_adapter_sdk::amqp::Topology::routing_key(&population),
        ),
        b"{\"record\": {}}",
        lapin::BasicProperties::default().with_message_id("forged-request".into()),
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
    let dead_letters = |args: &[&str]| {
        Command::new(HUB)
            .arg("--data-dir")
            .arg(&data)
            .arg("dead-letters")
            .args(args)
            .envs(shared.iter().copied())
            .output()
            .unwrap()
    };
    // Generous: a loaded CI broker can take seconds to move a letter.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let out = dead_letters(&["list"]);
        assert!(out.status.success(), "{}", text(&out));
        let listed = text(&out);
        if listed.contains("forged-request") || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        listed.contains("forged-request")
            && listed.contains("refused")
            && listed.contains("because: the hub's signature"),
        "{listed}"
    );
    assert!(listed.contains("1 dead letter(s)"), "{listed}");
    let redrive = dead_letters(&["redrive", "forged-request"]);
    assert!(text(&redrive).contains("1 re-driven"), "{}", text(&redrive));
    drop(adapter);
    let db_env = [("HUB_DATABASE_URL", db.url.as_str())];
    let bundle = dir.path().join("bundle");
    let export = Command::new(HUB)
        .arg("--data-dir")
        .arg(&data)
        .args(["audit", "export", "--out"])
        .arg(&bundle)
        .envs(db_env)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", text(&export));
    let entries = std::fs::read_to_string(bundle.join("entries.jsonl")).unwrap();
    let records: Vec<Value> = entries
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "no gap, no duplicate index");
    }
    let mut kinds: HashMap<(String, String), usize> = HashMap::new();
    for r in &records {
        let key = (
            r["exchange_id"].as_str().unwrap().to_owned(),
            r["kind"].as_str().unwrap().to_owned(),
        );
        *kinds.entry(key).or_default() += 1;
    }
    for id in &ids {
        for kind in ["request", "response"] {
            assert_eq!(
                kinds.get(&(id.clone(), kind.to_owned())),
                Some(&1),
                "{id} has exactly one {kind}"
            );
        }
        assert_eq!(answered[id]["record"]["exchange_id"], id.as_str());
    }
    let logged: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["exchange_id"].as_str())
        .collect();
    assert_eq!(logged.len(), EXCHANGES, "nothing else was logged");
    let jwks = data.join("pki").join("hub-jwks.json");
    let verify = Command::new(HUB)
        .arg("--data-dir")
        .arg(&data)
        .args(["audit", "verify"])
        .arg(&bundle)
        .arg("--jwks")
        .arg(&jwks)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));

    db.drop_now().await;
    ns.delete_now().await;
}
