//! The load generator behind `hub-load`: drives a running hub over real
//! mTLS with a demo agency's certificate, on kept-alive HTTP/1.1 or HTTP/2
//! connections, in one of two modes:
//!
//! - **max**: every connection (or HTTP/2 stream) sends its next request as
//!   soon as the last is answered - the most the hub sustains;
//! - **rate**: requests are *scheduled* at a fixed arrival rate and each
//!   one's latency is measured from its scheduled time, not from when a
//!   connection got free, so a stalled hub shows up in the percentiles
//!   instead of hiding (no coordinated omission).
//!
//! Payloads are drawn round-robin from the synthetic registries, the same
//! ones the reference adapters serve, so no two consecutive requests are
//! alike. An event counts as delivered when each subscriber has leased it
//! from its inbox and acknowledged it (a logged receipt): the subscribers
//! drain their inboxes while the run lasts, and after it until every
//! published event reached them or [`DRAIN_TIMEOUT`] passed.
#![forbid(unsafe_code)]

pub mod direct;
pub mod report;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use hub_client::{Connection, HttpVersion, HubClient, Method, StatusCode};
use hub_core::ids::Member;
use hub_core::jws::SigningKey;
use hub_server::pki::{PkiPaths, read_signing_key};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// `citizen.lookup` by the one-stop office, answered by the population registry.
    Query,
    /// `enterprise.registered` published by the enterprise registry (signed),
    /// fanned out to its two subscribers.
    Event,
}

impl Workload {
    /// The member that sends it.
    pub fn sender(self) -> &'static str {
        match self {
            Workload::Query => "000.00.29.H29/one-stop",
            Workload::Event => "000.00.00.G09/enterprise-registry",
        }
    }

    /// The members subscribed to it in the dev registry the hub seeds
    /// (`hub_server::app`): each receives every event.
    pub fn subscribers(self) -> &'static [&'static str] {
        match self {
            Workload::Query => &[],
            Workload::Event => &["000.00.00.G08/tax", "000.00.00.G22/social-insurance"],
        }
    }

    /// The status a successful exchange gets.
    pub fn success(self) -> StatusCode {
        match self {
            Workload::Query => StatusCode::OK,
            Workload::Event => StatusCode::ACCEPTED,
        }
    }
}

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Mode {
    Max,
    Rate { per_second: f64 },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub mode: Mode,
    pub duration: Duration,
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    pub http: HttpVersion,
}

/// Request bodies, prepared before the clock starts.
pub struct Bodies {
    bodies: Vec<Vec<u8>>,
}

impl Bodies {
    /// `count` distinct exchange requests for `workload`, signed with the
    /// sender's key from `pki` when the sender has one.
    pub fn prepare(workload: Workload, pki: &PkiPaths, count: usize) -> anyhow::Result<Self> {
        let sender: Member = workload.sender().parse()?;
        let key_path = pki.agency_signing_key(&sender);
        let key: Option<SigningKey> = key_path
            .exists()
            .then(|| read_signing_key(&key_path))
            .transpose()
            .context("reading the sender's signing key")?;
        let payloads: Vec<Value> = match workload {
            Workload::Query => adapter_population::Registry::synthetic(1, count)
                .iter()
                .map(|c| json!({"personal_id": c.so_dinh_danh}))
                .collect(),
            Workload::Event => adapter_enterprise::Registry::synthetic(3, count)
                .iter()
                .map(|e| json!({"enterprise": e.to_national()}))
                .collect(),
        };
        let (service, purpose) = match workload {
            Workload::Query => ("citizen.lookup", "public_service"),
            Workload::Event => ("enterprise.registered", "registry_update"),
        };
        let bodies = payloads
            .into_iter()
            .enumerate()
            .map(|(n, payload)| {
                let envelope = json!({
                    "sender": {"agency": sender.agency, "subsystem": sender.subsystem},
                    "service": service,
                    "version": 1,
                    "purpose": purpose,
                    "case_ref": format!("LOAD-{n:08}"),
                    "payload": payload,
                });
                let mut request = json!({"envelope": envelope});
                if let Some(key) = &key {
                    request["signature"] =
                        json!(hub_client::sign_envelope(&request["envelope"], key)?);
                }
                Ok(serde_json::to_vec(&request)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!bodies.is_empty(), "no payloads");
        Ok(Self { bodies })
    }

    fn get(&self, n: u64) -> Vec<u8> {
        let i = usize::try_from(n).unwrap_or(0) % self.bodies.len();
        self.bodies[i].clone()
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    #[serde(flatten)]
    pub mode: Mode,
    pub http: &'static str,
    pub connections: usize,
    pub streams: usize,
    pub seconds: f64,
    pub ok: u64,
    pub failed: u64,
    /// The first failure seen, for the operator.
    pub first_failure: Option<String>,
    /// Successful exchanges per second; for events, over the time until
    /// the last subscriber acknowledged the last of them, so an event
    /// counts once logged *and* delivered.
    pub throughput: f64,
    /// Events only: messages the subscribers leased and acknowledged
    /// (each event once per subscriber), and in how many seconds from the
    /// start until the last of them.
    pub delivered: u64,
    pub delivery_seconds: f64,
    /// Events only: messages a subscriber had not received when the
    /// drain stopped ([`DRAIN_TIMEOUT`] after the last event was sent).
    pub undelivered: u64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
    latencies: std::sync::Mutex<Histogram<u64>>,
}

impl Tally {
    fn record(&self, outcome: Result<StatusCode, String>, expected: StatusCode, latency: Duration) {
        match outcome {
            Ok(s) if s == expected => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut h) = self.latencies.lock() {
                    h.saturating_record(micros.max(1));
                }
            }
            other => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock()
                    && first.is_none()
                {
                    *first = Some(match other {
                        Ok(s) => format!("HTTP {s}"),
                        Err(e) => e,
                    });
                }
            }
        }
    }
}

