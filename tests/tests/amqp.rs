//! Adapters as their own processes: the hub on PostgreSQL hands requests
//! to RabbitMQ through its outbox, an adapter worker (the SDK's loop, as
//! the adapter binaries run it) answers over the broker, and the hub logs
//! the answer before it acknowledges it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use hub_adapter_sdk::amqp::{Topology, WorkerConfig};
use hub_adapter_sdk::{Adapter, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::ids::{ExchangeId, Member};
use hub_e2e::relay::Relay;
use hub_e2e::requests::{publish_requests, publish_requests_with, take_requests, waiting_requests};
use hub_e2e::services::{AmqpNamespace, BrokerUser, PgDatabase, publish_taken, run_on};
use hub_e2e::*;
use hub_server::broker::DeadLetter;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// The population adapter, counting the requests it finished per exchange,
/// and optionally hanging on the first one (a process about to die) or
/// pausing on each (a slow registry).
struct Counting {
    inner: adapter_population::PopulationAdapter,
    finished: Mutex<HashMap<ExchangeId, u32>>,
    hang: bool,
    /// Hang on this exchange only (a request that brings its adapter down).
    hang_on: Option<ExchangeId>,
    pause: Duration,
    received: Notify,
    /// Calls under way, and the most there were at once.
    calls: std::sync::atomic::AtomicUsize,
    most_calls: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn new(hang: bool) -> Arc<Self> {
        Self::with(hang, Duration::ZERO)
    }

    fn pausing(pause: Duration) -> Arc<Self> {
        Self::with(false, pause)
    }

    fn with(hang: bool, pause: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: adapter_population::PopulationAdapter::new(
                adapter_population::Registry::synthetic(1, 20),
            ),
            finished: Mutex::new(HashMap::new()),
            hang,
            hang_on: None,
            pause,
            received: Notify::new(),
            calls: Default::default(),
            most_calls: Default::default(),
        })
    }

    fn hanging_on(id: ExchangeId) -> Arc<Self> {
        let mut counting = Arc::into_inner(Self::new(false)).unwrap();
        counting.hang_on = Some(id);
        Arc::new(counting)
    }

    fn finished(&self, id: ExchangeId) -> u32 {
        self.finished.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Adapter for Counting {
    fn provider(&self) -> &Member {
        self.inner.provider()
    }
    fn services(&self) -> Vec<ServiceSpec> {
        self.inner.services()
    }
    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.received.notify_one();
            let now = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_calls.fetch_max(now, Ordering::SeqCst);
            if self.hang || self.hang_on == Some(request.exchange_id) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.pause).await;
            let answer = self.inner.handle(request).await;
            self.calls.fetch_sub(1, Ordering::SeqCst);
            *self
                .finished
                .lock()
                .unwrap()
                .entry(request.exchange_id)
                .or_default() += 1;
            answer
        })
    }
}

/// How many messages wait in `queue` (not counting those delivered and
/// not yet acknowledged).
async fn ready_in(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// The dead letters, once there are any (none if none came in time).
async fn dead_letters_once_any(ns: &AmqpNamespace, topology: &Topology) -> Vec<DeadLetter> {
    let list = || hub_server::broker::dead_letters(&ns.url, topology, None);
    eventually(|| async { Some(list().await.unwrap().0).filter(|l| !l.is_empty()) })
        .await
        .unwrap_or_default()
}

/// Re-drive the letter `id`; the letters once it is dead again.
async fn redrive(ns: &AmqpNamespace, topology: &Topology, id: &str) -> Vec<DeadLetter> {
    let (_, redriven) = hub_server::broker::dead_letters(&ns.url, topology, Some(&[id.into()]))
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    dead_letters_once_any(ns, topology).await
}

struct Setup {
    db: PgDatabase,
    ns: AmqpNamespace,
    hub: TestHub,
}

async fn start(instance: &str) -> Option<Setup> {
    let ns = AmqpNamespace::create(&REFERENCE_PROVIDERS, &[instance]).await?;
    let db = PgDatabase::create().await?;
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        run_on(c, &db, &ns, instance);
    })
    .await;
    Some(Setup { db, ns, hub })
}

/// An adapter worker's settings, as `WorkerConfig::from_env` reads them.
fn worker(hub: &TestHub, ns: &AmqpNamespace, amqp_url: &str) -> WorkerConfig {
    WorkerConfig {
        amqp_url: amqp_url.to_owned(),
        topology: Topology::new(ns.prefix.clone()),
        hub_keys: hub.hub_keys(),
        prefetch: 16,
    }
}

