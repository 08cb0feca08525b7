//! The HTTP API, and the one place errors become HTTP statuses.
//!
//! Two routers: the public one (health, JWKS, schema catalog) is served on
//! both listeners; the data routes exist only on the mTLS listener, where
//! every connection carries the client certificate's [`Identity`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use hub_core::envelope::ErrorBody;
use hub_core::ids::ExchangeId;
use serde::Deserialize;
use serde_json::json;
use tracing::{error, instrument};

use crate::error::{ExchangeError, Failure};
use crate::identity::{CertName, Identity};
use crate::pipeline::{Hub, Outcome};
use crate::transparency::LogQueryError;

/// What the routes share.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub max_body_bytes: usize,
    /// How long a body may take to arrive.
    pub body_timeout: std::time::Duration,
}

/// Every error the API returns.
#[derive(Debug)]
pub enum ApiError {
    Exchange(Box<Failure>),
    Unauthenticated(String),
    PayloadTooLarge {
        limit: usize,
    },
    /// The body did not arrive in time.
    RequestTimeout,
    UnsupportedMediaType,
    BadRequest(String),
    NotFound(String),
    /// The agency is over its quota (`crate::limits`).
    Throttled(hub_core::limits::Throttled),
    /// An administrator's change was not made.
    Admin(crate::admin::AdminError),
    /// The connection's client certificate was revoked since it connected.
    CertificateRevoked,
}

impl From<LogQueryError> for ApiError {
    fn from(e: LogQueryError) -> Self {
        match e {
            LogQueryError::BadRequest(m) => Self::BadRequest(m),
            LogQueryError::NotFound(m) => Self::NotFound(m),
            LogQueryError::Storage(e) => Self::from(Failure::from(ExchangeError::from(e))),
        }
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        Self::Exchange(Box::new(f))
    }
}

