//! Per-agency quotas over the real mTLS listener: an agency over its rate
//! or with too many requests in flight gets 429 with `Retry-After`, before
//! anything is logged, while other agencies are served; it is served again
//! once it waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hub_adapter_sdk::{Adapter, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_client::{HttpVersion, Method};
use hub_core::ids::Member;
use hub_e2e::{
    ONE_STOP, Options, SOCIAL_INSURANCE, TAX, TestHub, citizen_lookup, eventually, registered_event,
};
use serde_json::Value;

async fn get(hub: &TestHub, who: &str, path: &str) -> (http::StatusCode, http::HeaderMap, Value) {
    let (status, headers, body) = hub
        .client(who)
        .send_full(Method::GET, path, None)
        .await
        .unwrap();
    (status, headers, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn an_agency_over_its_rate_gets_429_with_retry_after_and_others_are_served() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let hub = TestHub::start_in(dir, |c| {
        c.agency_rate_per_second = 2.0;
        c.agency_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(&hub, ONE_STOP, "/v1/whoami").await.0, 200);
    }
    let (status, headers, body) = get(&hub, ONE_STOP, "/v1/whoami").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["retry-after"], "1");

    // An exchange over the quota is refused before it is logged.
    let logged = hub.log_records().await.len();
    let (status, body) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(hub.log_records().await.len(), logged);

    // Another agency has its own quota.
    assert_eq!(get(&hub, TAX, "/v1/whoami").await.0, 200);

    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, 200, "{body}");
}

/// The population adapter, answering after a pause.
struct Slow(adapter_population::PopulationAdapter);

impl Adapter for Slow {
    fn provider(&self) -> &Member {
        self.0.provider()
    }
    fn services(&self) -> Vec<ServiceSpec> {
        self.0.services()
    }
    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            self.0.handle(request).await
        })
    }
}

/// A hub whose population adapter is [`Slow`], with `adjust` applied.
async fn hub_with_a_slow_provider(adjust: impl FnOnce(&mut hub_server::Config)) -> Arc<TestHub> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut adapters = hub_server::app::reference_adapters(20);
    adapters[0] = Arc::new(Slow(adapter_population::PopulationAdapter::new(
        adapter_population::Registry::synthetic(1, 20),
    )));
    let options = Options {
        adapters: Some(adapters),
        ..Options::default()
    };
    Arc::new(TestHub::start_with(dir, adjust, options).await)
}

/// Four lookups 50 ms apart, all pending at once with the slow provider;
/// their statuses, sorted, after checking every refusal's code.
async fn four_at_once(hub: &Arc<TestHub>, refused: u16, code: &str) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..4 {
        let hub = hub.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50 * n)).await;
            hub.send(citizen_lookup("001085012345")).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        if status == refused {
            assert_eq!(body["code"], code, "{body}");
            assert!(body.get("log_index").is_none(), "logged: {body}");
        }
        statuses.push(status.as_u16());
    }
    statuses.sort_unstable();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_capped_per_agency() {
    let hub = hub_with_a_slow_provider(|c| c.agency_max_in_flight = 2).await;
    assert_eq!(
        four_at_once(&hub, 429, "too_many_in_flight").await,
        [200, 200, 429, 429]
    );
    // Their places are free again.
    let (status, body) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, 200, "{body}");
}

async fn hub_with_short_timeouts() -> TestHub {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    TestHub::start_in(dir, |c| {
        c.idle_timeout_ms = 300;
        c.body_timeout_ms = 300;
    })
    .await
}