impl Setup {
    async fn finish(mut self) {
        self.hub.stop().await;
        self.db.drop_now().await;
        self.ns.delete_now().await;
    }
}

fn spawn_worker(
    adapter: Arc<dyn Adapter>,
    config: WorkerConfig,
) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(hub_adapter_sdk::amqp::run(adapter, config, stopped));
    (task, stop)
}

fn lookup() -> serde_json::Value {
    citizen_lookup("001085012345")
}

/// The broker's `host:port` in `ns`'s URL (where a test's relay points).
fn broker_addr(ns: &AmqpNamespace) -> String {
    ns.url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned()
}

/// The log's entries of one kind for one exchange.
async fn entries_of(hub: &TestHub, id: &Value, kind: &str) -> usize {
    hub.log_records()
        .await
        .iter()
        .filter(|r| r["exchange_id"] == *id && r["kind"] == kind)
        .count()
}

/// A request the hub did not sign, naming `id`.
fn forged_request(id: &str) -> Vec<u8> {
    json!({"record": {"exchange_id": id}, "body": {}, "body_salt": "AAAA"})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn queries_are_answered_by_an_adapter_process_over_rabbitmq() {
    let Some(setup) = start("hub-a").await else {
        return;
    };
    let adapter = Counting::new(false);
    let (worker, stop) = spawn_worker(
        adapter.clone(),
        worker(&setup.hub, &setup.ns, &setup.ns.url),
    );
    let hub = &setup.hub;

    let (status, reply) = hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["citizen"]["full_name"], "Nguyễn Văn An");
    let jwks = hub.public_client().jwks().await.unwrap();
    hub_client::verify_reply(&reply, &jwks).unwrap();
    assert_eq!(
        reply["record"]["sender"]["subsystem"],
        "population-registry"
    );
    let id = reply["record"]["exchange_id"].clone();
    assert_eq!(
        adapter.finished(ExchangeId::parse(id.as_str().unwrap()).unwrap()),
        1
    );
    assert_eq!(entries_of(hub, &id, "response").await, 1);

    // Many at once: publishes share confirm windows, answers share group commits.
    let mut tasks = tokio::task::JoinSet::new();
    let hub = Arc::new(setup.hub);
    for _ in 0..30 {
        let hub = hub.clone();
        tasks.spawn(async move { hub.send(lookup()).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, reply) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let (status, health) = hub.public_client().get_json("/readyz").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["broker"], "ok");
    assert_eq!(health["database"], "ok");

    // Events still go to subscribers' inboxes.
    hub.publish_registered_event().await;

    // The hub answers its own service in process, broker or not.
    let (status, history) = hub
        .send(envelope(
            hub_server::pki::CITIZEN_PORTAL,
            "subject.access_history",
            "data_subject_request",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let accesses = history["body"]["accesses"].as_array().unwrap();
    assert_eq!(accesses.len(), 31, "{history}");
    assert!(accesses.iter().all(|a| a["outcome"] == "answered"));

    let _ = stop.send(true);
    worker.await.unwrap();
    let setup = Setup {
        hub: Arc::into_inner(hub).unwrap(),
        ..setup
    };
    setup.finish().await;
}

#[tokio::test]
async fn a_request_whose_adapter_dies_is_redelivered_and_answered_once() {
    let Some(setup) = start("hub-b").await else {
        return;
    };
    let broker_addr = broker_addr(&setup.ns);
    let relay = Relay::start(broker_addr.parse().unwrap()).await;
    let through_relay = setup.ns.url.replace(&broker_addr, &relay.addr.to_string());
    let dying = Counting::new(true);
    let (dying_task, _stop_dying) =
        spawn_worker(dying.clone(), worker(&setup.hub, &setup.ns, &through_relay));

    let hub = Arc::new(setup.hub);
    let sending = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.send(lookup()).await })
    };
    tokio::time::timeout(Duration::from_secs(10), dying.received.notified())
        .await
        .expect("the first adapter received the request");
    // The adapter's host vanishes mid-message: its connection is reset and
    // the broker puts the unacknowledged request back.
    relay.cut();
    dying_task.abort();

    let healthy = Counting::new(false);
    let (healthy_task, stop) =
        spawn_worker(healthy.clone(), worker(&hub, &setup.ns, &setup.ns.url));
    let (status, reply) = sending.await.unwrap();
    let setup = Setup {
        hub: Arc::into_inner(hub).unwrap(),
        ..setup
    };
    assert_eq!(status, StatusCode::OK, "{reply}");
    let id = reply["record"]["exchange_id"].clone();
    let exchange = ExchangeId::parse(id.as_str().unwrap()).unwrap();
    assert_eq!(dying.finished(exchange), 0);
    assert_eq!(healthy.finished(exchange), 1);
    assert_eq!(entries_of(&setup.hub, &id, "request").await, 1);
    assert_eq!(entries_of(&setup.hub, &id, "response").await, 1);

    let _ = stop.send(true);
    healthy_task.await.unwrap();
    setup.finish().await;
}