fn status_of(e: &ExchangeError) -> StatusCode {
    use ExchangeError as E;
    use hub_core::decide::Refusal as R;
    match e {
        E::Refused(r) => match r {
            R::MalformedJson(_) | R::MalformedRequest(_) | R::JsonLimit { .. } => {
                StatusCode::BAD_REQUEST
            }
            R::InvalidEnvelope(_) | R::InvalidPayload { .. } | R::ReceiverMismatch { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            R::SignatureRequired(_) | R::SignatureInvalid(_) | R::SignatureUnexpected(_) => {
                StatusCode::UNAUTHORIZED
            }
            R::SenderMismatch { .. }
            | R::UnknownMember(_)
            | R::MemberSuspended(_)
            | R::NoGrant { .. }
            | R::NotProvider { .. } => StatusCode::FORBIDDEN,
            R::UnknownService { .. } => StatusCode::NOT_FOUND,
        },
        E::IdConflict(_) | E::InProgress(_) => StatusCode::CONFLICT,
        E::ProviderUnavailable(_)
        | E::ProviderQueueFull(_)
        | E::InboxFull { .. }
        | E::StorageUnavailable(_)
        | E::RegistryChanged => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        E::ProviderTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        E::ProviderInvalidResponse { .. } => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after_secs = None;
        let (status, body) = match self {
            ApiError::Exchange(failure) => {
                let Failure { error, logged } = *failure;
                let status = status_of(&error);
                // The causes of 5xx are for operators, not clients.
                let message = match &error {
                    ExchangeError::StorageUnavailable(cause) => {
                        error!(%cause, "storage unavailable");
                        "the hub is temporarily unavailable; retry with the same exchange id"
                            .to_owned()
                    }
                    ExchangeError::Internal(cause) => {
                        error!(%cause, "internal error");
                        "the hub failed to handle the request; its operators have the cause"
                            .to_owned()
                    }
                    _ => error.to_string(),
                };
                let body = ErrorBody {
                    code: error.code().to_owned(),
                    message,
                    violations: error.violations().to_vec(),
                    exchange_id: logged.map(|l| l.exchange_id),
                    log_index: logged.map(|l| l.index),
                };
                (status, body)
            }
            ApiError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, plain("unauthenticated", m)),
            ApiError::CertificateRevoked => (
                StatusCode::UNAUTHORIZED,
                plain(
                    "certificate_revoked",
                    "this connection's client certificate has been revoked".into(),
                ),
            ),
            ApiError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                plain(
                    "payload_too_large",
                    format!("the request body exceeds {limit} bytes"),
                ),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                plain(
                    "request_timeout",
                    "the request body did not arrive in time".into(),
                ),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                plain(
                    "unsupported_media_type",
                    "send Content-Type: application/json".into(),
                ),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, plain("bad_request", m)),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, plain("not_found", m)),
            ApiError::Admin(e) => {
                use crate::admin::AdminError as A;
                let status = match &e {
                    A::NotFound(_) => StatusCode::NOT_FOUND,
                    A::Invalid(_) | A::Fields(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    A::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                let message = match &e {
                    A::Storage(cause) => {
                        error!(%cause, "admin change failed");
                        "the hub is temporarily unavailable; the change was not made".to_owned()
                    }
                    other => other.to_string(),
                };
                (status, plain(e.code(), message))
            }
            ApiError::Throttled(t) => {
                use hub_core::limits::Throttled as T;
                let (code, message, retry_after_ms) = match t {
                    T::Rate { retry_after_ms } => (
                        "rate_limited",
                        "this agency is over its request rate".to_owned(),
                        retry_after_ms,
                    ),
                    T::InFlight { limit } => (
                        "too_many_in_flight",
                        format!("this agency already has {limit} requests in flight"),
                        1000,
                    ),
                };
                // Whole seconds, rounded up: never tell a client to retry at once.
                retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                (StatusCode::TOO_MANY_REQUESTS, plain(code, message))
            }
        };
        // Every 503 of the API is worth retrying (an exchange with the same
        // `envelope.id`); HTTP clients that honour `Retry-After` wait a
        // second, the period of the hub's own checks (inbox counts, reloads).
        let retry_after_secs =
            retry_after_secs.or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn plain(code: &str, message: String) -> ErrorBody {
    ErrorBody {
        code: code.to_owned(),
        message,
        violations: vec![],
        exchange_id: None,
        log_index: None,
    }
}

fn json_text(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Health, keys and schemas: no client certificate needed.
pub fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(live))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/hub-key-handovers.json", get(key_handovers))
        .route("/v1/schemas", get(schema_list))
        .route("/v1/schemas/{*id}", get(schema_get))
        .route("/v1/log/checkpoint", get(checkpoint))
        .route("/v1/log/verifier", get(verifier))
        .route("/tlog/checkpoint", get(checkpoint))
        .fallback(no_route)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

/// Everything, for the mTLS listener. A suspended member is refused every
/// route but the public ones: an exchange by the pipeline (logged), the
/// rest by [`refuse_suspended`].
pub fn api_routes(state: AppState) -> Router<AppState> {
    let members_only = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/services", get(services))
        .route("/v1/exchanges/{id}", get(get_exchange))
        .route("/v1/inbox", get(inbox))
        .route("/v1/inbox/ack", post(ack))
        .route("/v1/log/entries", get(log_entries))
        .route("/v1/log/proof/inclusion", get(inclusion_proof))
        .route("/v1/log/proof/exchange/{id}", get(exchange_proofs))
        .route("/v1/log/proof/consistency", get(consistency_proof))
        .route("/v1/log/cosignatures", post(add_cosignature))
        .route("/tlog/{*path}", get(tlog_tile))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            refuse_suspended,
        ));
    public_routes()
        .route("/v1/exchanges", post(post_exchange))
        .merge(members_only)
}

/// Refuse a suspended member's request (`403 member_suspended`, not
/// logged: only exchanges are): its inbox, its answers and the log are
/// closed to it as its exchanges are. A suspension made through this hub
/// holds from the member's next request, one made through another within
/// a second (`crate::identity::SuspendedMembers`); reading the member's
/// record per request instead cost ~5 % of events/s (docs/performance.md).
async fn refuse_suspended(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let Identity(who) = member(id)?;
    if s.hub.suspended.contains(&who) {
        return Err(Failure::from(ExchangeError::Refused(
            hub_core::decide::Refusal::MemberSuspended(who),
        ))
        .into());
    }
    Ok(next.run(request).await)
}

/// The admin listener's routes: health and keys, registry changes, and
/// the figures for Prometheus.
pub fn admin_routes() -> Router<AppState> {
    public_routes()
        .route("/admin/v1/changes", post(admin_change))
        .route("/metrics", get(metrics))
}