async fn post(conn: &mut Connection, body: Vec<u8>) -> Result<StatusCode, String> {
    conn.send(
        Method::POST,
        "/v1/exchanges",
        Some(("application/json", body)),
    )
    .await
    .map(|(status, _)| status)
    .map_err(|e| e.to_string())
}

/// How long subscribers go on draining their inboxes after the last event
/// was published, before what is left counts as undelivered.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections each subscriber drains its inbox on.
const DRAINERS_PER_SUBSCRIBER: usize = 4;

/// The part of a `GET /v1/inbox` answer a subscriber here needs.
#[derive(serde::Deserialize)]
struct Leased<'a> {
    #[serde(borrow)]
    messages: Vec<LeasedMessage<'a>>,
}

#[derive(serde::Deserialize)]
struct LeasedMessage<'a> {
    #[serde(borrow)]
    record: LeasedRecord<'a>,
}

#[derive(serde::Deserialize)]
struct LeasedRecord<'a> {
    exchange_id: &'a str,
}

/// The part of a `POST /v1/inbox/ack` answer counted here.
#[derive(serde::Deserialize)]
struct Acknowledged {
    receipts: Vec<serde::de::IgnoredAny>,
}

/// What the subscribers received.
struct Drained {
    delivered: AtomicU64,
    /// Messages to receive in all: unknown (`u64::MAX`) until the
    /// publishers are done.
    target: AtomicU64,
    /// When the last needed message was acknowledged.
    last: std::sync::Mutex<Option<Instant>>,
}