#[tokio::test]
async fn an_adapter_given_the_hub_keys_before_a_rotation_follows_the_hand_over() {
    let Some(mut setup) = start("hub-k").await else {
        return;
    };
    // The adapter process keeps the keys it was started with.
    let adapter = Counting::new(false);
    let config = worker(&setup.hub, &setup.ns, &setup.ns.url);
    let pinned = config.hub_keys.clone();
    let (worker_task, stop) = spawn_worker(adapter.clone(), config);
    let (status, reply) = setup.hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");

    // The hub's key is rotated while it is stopped, as operations.md says.
    let (db, ns) = (&setup.db, &setup.ns);
    setup
        .hub
        .restart_with_rotated_key(|c| run_on(c, db, ns, "hub-k"))
        .await;

    // Requests sealed by the new key reach the adapter with the hand-over
    // from the key it holds: answered, and nothing dead-lettered.
    let (status, reply) = setup.hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(
        hub_client::verify_reply(&reply, &pinned).is_err(),
        "sealed by the new key, which the adapter was not given"
    );
    hub_client::verify_reply(&reply, &setup.hub.hub_keys()).unwrap();
    let id = ExchangeId::parse(reply["record"]["exchange_id"].as_str().unwrap()).unwrap();
    assert_eq!(adapter.finished(id), 1);
    let topology = Topology::new(setup.ns.prefix.clone());
    let (dead, _) = hub_server::broker::dead_letters(&setup.ns.url, &topology, None)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    let _ = stop.send(true);
    worker_task.await.unwrap();

    // A message of several requests sealed by the new key comes back from
    // an adapter that went down with it: each request goes back to the
    // queue alone, with the hand-overs, so that an adapter started afresh
    // with the old keys still verifies it.
    let hub = Arc::new(setup.hub);
    let (mut sending, ids, requests) = waiting_requests(&setup.ns, &hub, "hub-k", 2).await;
    let handovers =
        std::fs::read_to_string(hub.running().pki.dir.join("hub-key-handovers.json")).unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        hub_adapter_sdk::amqp::KEY_HANDOVERS.into(),
        lapin::types::AMQPValue::LongString(handovers.into()),
    );
    publish_requests_with(&setup.ns, "hub-k", &[&requests[0], &requests[1]], headers).await;
    {
        let provider: Member = POPULATION_REGISTRY.parse().unwrap();
        let (conn, ch) = setup.ns.client_channel().await;
        let queue = topology.provider_queue(&provider);
        let (taken, _, _) = take_requests(&ch, &queue, 2, &hub.hub_keys()).await;
        assert_eq!(taken, ids);
        // Closed without an acknowledgement: the broker delivers it again.
        let _ = conn.close(200, "died".into()).await;
    }
    let fresh = Counting::new(false);
    let (fresh_task, stop) = spawn_worker(
        fresh.clone(),
        WorkerConfig {
            hub_keys: pinned.clone(),
            ..worker(&hub, &setup.ns, &setup.ns.url)
        },
    );
    while let Some(done) = sending.join_next().await {
        let (status, reply) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    for id in &ids {
        assert_eq!(fresh.finished(*id), 1);
    }
    let _ = stop.send(true);
    fresh_task.await.unwrap();

    // A request dead-lettered by an adapter that holds none of the hub's
    // keys (the hand-overs lead nowhere from a stranger's key) keeps them
    // when re-driven: an adapter with the old keys then answers it.
    let dir = tempfile::tempdir().unwrap();
    let stranger = hub_server::pki::generate_signing_key(&dir.path().join("stranger.key")).unwrap();
    let refusing = Counting::new(false);
    let (refusing_task, stop) = spawn_worker(
        refusing.clone(),
        WorkerConfig {
            hub_keys: hub_core::jws::Jwks {
                keys: vec![stranger.public_jwk()],
            },
            ..worker(&hub, &setup.ns, &setup.ns.url)
        },
    );
    let sending = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.send(lookup()).await })
    };
    let letters = dead_letters_once_any(&setup.ns, &topology).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let _ = stop.send(true);
    refusing_task.await.unwrap();
    let id = letters[0].message_id.clone().unwrap();
    let (_, redriven) = hub_server::broker::dead_letters(&setup.ns.url, &topology, Some(&[id]))
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    let (again_task, stop) = spawn_worker(
        fresh.clone(),
        WorkerConfig {
            hub_keys: pinned,
            ..worker(&hub, &setup.ns, &setup.ns.url)
        },
    );
    let (status, reply) = sending.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    let exchange = ExchangeId::parse(reply["record"]["exchange_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        (refusing.finished(exchange), fresh.finished(exchange)),
        (0, 1)
    );
    let _ = stop.send(true);
    again_task.await.unwrap();
    let setup = Setup {
        hub: Arc::into_inner(hub).unwrap(),
        ..setup
    };
    setup.finish().await;
}

