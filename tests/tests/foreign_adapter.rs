//! An adapter written in another language from docs/protocol.md ("Adapters
//! over AMQP") alone - `docs/examples/python_adapter.py`, with `pika` -
//! serves the population registry to a real hub on PostgreSQL and RabbitMQ:
//! it declares the same topology (the broker refuses a queue declared with
//! other arguments), answers queries sent one by one and together, sends
//! the requests of a redelivered message of several back one by one, and
//! dead-letters a forged request with the `x-refused-*` headers the hub's
//! tools read, and follows the hand-over to the hub's new key after a
//! rotation. Needs `python3` with `pika` and `cryptography` (`.ci/python`
//! installs Debian's); without them, PostgreSQL or RabbitMQ the test says
//! it was skipped, and fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use http::StatusCode;
use hub_adapter_sdk::amqp::Topology;
use hub_core::ids::Member;
use hub_e2e::requests::{publish_requests, take_requests, waiting_requests};
use hub_e2e::services::{AmqpNamespace, PgDatabase, publish_taken, python_with, run_on};
use hub_e2e::*;
use serde_json::json;

/// Kills the adapter process even if the test fails midway.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_adapter_written_from_the_protocol_doc_serves_the_hub_over_amqp() {
    let Some(python) = python_with(&["pika", "cryptography"]) else {
        return;
    };
    let Some(ns) = AmqpNamespace::create(&REFERENCE_PROVIDERS, &["hub-py"]).await else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        run_on(c, &db, &ns, "hub-py");
    })
    .await;
    // Four requests the hub sent while no adapter ran, taken from the
    // queue and put back two by two as messages of several, as the hub's
    // relay sends what one outbox round holds for a provider. The first
    // message is delivered once and not acknowledged (a consumer that died
    // with it): redelivered, the adapter must send its requests back one
    // by one, in case one of them is what killed it.
    let hub_shared = Arc::new(hub);
    let (mut together, together_ids, requests) =
        waiting_requests(&ns, &hub_shared, "hub-py", 4).await;
    publish_requests(&ns, "hub-py", &[&requests[0], &requests[1]]).await;
    {
        let topology = Topology::new(ns.prefix.clone());
        let provider: Member = POPULATION_REGISTRY.parse().unwrap();
        let (conn, ch) = ns.client_channel().await;
        let queue = topology.provider_queue(&provider);
        let (taken, _, _) = take_requests(&ch, &queue, 2, &hub_shared.hub_keys()).await;
        assert_eq!(taken, together_ids[..2]);
        // Closed without an acknowledgement: the broker delivers it again.
        let _ = conn.close(200, "died".into()).await;
    }
    publish_requests(&ns, "hub-py", &[&requests[2], &requests[3]]).await;

    let hub = &hub_shared;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/python_adapter.py");
    let output = hub.dir.path().join("adapter.out");
    let adapter = Running(
        Command::new(python)
            .arg(&script)
            .args(["--amqp", &ns.url, "--prefix", &ns.prefix, "--jwks"])
            .arg(hub.running().pki.dir.join("hub-jwks.json"))
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    while let Some(done) = together.join_next().await {
        let (status, reply) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    // Queries at once: the hub may send some of them together, as an array.
    let mut sending = tokio::task::JoinSet::new();
    for n in 0..8 {
        let hub = hub_shared.clone();
        let id = if n % 4 == 3 {
            "001085099999"
        } else {
            "001085012345"
        };
        sending.spawn(async move { (id, hub.send(citizen_lookup(id)).await) });
    }
    let mut answered = Vec::new();
    while let Some(done) = sending.join_next().await {
        let (id, (status, reply)) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{id}: {reply}");
        answered.push(reply["record"]["exchange_id"].as_str().unwrap().to_owned());
        if id == "001085012345" {
            assert_eq!(reply["body"]["found"], true, "{reply}");
            assert_eq!(reply["body"]["citizen"]["full_name"], "Nguyễn Văn An");
        } else {
            assert_eq!(reply["body"], json!({"found": false}), "{reply}");
        }
    }
    let mut hub = Arc::into_inner(hub_shared).unwrap();

    // A request the hub never signed: the adapter dead-letters it, saying why.
    let topology = Topology::new(ns.prefix.clone());
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    let (conn, ch) = ns.client_channel().await;
    let forged = json!({"record": {"exchange_id": "01930f1e-0000-7000-8000-0000000000f1",
                                   "kind": "request"},
                        "body": {"payload": {"personal_id": "001085012345"}}, "body_salt": "AAAA"});
    publish_taken(
        &ch,
        (&topology.exchange(), &Topology::routing_key(&provider)),
        forged.to_string().as_bytes(),
        lapin::BasicProperties::default()
            .with_message_id("forged-py".into())
            .with_reply_to(topology.reply_queue("hub-py").into()),
    )
    .await;
    let letters = eventually(|| async {
        let (letters, _) = hub_server::broker::dead_letters(&ns.url, &topology, None)
            .await
            .unwrap();
        Some(letters).filter(|l| !l.is_empty())
    })
    .await
    .unwrap_or_default();
    let said = std::fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(letters.len(), 1, "{letters:?}\nthe adapter said:\n{said}");
    let letter = &letters[0];
    assert_eq!(letter.message_id.as_deref(), Some("forged-py"));
    assert_eq!(letter.reason, "refused");
    assert!(letter.because.contains("signature"), "{letter:?}");
    assert_eq!(letter.queue, topology.provider_queue(&provider));
    assert_eq!(letter.exchange, topology.exchange());
    assert!(
        said.contains(&format!("consuming {}", topology.provider_queue(&provider))),
        "{said}"
    );
    assert!(said.contains("took 2 requests in one message"), "{said}");
    for (n, id) in together_ids.iter().enumerate() {
        let sent_back = said.contains(&format!("sent back {id} alone"));
        assert_eq!(sent_back, n < 2, "{id}: {said}");
    }
    // Each answer was the Python adapter's (no other consumer runs).
    let together_ids = together_ids.iter().map(ToString::to_string);
    for id in answered.iter().cloned().chain(together_ids) {
        assert!(said.contains(&format!("answered {id}")), "{id}: {said}");
    }

    // The hub's key is rotated while it is stopped: the adapter keeps the
    // keys it read at its start and follows the hand-over the requests carry.
    hub.restart_with_rotated_key(|c| run_on(c, &db, &ns, "hub-py"))
        .await;
    let (status, reply) = hub.send(citizen_lookup("001085012345")).await;
    let said = std::fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{reply}\nthe adapter said:\n{said}");
    let id = reply["record"]["exchange_id"].as_str().unwrap();
    assert!(said.contains("following the hub key's hand-over"), "{said}");
    assert!(said.contains(&format!("answered {id}")), "{id}: {said}");
    let (letters, _) = hub_server::broker::dead_letters(&ns.url, &topology, None)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "only the forged request: {letters:?}");

    drop(adapter);
    let _ = conn.close(200, "done".into()).await;
    hub.stop().await;
    db.drop_now().await;
    ns.delete_now().await;
}
