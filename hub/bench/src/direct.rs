//! The floor of the comparison: the population adapter's own logic served
//! directly over the same mutual TLS as the hub (same accept loop, same
//! certificates, same `POST /v1/exchanges` body), with nothing of the hub
//! between - no authorization, validation, signatures or log.
//!
//! A request is parsed into the typed envelope, as an adapter receiving it
//! over the wire would, and handed to the adapter's handler; the answer
//! comes back as `{"exchange_id", "response"}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hub_adapter_sdk::{Adapter, AdapterRequest};
use hub_core::envelope::{Envelope, ExchangeRequest};
use hub_core::ids::ExchangeId;
use hub_server::clock::{Clock, SystemClock};
use hub_server::identity::Identity;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

/// The routes: `POST /v1/exchanges` answered by `adapter`.
pub fn router(adapter: Arc<dyn Adapter>) -> Router {
    Router::new()
        .route("/v1/exchanges", post(exchange))
        .with_state(Arc::new(Direct {
            adapter,
            rng: SystemRandom::new(),
        }))
}

struct Direct {
    adapter: Arc<dyn Adapter>,
    rng: SystemRandom,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

async fn exchange(
    State(direct): State<Arc<Direct>>,
    identity: Option<axum::Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    if identity.is_none() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no_client_certificate",
            "a client certificate naming a member is required".into(),
        );
    }
    let envelope = serde_json::from_slice::<ExchangeRequest>(&body)
        .and_then(|r| serde_json::from_value::<Envelope>(r.envelope));
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    };
    let mut random = [0u8; 10];
    if direct.rng.fill(&mut random).is_err() {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness".into(),
        );
    }
    let id = ExchangeId::from_parts(SystemClock.unix_millis(), random);
    let request = AdapterRequest::from_envelope(id, envelope);
    match direct.adapter.handle(&request).await {
        Ok(response) => Json(json!({"exchange_id": id, "response": response})).into_response(),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, "adapter_failed", e.to_string()),
    }
}