#[tokio::test]
async fn a_stopping_adapter_answers_the_requests_it_took() {
    let Some(setup) = start("hub-g").await else {
        return;
    };
    let adapter = Counting::pausing(Duration::from_millis(500));
    let (worker_task, stop) = spawn_worker(
        adapter.clone(),
        worker(&setup.hub, &setup.ns, &setup.ns.url),
    );
    let hub = Arc::new(setup.hub);
    let sending = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.send(lookup()).await })
    };
    adapter.received.notified().await;
    // Stopped while its handler is still at work; no other worker runs, so
    // only this one can answer.
    let _ = stop.send(true);
    worker_task.await.unwrap();
    let (status, reply) = sending.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    let id = reply["record"]["exchange_id"].clone();
    let exchange = ExchangeId::parse(id.as_str().unwrap()).unwrap();
    assert_eq!(adapter.finished(exchange), 1);
    assert_eq!(entries_of(&hub, &id, "response").await, 1);

    let hub = Arc::into_inner(hub).unwrap();
    Setup { hub, ..setup }.finish().await;
}

#[tokio::test]
async fn a_forged_request_is_dead_lettered_visible_and_re_drivable() {
    let Some(setup) = start("hub-c").await else {
        return;
    };
    let adapter = Counting::new(false);
    let (worker, stop) = spawn_worker(
        adapter.clone(),
        worker(&setup.hub, &setup.ns, &setup.ns.url),
    );
    let topology = Topology::new(setup.ns.prefix.clone());
    // Someone with broker access but not the hub's key publishes a request.
    let (conn, ch) = setup.ns.client_channel().await;
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    topology.declare_provider(&ch, &provider).await.unwrap();
    let forged = json!({"record": {"exchange_id": "01930f1e-0000-7000-8000-000000000001"},
                        "body": {}, "body_salt": "AAAA"});
    publish_taken(
        &ch,
        (&topology.exchange(), &Topology::routing_key(&provider)),
        forged.to_string().as_bytes(),
        lapin::BasicProperties::default()
            .with_message_id("forged-1".into())
            .with_reply_to(topology.reply_queue("hub-c").into()),
    )
    .await;

    let letters = dead_letters_once_any(&setup.ns, &topology).await;
    let waiting = ready_in(&ch, &topology.provider_queue(&provider)).await;
    assert_eq!(
        letters.len(),
        1,
        "{letters:?}; {waiting} still in the queue"
    );
    assert_eq!(letters[0].message_id.as_deref(), Some("forged-1"));
    assert_eq!(letters[0].reason, "refused");
    assert!(
        letters[0].because.contains("signature"),
        "says why: {letters:?}"
    );
    assert_eq!(letters[0].queue, topology.provider_queue(&provider));
    assert_eq!(letters[0].exchange, topology.exchange());
    assert!(adapter.finished.lock().unwrap().is_empty(), "never handled");
    // Listing leaves them there; re-driving sends them back to their queue
    // (where this one is refused again).
    let listed = hub_server::broker::dead_letters(&setup.ns.url, &topology, None)
        .await
        .unwrap();
    assert_eq!(listed.0.len(), 1);
    let back = redrive(&setup.ns, &topology, "forged-1").await;
    assert_eq!(back.len(), 1, "refused again after the re-drive: {back:?}");

    let _ = conn.close(200, "done".into()).await;
    let _ = stop.send(true);
    worker.await.unwrap();
    setup.finish().await;
}