/// Lease and acknowledge `subscriber`'s inbox on `conn` until `drained`
/// reaches its target or `deadline` passes (set once publishing ends).
async fn drain(
    mut conn: Connection,
    drained: Arc<Drained>,
    deadline: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Result<(), String> {
    let done =
        || drained.delivered.load(Ordering::Relaxed) >= drained.target.load(Ordering::Relaxed);
    let past_deadline = || {
        deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|d| Instant::now() > d)
    };
    while !done() && !past_deadline() {
        let (status, body) = conn
            .send(Method::GET, "/v1/inbox?max=100", None)
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!(
                "inbox: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        // Only the ids are needed: read them in place, skipping the rest,
        // so that the load generator spends little of the machine it measures.
        let inbox: Leased<'_> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let ids: Vec<&str> = inbox
            .messages
            .iter()
            .map(|m| m.record.exchange_id)
            .collect();
        if ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let ack = serde_json::to_vec(&json!({ "exchange_ids": ids })).map_err(|e| e.to_string())?;
        let (status, body) = conn
            .send(
                Method::POST,
                "/v1/inbox/ack",
                Some(("application/json", ack)),
            )
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!(
                "inbox ack: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let acked: Acknowledged = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let receipts = acked.receipts.len() as u64;
        let total = drained.delivered.fetch_add(receipts, Ordering::Relaxed) + receipts;
        if total >= drained.target.load(Ordering::Relaxed)
            && let Ok(mut last) = drained.last.lock()
            && last.is_none()
        {
            *last = Some(Instant::now());
        }
    }
    Ok(())
}

/// Open the plan's connections, one handle per concurrent sender.
async fn open(client: &HubClient, plan: &Plan) -> anyhow::Result<Vec<Connection>> {
    let mut handles = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let conn = client.connect(plan.http).await?;
        for _ in 1..plan.streams.max(1) {
            if let Some(shared) = conn.share() {
                handles.push(shared);
            }
        }
        handles.push(conn);
    }
    Ok(handles)
}

/// Run `plan` against the hub `clients` point at.
pub async fn run(clients: &Clients, plan: &Plan, bodies: Arc<Bodies>) -> anyhow::Result<Report> {
    let handles = open(&clients.sender, plan).await?;
    let drained = Arc::new(Drained {
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        last: std::sync::Mutex::new(None),
    });
    let drain_deadline = Arc::new(std::sync::Mutex::new(None));
    let mut drainers = tokio::task::JoinSet::new();
    for subscriber in &clients.subscribers {
        for _ in 0..DRAINERS_PER_SUBSCRIBER {
            let conn = subscriber.connect(HttpVersion::Http1).await?;
            drainers.spawn(drain(conn, drained.clone(), drain_deadline.clone()));
        }
    }
    let tally = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_failure: std::sync::Mutex::new(None),
        latencies: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let expected = plan.workload.success();
    let started = Instant::now();
    let deadline = started + plan.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    match plan.mode {
        Mode::Max => {
            for mut conn in handles {
                let (tally, bodies, next) = (tally.clone(), bodies.clone(), next.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let body = bodies.get(next.fetch_add(1, Ordering::Relaxed));
                        let sent = Instant::now();
                        let outcome = post(&mut conn, body).await;
                        tally.record(outcome, expected, sent.elapsed());
                    }
                });
            }
        }
        Mode::Rate { per_second } => {
            let interval = Duration::from_secs_f64(1.0 / per_second.max(0.001));
            let (tx, rx) = mpsc::channel::<Instant>(1 << 20);
            let rx = Arc::new(Mutex::new(rx));
            for mut conn in handles {
                let (tally, bodies, next, rx) =
                    (tally.clone(), bodies.clone(), next.clone(), rx.clone());
                tasks.spawn(async move {
                    loop {
                        let Some(scheduled) = rx.lock().await.recv().await else {
                            return;
                        };
                        let body = bodies.get(next.fetch_add(1, Ordering::Relaxed));
                        let outcome = post(&mut conn, body).await;
                        // From the scheduled time: waiting for a free
                        // connection is latency the sender sees.
                        tally.record(outcome, expected, scheduled.elapsed());
                    }
                });
            }
            tasks.spawn(async move {
                let mut i: u32 = 0;
                loop {
                    let scheduled = started + interval * i;
                    if scheduled >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(scheduled.into()).await;
                    if tx.send(scheduled).await.is_err() {
                        return;
                    }
                    i = i.saturating_add(1);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let ok = tally.ok.load(Ordering::Relaxed);
    let target = ok * clients.subscribers.len() as u64;
    drained.target.store(target, Ordering::Relaxed);
    if let Ok(mut d) = drain_deadline.lock() {
        *d = Some(Instant::now() + DRAIN_TIMEOUT);
    }
    while let Some(drainer) = drainers.join_next().await {
        if let Err(e) = drainer? {
            tally.record(Err(e), expected, Duration::ZERO);
        }
    }
    let delivered = drained.delivered.load(Ordering::Relaxed);
    let delivery_seconds = if target == 0 {
        0.0
    } else {
        drained
            .last
            .lock()
            .ok()
            .and_then(|l| *l)
            .map_or_else(|| started.elapsed(), |l| l - started)
            .as_secs_f64()
    };
    let h = tally
        .latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let first_failure = tally.first_failure.lock().ok().and_then(|f| f.clone());
    Ok(Report {
        workload: plan.workload,
        mode: plan.mode,
        http: match plan.http {
            HttpVersion::Http1 => "http/1.1",
            HttpVersion::Http2 => "h2",
        },
        connections: plan.connections,
        streams: plan.streams,
        seconds,
        ok,
        failed: tally.failed.load(Ordering::Relaxed),
        first_failure,
        throughput: ok as f64 / seconds.max(delivery_seconds),
        delivered,
        delivery_seconds,
        undelivered: target.saturating_sub(delivered),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
    })
}

/// The hub's clients a workload needs: its sender's, and its subscribers'.
pub struct Clients {
    pub sender: HubClient,
    pub subscribers: Vec<HubClient>,
}

/// The clients of the hub at `api` for `workload`, with the dev PKI in
/// `data_dir`.
pub fn clients_for(api: &str, data_dir: &Path, workload: Workload) -> anyhow::Result<Clients> {
    let pki = PkiPaths::new(data_dir);
    let client = |member: &str| -> anyhow::Result<HubClient> {
        let member: Member = member.parse()?;
        Ok(HubClient::from_files(
            api,
            &pki.ca_cert(),
            Some((&pki.agency_cert(&member), &pki.agency_key(&member))),
        )?)
    };
    Ok(Clients {
        sender: client(workload.sender())?,
        subscribers: workload
            .subscribers()
            .iter()
            .map(|m| client(m))
            .collect::<anyhow::Result<_>>()?,
    })
}