/// Reads until the server closes the connection (or 5 s pass).
async fn read_to_close(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_or_idles_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let hub = hub_with_short_timeouts().await;
    // Half a request line, then nothing.
    let mut tls = hub.client(ONE_STOP).tls_stream(b"http/1.1").await.unwrap();
    tls.write_all(b"POST /v1/exch").await.unwrap();
    let started = std::time::Instant::now();
    read_to_close(&mut tls).await;
    assert!(started.elapsed() < Duration::from_secs(3));

    // A kept-alive connection left idle after a request is closed too.
    let mut conn = hub
        .client(ONE_STOP)
        .connect(HttpVersion::Http1)
        .await
        .unwrap();
    let (status, _, _) = conn
        .send_full(Method::GET, "/v1/whoami", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        conn.send_full(Method::GET, "/v1/whoami", None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408() {
    use tokio::io::AsyncWriteExt;
    let hub = hub_with_short_timeouts().await;
    let logged = hub.log_records().await.len();
    let mut tls = hub.client(ONE_STOP).tls_stream(b"http/1.1").await.unwrap();
    tls.write_all(
        b"POST /v1/exchanges HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"envelope\":",
    )
    .await
    .unwrap();
    let reply = read_to_close(&mut tls).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert_eq!(hub.log_records().await.len(), logged);
    // The hub still serves.
    let (status, body) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_full_queue_turns_queries_away_with_503_before_logging() {
    let hub = hub_with_a_slow_provider(|c| c.provider_queue_max = 2).await;
    let logged = hub.log_records().await.len();
    assert_eq!(
        four_at_once(&hub, 503, "provider_queue_full").await,
        [200, 200, 503, 503]
    );
    // Two requests and their two answers; nothing of the turned-away ones.
    assert_eq!(hub.log_records().await.len(), logged + 4);
    let (status, body) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_event_to_a_full_inbox_gets_503_before_logging_and_is_taken_once_it_drains() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let hub = TestHub::start_in(dir, |c| c.inbox_max = 2).await;
    // Both subscribers (tax, social insurance) now hold two messages.
    hub.publish_registered_event().await;
    hub.publish_registered_event().await;

    // The hub counts the inboxes every second, so what is published before
    // the next count is still taken; from then on, events are turned away.
    let refusal = eventually(|| async {
        let logged = hub.log_records().await.len();
        let (status, body) = hub.send(registered_event()).await;
        if status == 202 {
            return None;
        }
        assert_eq!(hub.log_records().await.len(), logged, "nothing was logged");
        Some((status, body))
    })
    .await
    .expect("an event to full inboxes is turned away");
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert_eq!(refusal.1["code"], "inbox_full", "{}", refusal.1);
    assert!(
        refusal.1["message"].as_str().unwrap().contains(TAX),
        "names the first full subscriber: {}",
        refusal.1
    );

    let id = hub.running().hub.new_exchange_id().to_string();
    let mut event = registered_event();
    event["id"] = serde_json::json!(id);
    let (status, headers, body) = hub.send_full(event.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1", "when to publish again");
    assert!(hub.kinds_logged_for(&id).await.is_empty());

    // The tax office drains its inbox; social insurance's is still full.
    hub.drain_inbox(TAX).await;
    let refusal = eventually(|| async {
        let (status, body) = hub.send(event.clone()).await;
        assert_eq!(status, 503, "{body}");
        let message = body["message"].as_str().unwrap().to_owned();
        message.contains(SOCIAL_INSURANCE).then_some(message)
    })
    .await
    .expect("the refusal names the subscriber still full");
    assert!(refusal.contains("the most it may (2)"), "{refusal}");

    // Once both have fetched, the same event is taken, once, and delivered.
    hub.drain_inbox(SOCIAL_INSURANCE).await;
    let accepted = eventually(|| async {
        let (status, body) = hub.send(event.clone()).await;
        (status == 202).then_some(body)
    })
    .await
    .expect("published once the inboxes drained");
    assert_eq!(accepted["record"]["exchange_id"], id.as_str());
    assert_eq!(
        hub.kinds_logged_for(&id).await,
        [serde_json::json!("event")]
    );
    for who in [TAX, SOCIAL_INSURANCE] {
        assert_eq!(hub.inbox_ids(who).await, [serde_json::json!(id)], "{who}");
    }
}