#[tokio::test]
async fn an_unreadable_answer_is_dead_lettered_saying_why() {
    let Some(setup) = start("hub-f").await else {
        return;
    };
    let topology = Topology::new(setup.ns.prefix.clone());
    let (conn, ch) = setup.ns.client_channel().await;
    // The hub declares its reply queue once it connects, which may be
    // after it started listening.
    topology.declare_replies(&ch, "hub-f").await.unwrap();
    let reply_queue = topology.reply_queue("hub-f");
    publish_taken(
        &ch,
        ("", &reply_queue),
        b"[]",
        lapin::BasicProperties::default().with_message_id("empty-1".into()),
    )
    .await;

    let letters = dead_letters_once_any(&setup.ns, &topology).await;
    let waiting = ready_in(&ch, &reply_queue).await;
    assert_eq!(
        letters.len(),
        1,
        "{letters:?}; {waiting} still in the queue"
    );
    let letter = &letters[0];
    assert_eq!(letter.message_id.as_deref(), Some("empty-1"));
    assert_eq!(letter.reason, "refused");
    assert!(
        letter.because.starts_with("an unreadable answer"),
        "{letter:?}"
    );
    assert_eq!(letter.queue, reply_queue);
    // Re-driven, it goes back to the reply queue through the default
    // exchange, and is refused again.
    let back = redrive(&setup.ns, &topology, "empty-1").await;
    assert_eq!(back.len(), 1, "refused again after the re-drive: {back:?}");
    assert_eq!(back[0].queue, reply_queue);
    let metrics = setup.hub.metrics().await;
    assert!(
        metrics.contains("hub_answers_refused_total{reason=\"unreadable\"} 2\n"),
        "{metrics}"
    );

    let _ = conn.close(200, "done".into()).await;
    setup.finish().await;
}

