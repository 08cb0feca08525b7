//! What the hub does when a provider is slow, wrong or down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::ids::Member;
use hub_e2e::*;
use serde_json::json;

/// A population registry that misbehaves on purpose, by personal ID.
struct Unreliable(Member);

impl Adapter for Unreliable {
    fn provider(&self) -> &Member {
        &self.0
    }
    fn services(&self) -> Vec<ServiceSpec> {
        vec![
            ServiceSpec::query("citizen.lookup", 1),
            ServiceSpec::query("citizen.verify", 1),
        ]
    }
    fn handle<'a>(&'a self, req: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            match req.payload["personal_id"].as_str() {
                Some("001085000001") => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok(json!({"found": false}))
                }
                Some("001085000002") => Ok(json!({"found": "maybe"})),
                Some("001085000003") => {
                    Err(AdapterError::Unavailable("registry database down".into()))
                }
                _ => Ok(json!({"found": false})),
            }
        })
    }
}

async fn start() -> TestHub {
    let adapters: Vec<Arc<dyn Adapter>> =
        vec![Arc::new(Unreliable(POPULATION_REGISTRY.parse().unwrap()))];
    let options = Options {
        adapters: Some(adapters),
        ..Options::default()
    };
    TestHub::start_with(
        Arc::new(tempfile::tempdir().unwrap()),
        |c| c.query_timeout_ms = 300,
        options,
    )
    .await
}

fn lookup(id: &str) -> serde_json::Value {
    envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": id}),
    )
}

#[tokio::test]
async fn a_slow_provider_ends_in_504_and_the_answer_is_kept_for_later() {
    let hub = start().await;
    let (status, err) = hub.send(lookup("001085000001")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    assert_eq!(err["code"], "provider_timeout");
    let failure = hub.record_at(err["log_index"].as_u64().unwrap()).await;
    assert_eq!(failure["kind"], "failure");
    assert_eq!(failure["error"]["code"], "provider_timeout");

    // Nothing is lost: the answer arrives later and is fetched by exchange id.
    let id = err["exchange_id"].as_str().unwrap();
    let path = format!("/v1/exchanges/{id}");
    let (status, pending) = hub.client(ONE_STOP).get_json(&path).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    // The provider answers after 1.5 s; poll for it rather than guess.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let reply = loop {
        let (status, reply) = hub.client(ONE_STOP).get_json(&path).await.unwrap();
        if status == StatusCode::OK {
            break reply;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        assert!(
            std::time::Instant::now() < deadline,
            "the late answer never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply["body"], json!({"found": false}));
    assert_eq!(reply["record"]["kind"], "response");
}

#[tokio::test]
async fn an_invalid_answer_never_reaches_the_consumer() {
    let hub = start().await;
    let (status, err) = hub.send(lookup("001085000002")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["code"], "provider_invalid_response");
    assert!(!err["violations"].as_array().unwrap().is_empty(), "{err}");
    let failure = hub.record_at(err["log_index"].as_u64().unwrap()).await;
    assert_eq!(failure["kind"], "failure");
    assert!(
        !serde_json::to_string(&err).unwrap().contains("maybe"),
        "the invalid payload is not passed on"
    );
}

#[tokio::test]
async fn an_unavailable_provider_answers_503_and_a_retry_runs_again() {
    let hub = start().await;
    let id = hub.running().hub.new_exchange_id().to_string();
    let mut env = lookup("001085000003");
    env["id"] = json!(id);
    let (status, headers, err) = hub.send_full(env.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(err["code"], "provider_unavailable");
    assert_eq!(headers["retry-after"], "1", "when to send it again");
    let failure = hub.record_at(err["log_index"].as_u64().unwrap()).await;
    assert_eq!(failure["error"]["code"], "provider_unavailable");
    // The failed exchange is not cached: the same id is tried again.
    let (status, again) = hub.send(env).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{again}");
    let requests = hub
        .log_records()
        .await
        .into_iter()
        .filter(|r| r["exchange_id"] == id.as_str() && r["kind"] == "request")
        .count();
    assert_eq!(requests, 2);
}

/// A provider that never answers: the process dies with the call running.
struct Stuck(Member);

impl Adapter for Stuck {
    fn provider(&self) -> &Member {
        &self.0
    }
    fn services(&self) -> Vec<ServiceSpec> {
        Unreliable(self.0.clone()).services()
    }
    fn handle<'a>(&'a self, _req: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_request_the_hub_never_answered_is_delivered_again_after_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let population: Member = POPULATION_REGISTRY.parse().unwrap();
    let stuck = Options {
        adapters: Some(vec![Arc::new(Stuck(population.clone()))]),
        ..Options::default()
    };
    let mut hub = TestHub::start_with(dir.clone(), |c| c.query_timeout_ms = 300, stuck).await;
    let (status, err) = hub.send(lookup("001085000004")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    let path = format!("/v1/exchanges/{}", err["exchange_id"].as_str().unwrap());
    hub.stop().await;

    // The same data directory, a provider that answers: the queued request
    // comes back once its recovery delay has passed, and is answered.
    let healthy = Options {
        adapters: Some(vec![Arc::new(Unreliable(population))]),
        ..Options::default()
    };
    let hub = TestHub::start_with(dir, |c| c.query_timeout_ms = 300, healthy).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let reply = loop {
        let (status, reply) = hub.client(ONE_STOP).get_json(&path).await.unwrap();
        if status == StatusCode::OK {
            break reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply["body"], json!({"found": false}));
    let responses = hub
        .log_records()
        .await
        .iter()
        .filter(|r| r["exchange_id"] == reply["record"]["exchange_id"] && r["kind"] == "response")
        .count();
    assert_eq!(responses, 1);
}