/// The figures of `crate::metrics`: this process's counters, and gauges
/// read now, but for the backlog, which is the hub's last count of it
/// (`crate::backlog`, about a second old). A database that does not answer
/// is reported, not an error: a scrape is how an operator learns that.
#[instrument(skip_all)]
async fn metrics(State(s): State<AppState>) -> Response {
    let hub = &s.hub;
    let (database_up, checkpoint_size, backlog) = match hub.store.ping().await {
        Ok(()) => {
            let checkpoint = hub.store.latest_checkpoint().await.map_err(|e| {
                error!(error = %e, "metrics: reading the latest checkpoint failed");
            });
            (
                true,
                checkpoint.ok().flatten().map(|c| c.size),
                hub.backlog.last(),
            )
        }
        Err(e) => {
            error!(error = %e, "metrics: database unavailable");
            (false, None, None)
        }
    };
    let (outbox, inboxes, withdrawals) = match backlog {
        Some(b) => (Some(b.outbox), Some(b.inboxes), Some(b.withdrawals)),
        None => (None, None, None),
    };
    let gauges = crate::metrics::Gauges {
        database_up,
        broker_up: hub.remote.as_ref().map(|r| r.broker.is_up()),
        log_size: hub.log.head().size,
        appended: hub.log.appended_by_kind(),
        checkpoint_size,
        outbox,
        inboxes,
        withdrawals,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics.render(&gauges),
    )
        .into_response()
}

/// Make one registry change as the administrator the certificate names;
/// the answer is the signed log entry of the change.
#[instrument(skip_all, fields(admin))]
async fn admin_change(
    State(s): State<AppState>,
    name: Option<Extension<CertName>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(Extension(CertName(admin))) = name else {
        return Err(ApiError::Unauthenticated(
            "an administrator's client certificate is required".into(),
        ));
    };
    tracing::Span::current().record("admin", admin.as_str());
    let bytes = read_json_body(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let change: crate::admin::AdminChange = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("not a registry change: {e}")))?;
    let entry = crate::admin::apply(&s.hub, &admin, change)
        .await
        .map_err(ApiError::Admin)?;
    Ok(json_text(StatusCode::OK, entry))
}

/// C2SP tlog-tiles, for existing transparency tooling.
#[instrument(skip_all, fields(path = %path))]
async fn tlog_tile(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    member(id)?;
    let request = crate::transparency::parse_tile_path(&path)
        .ok_or_else(|| ApiError::NotFound(format!("no tile /tlog/{path}")))?;
    let bytes = s.hub.tile(request).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CosignatureRequest {
    size: u64,
    cosignature: String,
}

#[instrument(skip_all)]
async fn add_cosignature(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    member(id)?;
    let raw = read_json_body(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let req: CosignatureRequest = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"size\": N, \"cosignature\": \"— ...\\n\"}}: {e}"
        ))
    })?;
    let witness = s.hub.add_cosignature(req.size, &req.cosignature).await?;
    Ok(Json(json!({"witness": witness, "size": req.size})).into_response())
}

/// Query parameters, or a JSON 400 naming what was wrong with them.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn text_plain(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn checkpoint(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(text_plain(s.hub.checkpoint().await?.note))
}

async fn verifier(State(s): State<AppState>) -> Response {
    text_plain(format!("{}\n", s.hub.note_verifier.to_vkey()))
}

#[derive(Debug, Deserialize)]
struct EntriesQuery {
    start: Option<u64>,
    limit: Option<u32>,
}