/// Only the broker user the registry binds to a provider (`agency
/// set-broker-user`) may answer for it: RabbitMQ vouches for who published
/// an answer (its `user_id`); the `provider` the answer names is only a
/// claim.
#[tokio::test]
async fn only_the_broker_user_bound_to_a_provider_may_answer_for_it() {
    let Some(ns) = AmqpNamespace::create(&REFERENCE_PROVIDERS, &["hub-u"]).await else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    // The adapter's user has only the permissions the docs give it.
    let provider: Member = adapter_population::PROVIDER.parse().unwrap();
    let narrow = Topology::new(ns.prefix.clone()).adapter_permissions(&provider);
    let (Some(hub_user), Some(population)) =
        (BrokerUser::create(), BrokerUser::create_with(narrow))
    else {
        return;
    };
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        run_on(c, &db, &ns, "hub-u");
        c.amqp_url = hub_user.url.clone();
        c.query_timeout_ms = 2_000;
    })
    .await;
    let setup = Setup { db, ns, hub };
    // The binding is a logged registry change, in force on this hub at once.
    let bind = json!({"op": "agency_set_broker_user",
                      "member": {"agency": provider.agency, "subsystem": provider.subsystem},
                      "user": population.name});
    let (status, logged) = setup
        .hub
        .operator()
        .post_json("/admin/v1/changes", &bind)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{logged}");
    assert_eq!(logged["record"]["kind"], "admin");
    let topology = Topology::new(setup.ns.prefix.clone());
    let other = hub_adapter_sdk::amqp::broker_user(&setup.ns.url).unwrap();

    // An adapter logged in as another user answers for the population
    // registry: the answer is not taken, and says why in the dead letters.
    let (task, stop) = spawn_worker(
        Counting::new(false),
        worker(&setup.hub, &setup.ns, &setup.ns.url),
    );
    let (status, err) = setup.hub.send(lookup()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    let id = err["exchange_id"].as_str().unwrap().to_owned();
    let refused_from = |letters: &[DeadLetter], user: &str| {
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].message_id.as_deref(), Some(id.as_str()));
        let because = &letters[0].because;
        assert!(
            because.contains(&format!(
                "answers come from broker user '{}'",
                population.name
            )) && because.contains(&format!("but broker user '{user}' published it")),
            "{because}"
        );
    };
    refused_from(
        &dead_letters_once_any(&setup.ns, &topology).await,
        other.as_str(),
    );
    let refused = r#"hub_answers_refused_total{reason="wrong_broker_user"}"#;
    assert!(
        setup
            .hub
            .metrics()
            .await
            .contains(&format!("{refused} 1\n")),
        "{}",
        setup.hub.metrics().await
    );
    let _ = stop.send(true);
    task.await.unwrap();

    // Re-driven with the hub's own credentials, the answer still names who
    // first published it, and is refused again.
    let (_, redriven) =
        hub_server::broker::dead_letters(&hub_user.url, &topology, Some(std::slice::from_ref(&id)))
            .await
            .unwrap();
    assert_eq!(redriven, 1);
    refused_from(
        &dead_letters_once_any(&setup.ns, &topology).await,
        other.as_str(),
    );
    assert_eq!(entries_of(&setup.hub, &json!(id), "response").await, 0);
    assert!(
        setup
            .hub
            .metrics()
            .await
            .contains(&format!("{refused} 2\n"))
    );

    // Claiming the bound user in `user_id` without logging in as it:
    // RabbitMQ itself refuses the message.
    let (conn, ch) = setup.ns.client_channel().await;
    let publishing = ch
        .basic_publish(
            "".into(),
            topology.reply_queue("hub-u").as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"[]",
            lapin::BasicProperties::default().with_user_id(population.name.as_str().into()),
        )
        .await;
    let taken = match publishing {
        Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
        Err(_) => false,
    };
    assert!(!taken, "the broker took a message claiming another user");
    let _ = conn.close(200, "done".into()).await;

    // That user may not read the hub's replies, nor another provider's
    // requests.
    let conn = lapin::Connection::connect(&population.url, Default::default())
        .await
        .unwrap();
    let land: Member = REFERENCE_PROVIDERS[1].parse().unwrap();
    for queue in [
        topology.reply_queue("hub-u"),
        topology.provider_queue(&land),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(queue.as_str().into(), Default::default())
            .await;
        assert!(got.is_err(), "{queue}: {got:?}");
    }
    let _ = conn.close(200, "done".into()).await;

    // Logged in as the bound user, the adapter is answered.
    let (task, stop) = spawn_worker(
        Counting::new(false),
        worker(&setup.hub, &setup.ns, &population.url),
    );
    let (status, reply) = setup.hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let answered = reply["record"]["exchange_id"].clone();
    assert_eq!(entries_of(&setup.hub, &answered, "response").await, 1);

    // Another hub on the database lifts the binding: from this hub's next
    // reload on, the provider answers as the hubs' own user again, so the
    // same adapter is refused.
    let mut unbound = setup
        .hub
        .running()
        .hub
        .store
        .agency(&provider)
        .await
        .unwrap()
        .unwrap();
    unbound.broker_user = None;
    setup
        .hub
        .running()
        .hub
        .store
        .apply_changes(&[hub_server::store::RegistryChange::UpsertAgency(unbound)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + EVENTUALLY;
    loop {
        let (status, reply) = setup.hub.send(lookup()).await;
        if status == StatusCode::GATEWAY_TIMEOUT {
            break;
        }
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert!(
            std::time::Instant::now() < deadline,
            "the lifted binding was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    task.await.unwrap();
    setup.finish().await;
}

#[tokio::test]
async fn a_broker_that_accepts_but_never_answers_does_not_hang_the_hub() {
    let Some(ns) = AmqpNamespace::create(&REFERENCE_PROVIDERS, &["hub-d"]).await else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let broker_addr = broker_addr(&ns);
    let relay = Relay::start(broker_addr.parse().unwrap()).await;
    relay.stall();
    let (url, amqp, prefix) = (
        db.url.clone(),
        ns.url.replace(&broker_addr, &relay.addr.to_string()),
        ns.prefix.clone(),
    );
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.database_url = url;
        c.amqp_url = amqp;
        c.amqp_prefix = prefix;
        c.instance = "hub-d".into();
        c.query_timeout_ms = 1_000;
    })
    .await;
    let setup = Setup { db, ns, hub };
    // The request is logged and waits in the outbox; the sender gets 504.
    let (status, err) = setup.hub.send(lookup()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    let (status, ready) = setup.hub.public_client().get_json("/readyz").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["broker"], "unavailable");

    // The broker answers again: the hub's connect attempt times out, the
    // next one succeeds, the outbox drains and the exchange is answered.
    relay.restore();
    let adapter = Counting::new(false);
    let (worker_task, stop) = spawn_worker(
        adapter.clone(),
        worker(&setup.hub, &setup.ns, &setup.ns.url),
    );
    let path = format!("/v1/exchanges/{}", err["exchange_id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, reply) = setup.hub.client(ONE_STOP).get_json(&path).await.unwrap();
        if status == StatusCode::OK {
            assert_eq!(reply["record"]["kind"], "response");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    worker_task.await.unwrap();
    setup.finish().await;
}

#[tokio::test]
async fn answers_sent_together_in_one_message_are_each_logged_once() {
    let Some(setup) = start("hub-e").await else {
        return;
    };
    let topology = Topology::new(setup.ns.prefix.clone());
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    let keys = worker(&setup.hub, &setup.ns, &setup.ns.url).hub_keys;
    let hub = Arc::new(setup.hub);
    // Two queries wait for their provider; this test answers as it would.
    let mut sending = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let hub = hub.clone();
        sending.spawn(async move { hub.send(lookup()).await });
    }
    let (conn, ch) = setup.ns.client_channel().await;
    topology.declare_provider(&ch, &provider).await.unwrap();
    let (ids, _, messages) =
        take_requests(&ch, &topology.provider_queue(&provider), 2, &keys).await;
    for message in &messages {
        let reply_to = message.properties.reply_to().clone().unwrap();
        assert_eq!(reply_to.as_str(), topology.reply_queue("hub-e"));
    }
    let requests: Vec<(ExchangeId, ())> = ids.into_iter().map(|id| (id, ())).collect();
    let replies: Vec<Vec<u8>> = requests
        .iter()
        .map(|(id, _)| {
            serde_json::to_vec(&hub_adapter_sdk::amqp::Reply {
                exchange_id: *id,
                provider: provider.clone(),
                outcome: hub_adapter_sdk::amqp::ReplyOutcome::Payload(json!({"found": false})),
            })
            .unwrap()
        })
        .collect();
    let bodies: Vec<&[u8]> = replies.iter().map(Vec::as_slice).collect();
    let message = hub_adapter_sdk::amqp::array_message(&bodies);
    assert_eq!(message.first(), Some(&b'['), "two answers make an array");
    let reply_queue = topology.reply_queue("hub-e");
    let publish = || {
        publish_taken(
            &ch,
            ("", &reply_queue),
            &message,
            // As its provider's adapter would: logged in as the user
            // the provider answers as (the hub's own, here).
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_user_id(hub_adapter_sdk::amqp::broker_user(&setup.ns.url).unwrap()),
        )
    };
    publish().await;
    for message in &messages {
        message
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    let mut answered = Vec::new();
    while let Some(done) = sending.join_next().await {
        let (status, reply) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["body"], json!({"found": false}));
        answered.push(reply["record"]["exchange_id"].clone());
    }
    // The same message again (a redelivery): each answer is found logged
    // and dropped, and the message is acknowledged, not dead-lettered.
    publish().await;
    let ready = || ready_in(&ch, &reply_queue);
    let taken = eventually(|| async { (ready().await == 0).then_some(()) }).await;
    assert!(taken.is_some(), "the hub took the second copy");
    let mut hub = Arc::into_inner(hub).unwrap();
    for id in &answered {
        assert_eq!(entries_of(&hub, id, "response").await, 1, "{id}");
    }
    // Stopped, the hub would have put back a message it had not settled.
    hub.stop().await;
    assert_eq!(ready().await, 0, "acknowledged");
    let (letters, _) = hub_server::broker::dead_letters(&setup.ns.url, &topology, None)
        .await
        .unwrap();
    assert!(letters.is_empty(), "not dead-lettered: {letters:?}");

    let _ = conn.close(200, "done".into()).await;
    Setup { hub, ..setup }.finish().await;
}

#[tokio::test]
async fn requests_sent_together_are_answered_and_a_forged_one_dead_lettered_alone() {
    let Some(setup) = start("hub-h").await else {
        return;
    };
    let hub = Arc::new(setup.hub);
    let (mut sending, ids, requests) = waiting_requests(&setup.ns, &hub, "hub-h", 2).await;
    // A message of three: two the hub sent, one it did not, in between.
    let forged = forged_request("01930f1e-0000-7000-8000-000000000002");
    publish_requests(&setup.ns, "hub-h", &[&requests[0], &forged, &requests[1]]).await;
    // One call to the registry at a time, as configured, whatever a
    // message holds.
    let adapter = Counting::pausing(Duration::from_millis(200));
    let one_at_a_time = WorkerConfig {
        prefetch: 1,
        ..worker(&hub, &setup.ns, &setup.ns.url)
    };
    let (worker_task, stop) = spawn_worker(adapter.clone(), one_at_a_time);
    while let Some(done) = sending.join_next().await {
        let (status, reply) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    for id in &ids {
        assert_eq!(adapter.finished(*id), 1, "{id}");
    }
    assert_eq!(adapter.most_calls.load(Ordering::SeqCst), 1);
    let topology = Topology::new(setup.ns.prefix.clone());
    let letters = dead_letters_once_any(&setup.ns, &topology).await;
    assert_eq!(letters.len(), 1, "the forged request alone: {letters:?}");
    assert_eq!(
        letters[0].message_id.as_deref(),
        Some("01930f1e-0000-7000-8000-000000000002"),
        "named by its own exchange id"
    );
    assert!(letters[0].because.contains("signature"), "{letters:?}");
    let (conn, ch) = setup.ns.client_channel().await;
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    assert_eq!(ready_in(&ch, &topology.provider_queue(&provider)).await, 0);
    let _ = conn.close(200, "done".into()).await;

    let _ = stop.send(true);
    worker_task.await.unwrap();
    let hub = Arc::into_inner(hub).unwrap();
    Setup { hub, ..setup }.finish().await;
}

#[tokio::test]
async fn requests_sent_together_that_come_back_go_on_one_by_one() {
    let Some(setup) = start("hub-i").await else {
        return;
    };
    let broker_addr = broker_addr(&setup.ns);
    let hub = Arc::new(setup.hub);
    let (mut sending, ids, requests) = waiting_requests(&setup.ns, &hub, "hub-i", 3).await;
    let parts: Vec<&[u8]> = requests.iter().map(Vec::as_slice).collect();
    let poison = ids[2];
    // Two adapters in turn take the message and go down: the first while
    // handling all three requests, the second (on the message coming back)
    // while handling the third only.
    let mut dead = Vec::new();
    for adapter in [Counting::new(true), Counting::hanging_on(poison)] {
        let relay = Relay::start(broker_addr.parse().unwrap()).await;
        let through_relay = setup.ns.url.replace(&broker_addr, &relay.addr.to_string());
        let (task, _stop) = spawn_worker(adapter.clone(), worker(&hub, &setup.ns, &through_relay));
        if dead.is_empty() {
            publish_requests(&setup.ns, "hub-i", &parts).await;
            tokio::time::timeout(Duration::from_secs(10), adapter.received.notified())
                .await
                .expect("the first adapter received the message");
        } else {
            // The first two are answered by the second adapter.
            for _ in 0..2 {
                let (status, reply) = sending.join_next().await.unwrap().unwrap();
                assert_eq!(status, StatusCode::OK, "{reply}");
            }
        }
        relay.cut();
        task.abort();
        dead.push(adapter);
    }
    for id in &ids[..2] {
        assert_eq!(dead[0].finished(*id), 0, "{id}");
        assert_eq!(dead[1].finished(*id), 1, "{id}");
        let id = json!(id.to_string());
        assert_eq!(entries_of(&hub, &id, "response").await, 1, "{id}");
    }
    // What comes back now are single requests, each under its own id, the
    // third among them (an answered one whose acknowledgement was still
    // waiting for its run may come back too; the hub drops its answer).
    let topology = Topology::new(setup.ns.prefix.clone());
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    let (conn, ch) = setup.ns.client_channel().await;
    let keys = worker(&hub, &setup.ns, &setup.ns.url).hub_keys;
    let queue = topology.provider_queue(&provider);
    let mut came_back = Vec::new();
    while !came_back.contains(&poison) {
        let (back, bytes, messages) = take_requests(&ch, &queue, 1, &keys).await;
        assert_eq!(back.len(), 1, "one request per message");
        let id = back[0].to_string();
        assert_eq!(
            messages[0]
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str()),
            Some(id.as_str())
        );
        let sent = ids.iter().position(|i| *i == back[0]).unwrap();
        assert_eq!(bytes[0], requests[sent]);
        came_back.push(back[0]);
    }
    let _ = conn.close(200, "done".into()).await;

    sending.shutdown().await;
    let hub = Arc::into_inner(hub).unwrap();
    Setup { hub, ..setup }.finish().await;
}