#[instrument(skip_all)]
async fn log_entries(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    member(id)?;
    let entries = s
        .hub
        .log_entries(q.start.unwrap_or(0), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

#[derive(Debug, Deserialize)]
struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

#[instrument(skip_all)]
async fn inclusion_proof(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    member(id)?;
    Ok(Json(s.hub.inclusion_proof(q.index, q.size).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

#[instrument(skip_all)]
async fn exchange_proofs(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    Path(raw_id): Path<String>,
    q: Result<Query<SizeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    member(id)?;
    let exchange_id =
        ExchangeId::parse(&raw_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let proofs = s.hub.exchange_proofs(exchange_id, q.size).await?;
    Ok(Json(json!({ "exchange_id": exchange_id, "proofs": proofs })).into_response())
}

#[derive(Debug, Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[instrument(skip_all)]
async fn consistency_proof(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    member(id)?;
    Ok(Json(s.hub.consistency_proof(q.from, q.to).await?).into_response())
}

/// Readiness: whether the database answers and, when adapters are
/// reached through a broker, whether this instance is connected to it.
async fn health(State(s): State<AppState>) -> Response {
    let database = match s.hub.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            error!(error = %e, "health check: database unavailable");
            false
        }
    };
    let broker = s.hub.remote.as_ref().map(|r| r.broker.is_up());
    let word = |up: bool| if up { "ok" } else { "unavailable" };
    let ready = database && broker.unwrap_or(true);
    let body = json!({
        "status": word(ready),
        "database": word(database),
        "broker": broker.map_or("not_configured", word),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Liveness: the process serves requests (restart it if not).
async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn jwks(State(s): State<AppState>) -> Response {
    Json(&s.hub.jwks).into_response()
}

async fn key_handovers(State(s): State<AppState>) -> Response {
    Json(&s.hub.key_handovers).into_response()
}

async fn schema_list(State(s): State<AppState>) -> Response {
    let ids: Vec<&str> = s.hub.catalog.ids().collect();
    Json(json!({"schemas": ids})).into_response()
}

async fn schema_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id.trim_end_matches(".json");
    s.hub
        .catalog
        .get(id)
        .map(|doc| Json(doc).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("no schema {id}")))
}

fn member(id: Option<Extension<Identity>>) -> Result<Identity, ApiError> {
    id.map(|Extension(i)| i).ok_or_else(|| {
        ApiError::Unauthenticated("a client certificate naming agency/subsystem is required".into())
    })
}

async fn whoami(id: Option<Extension<Identity>>) -> Result<Response, ApiError> {
    let Identity(m) = member(id)?;
    Ok(Json(json!({"agency": m.agency, "subsystem": m.subsystem})).into_response())
}

async fn services(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
) -> Result<Response, ApiError> {
    member(id)?;
    let list = s
        .hub
        .store
        .services()
        .await
        .map_err(|e| ApiError::from(Failure::from(ExchangeError::from(e))))?;
    let list: Vec<_> = list
        .iter()
        .map(|s| {
            json!({"name": s.name, "version": s.version, "kind": s.kind.as_str(), "provider": s.provider,
                   "request_schema": s.request_schema, "response_schema": s.response_schema})
        })
        .collect();
    Ok(Json(json!({"services": list})).into_response())
}

async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    within: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let read = tokio::time::timeout(within, read_at_most(body, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout)?;
    match read {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(ApiError::PayloadTooLarge { limit }),
        Err(e) => Err(ApiError::BadRequest(format!(
            "could not read the body: {e}"
        ))),
    }
}

/// How much of a body past its limit is still read, and dropped: a server
/// that stops reading makes the client's write fail before the client has
/// read the `413`, so a body somewhat too large is read to its end first
/// (within the body timeout); past this, the connection is given up.
const TOO_LARGE_READ: usize = 8 * 1024 * 1024;

/// The body if it holds at most `limit` bytes, `None` if it holds more.
async fn read_at_most(mut body: Body, limit: usize) -> Result<Option<bytes::Bytes>, axum::Error> {
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            chunks.push(data);
        } else if seen > limit.saturating_add(TOO_LARGE_READ) {
            return Ok(None);
        } else {
            chunks.clear();
        }
    }
    if seen > limit {
        return Ok(None);
    }
    Ok(Some(match chunks.len() {
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    }))
}

#[instrument(skip_all)]
async fn post_exchange(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Identity(who) = member(id)?;
    let raw = read_json_body(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let (outcome, reply) = s.hub.submit(&who, &raw).await?;
    let status = match outcome {
        Outcome::Answered => StatusCode::OK,
        Outcome::Published => StatusCode::ACCEPTED,
    };
    Ok(json_text(status, reply))
}

#[instrument(skip_all, fields(exchange = %raw_id))]
async fn get_exchange(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let Identity(who) = member(id)?;
    let exchange_id =
        ExchangeId::parse(&raw_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match s.hub.result_of(&who, exchange_id).await? {
        Some(Some(reply)) => Ok(json_text(StatusCode::OK, reply)),
        Some(None) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"exchange_id": exchange_id, "state": "pending"})),
        )
            .into_response()),
        None => Err(ApiError::NotFound(format!(
            "no exchange {exchange_id} sent by {who}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    max: Option<u32>,
}

#[instrument(skip_all)]
async fn inbox(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    q: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let Identity(who) = member(id)?;
    let text = s.hub.inbox(&who, q.max.unwrap_or(20)).await?;
    Ok(json_text(StatusCode::OK, text))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    exchange_ids: Vec<ExchangeId>,
}

#[instrument(skip_all)]
async fn ack(
    State(s): State<AppState>,
    id: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Identity(who) = member(id)?;
    let raw = read_json_body(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let req: AckRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"exchange_ids\": [...]}}: {e}")))?;
    if req.exchange_ids.len() > 100 {
        return Err(ApiError::BadRequest(
            "acknowledge at most 100 messages at once".into(),
        ));
    }
    let answer = s.hub.acknowledge(&who, &req.exchange_ids).await?;
    Ok(json_text(StatusCode::OK, answer))
}
