//! Adapters as their own processes, over RabbitMQ (AMQP 0-9-1).
//!
//! The hub publishes each request for a provider to a durable quorum queue
//! of that provider, with the hub's signed record, the request body and its
//! salt, the exchange id as message id and correlation id, and the queue
//! the answer goes to as `reply_to`; the requests one round of its outbox
//! holds for a provider travel together, as one message holding a JSON
//! array of them ([`array_message`]). [`run`] is the loop an integrator
//! needs around their handler:
//!
//! connect -> consume the provider queue -> verify the hub's signature and
//! the body commitment -> deduplicate by exchange id -> call the handler ->
//! publish the answer (confirmed) -> ack the request.
//!
//! A request is acknowledged only after its answer is confirmed by the
//! broker, so a crashed adapter's request is redelivered. Answers ready
//! while the broker is still confirming earlier ones go to their reply
//! queue together, as one message holding a JSON array of answers
//! ([`array_message`]): RabbitMQ's cost is per message, not per byte. A
//! redelivered request already answered is answered again from memory,
//! not handled twice. A request sealed by a key the hub rotated to after
//! the worker was given its keys is checked with the keys the hand-overs
//! it carries lead to ([`KEY_HANDOVERS`]). Requests that fail verification
//! are dead-lettered at once, saying why ([`Refuser`]); those whose answer cannot be sent are
//! retried with back-off until the queue's delivery limit, then
//! dead-lettered by the broker. A message of several requests that comes
//! back (an adapter went down handling it) is split: each request goes back
//! to the queue alone ([`Refuser::send_back_alone`]), so that one that keeps
//! failing is dead-lettered alone.
//!
//! The topology ([`Topology`]) is declared idempotently by the hub and by
//! every adapter, so either may start first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hub_core::envelope::Envelope;
use hub_core::handover::{self, KeyHandover};
use hub_core::ids::{ExchangeId, Member};
use hub_core::jws::Jwks;
use hub_core::log::SealVerifier;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Adapter, AdapterRequest};

/// How long connecting may take, and a publish may wait for its confirm,
/// before the connection counts as lost (a connect attempt while the
/// broker restarts can otherwise wait forever).
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping worker keeps answering the requests it had taken.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn timed_out() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the broker did not answer"),
    )))
}

/// How many times a message is delivered before it is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 5;

/// The names of the hub's exchanges and queues, under one prefix (so that
/// several hub installations, or tests, can share a broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The topic exchange requests are published to.
    pub fn exchange(&self) -> String {
        format!("{}.exchanges", self.prefix)
    }

    /// Where messages that keep failing go.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The queue that keeps dead letters for inspection and re-driving.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// A provider's request queue.
    pub fn provider_queue(&self, provider: &Member) -> String {
        format!(
            "{}.provider.{}.{}",
            self.prefix, provider.agency, provider.subsystem
        )
    }

    /// The routing key of requests for `provider`.
    pub fn routing_key(provider: &Member) -> String {
        format!("provider.{}.{}", provider.agency, provider.subsystem)
    }

    /// The queue a hub instance receives answers on. Durable and named
    /// after the instance, so that answers survive the instance's restart.
    pub fn reply_queue(&self, instance: &str) -> String {
        format!("{}.replies.{instance}", self.prefix)
    }

    /// The least a broker user needs to run `provider`'s adapter, as
    /// RabbitMQ's `configure`, `write` and `read` patterns
    /// (`rabbitmqctl set_permissions -p VHOST USER CONFIGURE WRITE READ`):
    /// declare the topology it uses, consume its queue, answer through
    /// the default exchange, dead-letter and send back requests. Nothing
    /// on the hubs' reply queues or other providers' queues; answering
    /// through the default exchange reaches any queue, which is why the
    /// hub checks who published an answer.
    pub fn adapter_permissions(&self, provider: &Member) -> [String; 3] {
        let [exchanges, dead, letters, queue] = [
            self.exchange(),
            self.dead_letter_exchange(),
            self.dead_letter_queue(),
            self.provider_queue(provider),
        ]
        .map(|name| literal(&name));
        [
            format!("^({exchanges}|{dead}|{letters}|{queue})$"),
            format!("^(amq\\.default|{exchanges}|{dead}|{letters}|{queue})$"),
            format!("^({exchanges}|{dead}|{queue})$"),
        ]
    }

    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        // By default a quorum queue drops a dead letter the dead-letter
        // queue did not take at once (at-most-once); at-least-once keeps it
        // until `hub.dead-letters` has confirmed it, and needs reject-publish.
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Declare the exchanges and the dead-letter queue (idempotent).
    pub async fn declare_common(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            self.exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            self.dead_letter_queue().into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await?;
        ch.queue_bind(
            self.dead_letter_queue().into(),
            self.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }

    /// Declare `provider`'s request queue and bind it (idempotent).
    pub async fn declare_provider(&self, ch: &Channel, provider: &Member) -> lapin::Result<()> {
        let queue = self.provider_queue(provider);
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            self.quorum_args(),
        )
        .await?;
        ch.queue_bind(
            queue.into(),
            self.exchange().into(),
            Self::routing_key(provider).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }

    /// Declare a hub instance's reply queue (idempotent).
    pub async fn declare_replies(&self, ch: &Channel, instance: &str) -> lapin::Result<()> {
        ch.queue_declare(
            self.reply_queue(instance).into(),
            QueueDeclareOptions::durable(),
            self.quorum_args(),
        )
        .await
        .map(|_| ())
    }
}

/// `name` as a regular expression that matches it alone: every character
/// but letters and digits escaped (literal in RabbitMQ's PCRE patterns).
fn literal(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What an adapter publishes back for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub exchange_id: ExchangeId,
    /// The provider answering; the hub checks it is the request's receiver.
    pub provider: Member,
    /// The answer, or why there is none.
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

/// An answer or a handler's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    Payload(Value),
    Error(String),
}

/// The body of a message holding `parts` (each a serialized request
/// message or [`Reply`]): the part itself if there is one, else a JSON
/// array of them. RabbitMQ's cost is per message, not per byte, so the hub
/// sends the requests one round of its outbox has for a provider, and an
/// adapter the answers one round has for a hub, together.
pub fn array_message(parts: &[&[u8]]) -> Vec<u8> {
    if let [one] = parts {
        return one.to_vec();
    }
    let mut body = Vec::with_capacity(parts.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(part);
    }
    body.push(b']');
    body
}

/// The parts of a message made by [`array_message`], as they were sent:
/// the message itself, or the elements of a non-empty JSON array.
pub fn message_parts(data: &[u8]) -> Result<Vec<&[u8]>, serde_json::Error> {
    let many = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !many {
        return Ok(vec![data]);
    }
    let parts: Vec<&serde_json::value::RawValue> = serde_json::from_slice(data)?;
    if parts.is_empty() {
        return Err(serde::de::Error::custom("an empty array"));
    }
    Ok(parts.into_iter().map(|p| p.get().as_bytes()).collect())
}

/// The properties of a message made by [`array_message`] whose first part
/// is exchange `first`'s: persistent JSON named by that exchange id, which
/// is also the correlation id of a message of one part (a message of
/// several is correlated by the ids in its body).
pub fn array_properties(first: &ExchangeId, parts: usize) -> BasicProperties {
    let id = first.to_string();
    let properties = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if parts == 1 {
        properties.with_correlation_id(id.into())
    } else {
        properties
    }
}

/// Whether the broker took a `mandatory` publish it confirmed:
/// acknowledged, and not returned as unroutable.
pub fn taken(confirmation: lapin::Confirmation) -> bool {
    confirmation.is_ack() && confirmation.take_message().is_none()
}

/// Wait for the broker's confirm of `publishing`, at most
/// [`BROKER_TIMEOUT`]: whether it took the message ([`taken`]).
async fn confirmed(publishing: lapin::PublisherConfirm) -> lapin::Result<bool> {
    let confirmation = tokio::time::timeout(BROKER_TIMEOUT, publishing)
        .await
        .map_err(|_| timed_out())??;
    Ok(taken(confirmation))
}

/// The answers an answer message holds: one [`Reply`], or a non-empty
/// JSON array of them.
pub fn parse_replies(data: &[u8]) -> Result<Vec<Reply>, serde_json::Error> {
    message_parts(data)?
        .into_iter()
        .map(serde_json::from_slice)
        .collect()
}

/// The request carried by a message the hub published, checked.
#[derive(Debug)]
pub struct CheckedRequest {
    pub request: AdapterRequest,
    /// The provider the hub addressed the request to.
    pub receiver: Option<Member>,
}

/// Why a message is not a request the adapter may act on.
#[derive(Debug, thiserror::Error)]
pub enum MessageRejected {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("the hub's signature or body commitment does not verify: {0}")]
    Unverified(String),
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Parse and verify a `{"record", "body", "body_salt"}` request message
/// against the hub's keys; `seals` remembers the batch signatures already
/// checked, so that the requests of one group commit cost one check.
pub fn check_request(
    data: &[u8],
    hub_keys: &Jwks,
    seals: &SealVerifier,
) -> Result<CheckedRequest, MessageRejected> {
    let message: Value =
        serde_json::from_slice(data).map_err(|e| MessageRejected::NotJson(e.to_string()))?;
    seals
        .verify_message(&message, hub_keys)
        .map_err(|e| MessageRejected::Unverified(e.to_string()))?;
    let record = &message["record"];
    let exchange_id = record["exchange_id"]
        .as_str()
        .and_then(|s| ExchangeId::parse(s).ok())
        .ok_or_else(|| MessageRejected::Malformed("the record has no exchange id".into()))?;
    let receiver = record
        .get("receiver")
        .map(|r| serde_json::from_value::<Member>(r.clone()))
        .transpose()
        .map_err(|e| MessageRejected::Malformed(format!("receiver: {e}")))?;
    let envelope: Envelope = serde_json::from_value(message["body"].clone())
        .map_err(|e| MessageRejected::Malformed(format!("body: {e}")))?;
    Ok(CheckedRequest {
        request: AdapterRequest::from_envelope(exchange_id, envelope),
        receiver,
    })
}

/// Where and how the worker connects.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// The hub's published keys (its `/.well-known/jwks.json`).
    pub hub_keys: Jwks,
    /// Messages taken at once (the channel's prefetch), and the most
    /// calls to the handler at once.
    pub prefetch: u16,
}

/// Header of a message of requests holding the hub key's hand-overs,
/// oldest first (the JSON of `/.well-known/hub-key-handovers.json`), once
/// the hub's key has been rotated: an adapter given the keys from before a
/// rotation follows them to the key that seals the requests now, trusting
/// only the keys it was given (each hand-over is signed by the key it
/// retires; docs/protocol.md, "Following the hub key's rotations").
pub const KEY_HANDOVERS: &str = "x-hub-key-handovers";

/// Of `properties`' headers, only the hub key's hand-overs
/// ([`KEY_HANDOVERS`]), if it has them: what a request keeps when it is
/// sent back alone or re-driven, so that an adapter given older keys can
/// still verify it.
pub fn key_handovers_of(properties: &BasicProperties) -> Option<FieldTable> {
    let mut headers = FieldTable::default();
    headers.insert(KEY_HANDOVERS.into(), key_handovers(properties)?.clone());
    Some(headers)
}

fn key_handovers(properties: &BasicProperties) -> Option<&AMQPValue> {
    properties.headers().as_ref()?.inner().get(KEY_HANDOVERS)
}

/// The hub's keys and the batch seals already checked with them.
struct HubKeys {
    /// The keys the adapter was given.
    pinned: Jwks,
    /// Those and the keys the hub's hand-overs lead to from them.
    current: std::sync::RwLock<Arc<Jwks>>,
    seals: SealVerifier,
}

impl HubKeys {
    fn new(pinned: Jwks) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(pinned.clone())),
            pinned,
            seals: SealVerifier::new(),
        }
    }

    fn current(&self) -> Arc<Jwks> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The keys to check `delivery`'s requests with again after `tried`
    /// failed: those the hand-overs it carries ([`KEY_HANDOVERS`]) lead to
    /// from the pinned keys, kept for the requests that follow - if they
    /// hold a key `tried` lacks (another request may have followed them
    /// since `tried` was taken).
    fn follow(&self, delivery: &Delivery, tried: &Jwks) -> Option<Arc<Jwks>> {
        let AMQPValue::LongString(text) = key_handovers(&delivery.properties)? else {
            return None;
        };
        let handovers: Vec<KeyHandover> = match serde_json::from_slice(text.as_bytes()) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "the hub key's hand-overs a request carries do not read; not followed");
                return None;
            }
        };
        let (keys, outcomes) = handover::follow(&self.pinned, &handovers);
        for (h, outcome) in handovers.iter().zip(outcomes) {
            if let Err(e) = outcome {
                warn!(retires = %h.retires, error = %e, "a hand-over of the hub's key does not hold; not followed");
            }
        }
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let added: Vec<&str> = keys
            .keys
            .iter()
            .filter(|k| current.find(&k.kid).is_none())
            .map(|k| k.kid.as_str())
            .collect();
        if !added.is_empty() {
            info!(keys = ?added, "following the hub key's hand-over");
            *current = Arc::new(keys);
        }
        let newer = current.keys.iter().any(|k| tried.find(&k.kid).is_none());
        newer.then(|| current.clone())
    }
}

/// Recently answered requests, so that a redelivery is answered again
/// without running the handler twice.
struct Answered {
    replies: HashMap<ExchangeId, Vec<u8>>,
    order: VecDeque<ExchangeId>,
}

const REMEMBERED: usize = 100_000;

impl Answered {
    fn get(&self, id: &ExchangeId) -> Option<Vec<u8>> {
        self.replies.get(id).cloned()
    }

    fn insert(&mut self, id: ExchangeId, reply: Vec<u8>) {
        if self.replies.insert(id, reply).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }
}

/// Consume `adapter`'s queue until `shutdown` turns true, reconnecting
/// (with back-off) whenever the broker goes away.
pub async fn run(adapter: Arc<dyn Adapter>, config: WorkerConfig, shutdown: watch::Receiver<bool>) {
    // A task of its own: awaited where it is called (often `main`, on a
    // thread that is not one of the runtime's workers), each delivery
    // would wake that thread first and a worker second.
    let task = tokio::spawn(consume_until_stopped(adapter, config, shutdown));
    // Dropping this future (aborting its task) stops the loop too.
    let _stop_with_caller = AbortOnDrop(task.abort_handle());
    if let Err(e) = task.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn consume_until_stopped(
    adapter: Arc<dyn Adapter>,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let answered = Arc::new(Mutex::new(Answered {
        replies: HashMap::new(),
        order: VecDeque::new(),
    }));
    let hub = Arc::new(HubKeys::new(config.hub_keys.clone()));
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        match consume(&adapter, &config, &hub, &answered, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, provider = %adapter.provider(), "broker connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection's life: returns `Ok` on shutdown, `Err` when the
/// connection fails.
async fn consume(
    adapter: &Arc<dyn Adapter>,
    config: &WorkerConfig,
    hub: &Arc<HubKeys>,
    answered: &Arc<Mutex<Answered>>,
    shutdown: &mut watch::Receiver<bool>,
) -> lapin::Result<()> {
    let provider = adapter.provider().clone();
    let uri = parse_url(&config.amqp_url).map_err(|e| {
        lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )))
    })?;
    let user = ShortString::from(uri.authority.userinfo.username.clone());
    let conn = tokio::time::timeout(
        BROKER_TIMEOUT,
        Connection::connect_uri(
            uri,
            ConnectionProperties::default()
                .with_connection_name(format!("adapter {provider}").into()),
        ),
    )
    .await
    .map_err(|_| timed_out())??;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    config.topology.declare_common(&ch).await?;
    config.topology.declare_provider(&ch, &provider).await?;
    ch.basic_qos(config.prefetch.max(1), BasicQosOptions::default())
        .await?;
    let queue = config.topology.provider_queue(&provider);
    let tag = format!("adapter {provider}");
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(%provider, "consuming requests");
    let mut handling = tokio::task::JoinSet::new();
    let (replies, outgoing) = mpsc::channel(usize::from(config.prefetch.max(1)));
    handling.spawn(publish_replies(ch.clone(), user.clone(), outgoing));
    let acks = Acks::new(ch.clone());
    handling.spawn(acks.clone().run());
    let to = Handling {
        adapter: adapter.clone(),
        replies,
        answered: answered.clone(),
        hub: hub.clone(),
        refusals: Arc::new(Refuser::new(
            ch.clone(),
            config.topology.clone(),
            queue,
            user.clone(),
        )),
        calls: Arc::new(tokio::sync::Semaphore::new(usize::from(
            config.prefetch.max(1),
        ))),
    };
    let take = {
        let acks = acks.clone();
        move |delivery: Delivery| {
            acks.settle_after(delivery.delivery_tag, handle(to.clone(), delivery))
        }
    };
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    handling.spawn(take(delivery));
                }
                Some(Err(e)) => return Err(e),
                None => return Err(connection_lost()),
            },
            Some(done) = handling.join_next() => {
                if let Ok(Err(e)) = done {
                    return Err(e);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Stopping: finish the requests already taken (answered and
    // acknowledged), so that no other instance handles them again; what is
    // left at the deadline goes back to the queue when the connection closes.
    // (The publisher ends once `take`, holding its sender, is dropped and
    // the last handler has handed over its answer.)
    let drain = acks.cancel_and_finish(&ch, &tag, &mut consumer, &mut handling, take);
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(Ok(())) => info!(%provider, "stopped with every request taken answered"),
        Ok(Err(e)) => {
            warn!(%provider, error = %e, "stopping; unanswered requests go back to the queue")
        }
        Err(_) => {
            warn!(%provider, "requests still unanswered at the deadline go back to the queue")
        }
    }
    let _ = conn.close(200, "adapter stopping".into()).await;
    Ok(())
}

/// The number of times the broker has delivered this message before.
fn earlier_deliveries(delivery: &Delivery) -> i64 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n),
            AMQPValue::LongInt(n) => Some(i64::from(n)),
            AMQPValue::LongUInt(n) => Some(i64::from(n)),
            _ => None,
        })
        .unwrap_or(0)
}

/// How long a delivery done behind one still open waits to be
/// acknowledged with it before it is acknowledged alone.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// What became of a delivery its consumer is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// To be acknowledged, by [`Acks`].
    Ack,
    /// Already settled otherwise (rejected, put back, dead-lettered).
    Settled,
}

/// Acknowledges a channel's deliveries with as few `basic.ack` frames as
/// it can. RabbitMQ logs each ack frame on a quorum queue as a command of
/// its own, about a third of what a message costs the broker
/// (docs/performance.md), and one ack with `multiple` set settles every
/// delivery up to its tag. So deliveries are registered as they arrive,
/// marked when their consumer is done, and the run of done ones from the
/// oldest open delivery is acknowledged in one frame. One done behind a
/// delivery still open waits at most 20 ms (`ACK_DELAY`), then is acknowledged
/// alone, so that a slow delivery does not hold the others' prefetch slots.
pub struct Acks {
    ch: Channel,
    open: std::sync::Mutex<OpenDeliveries>,
    wake: Notify,
    closed: AtomicBool,
}

/// A channel's deliveries not yet acknowledged, by tag, with the time each
/// was done, if it is.
#[derive(Debug, Default)]
struct OpenDeliveries(BTreeMap<u64, Option<Instant>>);

impl OpenDeliveries {
    /// The tag to acknowledge with `multiple`, those to acknowledge alone,
    /// and when to look again for deliveries waiting behind an open one.
    fn take_ready(&mut self, now: Instant) -> (Option<u64>, Vec<u64>, Option<Instant>) {
        let open = &mut self.0;
        let mut upto = None;
        while let Some((&tag, Some(_))) = open.first_key_value() {
            upto = Some(tag);
            open.pop_first();
        }
        let mut alone = Vec::new();
        let mut next: Option<Instant> = None;
        for (&tag, done) in open.iter() {
            if let Some(at) = done {
                let due = *at + ACK_DELAY;
                if due <= now {
                    alone.push(tag);
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        for tag in &alone {
            open.remove(tag);
        }
        (upto, alone, next)
    }
}

impl Acks {
    pub fn new(ch: Channel) -> Arc<Self> {
        Arc::new(Self {
            ch,
            open: std::sync::Mutex::new(OpenDeliveries::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenDeliveries> {
        // The map stays consistent whatever panicked while holding it.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Register the delivery `tag` at once, and return `handling` made to
    /// settle it as it says when done. Call it as each delivery arrives,
    /// before spawning what it returns: one `multiple` acknowledgement of a
    /// later delivery would also acknowledge every earlier tag not
    /// registered yet.
    pub fn settle_after<F>(
        self: &Arc<Self>,
        tag: u64,
        handling: F,
    ) -> impl Future<Output = lapin::Result<()>> + Send + use<F>
    where
        F: Future<Output = lapin::Result<Settle>> + Send + 'static,
    {
        self.open().0.insert(tag, None);
        let acks = self.clone();
        async move {
            let settle = handling.await?;
            acks.settle(tag, settle);
            Ok(())
        }
    }

    /// Its consumer is done with the delivery `tag`.
    fn settle(&self, tag: u64, settle: Settle) {
        {
            let open = &mut self.open().0;
            match settle {
                Settle::Ack => {
                    open.insert(tag, Some(Instant::now()));
                }
                Settle::Settled => {
                    open.remove(&tag);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Acknowledge what is done and stop once nothing is open.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Stop the consumer `tag` on the channel, hand what the broker had
    /// already sent to `take` (as the consumer's loop did), then wait for
    /// it all to be settled ([`Acks::finish`]). `take` is dropped before
    /// that wait.
    pub async fn cancel_and_finish<F>(
        &self,
        ch: &Channel,
        tag: &str,
        consumer: &mut lapin::Consumer,
        handling: &mut tokio::task::JoinSet<lapin::Result<()>>,
        mut take: impl FnMut(Delivery) -> F,
    ) -> lapin::Result<()>
    where
        F: Future<Output = lapin::Result<()>> + Send + 'static,
    {
        ch.basic_cancel(tag.into(), BasicCancelOptions::default())
            .await?;
        // Deliveries already on their way arrive before the stream ends.
        while let Some(delivery) = consumer.next().await {
            handling.spawn(take(delivery?));
        }
        drop(take);
        self.finish(handling).await
    }

    /// Wait for the tasks of `handling` - the consumer's, and this one's
    /// [`Acks::run`] - then for the acknowledgements of what they did.
    pub async fn finish(
        &self,
        handling: &mut tokio::task::JoinSet<lapin::Result<()>>,
    ) -> lapin::Result<()> {
        while handling.len() > 1 {
            if let Some(Ok(Err(e))) = handling.join_next().await {
                return Err(e);
            }
        }
        self.close();
        while let Some(done) = handling.join_next().await {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Send the acknowledgements until [`Acks::close`] and nothing open,
    /// or the first broker error.
    pub async fn run(self: Arc<Self>) -> lapin::Result<()> {
        loop {
            let (upto, alone, next) = self.open().take_ready(Instant::now());
            if let Some(tag) = upto {
                self.ch
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await?;
            }
            for tag in alone {
                self.ch.basic_ack(tag, BasicAckOptions::default()).await?;
            }
            if self.closed.load(Ordering::Acquire) && self.open().0.is_empty() {
                return Ok(());
            }
            match next {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
            // Let the consumers done at about the same time mark theirs,
            // so that one frame acknowledges them all.
            tokio::task::yield_now().await;
        }
    }
}

/// Put a message back after a pause that grows with its deliveries; past
/// the queue's delivery limit the broker dead-letters it.
pub async fn retry_later(delivery: &Delivery) -> lapin::Result<Settle> {
    let n = u32::try_from(earlier_deliveries(delivery).clamp(0, 6)).unwrap_or(6);
    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(n))).await;
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .map(|_| Settle::Settled)
}

/// What handling a request uses: one per connection, cloned per request.
#[derive(Clone)]
struct Handling {
    adapter: Arc<dyn Adapter>,
    replies: mpsc::Sender<Outgoing>,
    answered: Arc<Mutex<Answered>>,
    hub: Arc<HubKeys>,
    refusals: Arc<Refuser>,
    /// Permits for calls to the handler: `prefetch` of them, however many
    /// requests the messages taken hold.
    calls: Arc<tokio::sync::Semaphore>,
}

/// What became of one request of a message.
enum RequestOutcome {
    /// Answered, and the broker took the answer.
    Done,
    /// Never to be handled (it does not verify, or is not for this
    /// provider): to be dead-lettered, saying why.
    Refused(String),
    /// Not answered now: to be tried again later.
    Later,
}

async fn handle(to: Handling, delivery: Delivery) -> lapin::Result<Settle> {
    let parts = match message_parts(&delivery.data) {
        Ok(parts) => parts,
        Err(e) => {
            let because = MessageRejected::NotJson(e.to_string()).to_string();
            return to.refusals.refuse(&delivery, &because).await;
        }
    };
    if let [one] = parts[..] {
        return match answer(&to, &delivery, one).await? {
            RequestOutcome::Done => Ok(Settle::Ack),
            RequestOutcome::Refused(because) => to.refusals.refuse(&delivery, &because).await,
            RequestOutcome::Later => retry_later(&delivery).await,
        };
    }
    // Several requests in a message that comes back (an adapter stopped
    // while handling it, perhaps because of one of them): each goes on as
    // a message of its own, so that one that keeps failing is retried and
    // dead-lettered alone.
    if delivery.redelivered || earlier_deliveries(&delivery) > 0 {
        return to.refusals.send_back_alone(&delivery, &parts).await;
    }
    let outcomes =
        futures_util::future::join_all(parts.iter().map(|part| answer(&to, &delivery, part))).await;
    let mut alone = Vec::new();
    for (part, outcome) in parts.iter().zip(outcomes) {
        match outcome? {
            RequestOutcome::Done => {}
            RequestOutcome::Refused(because) => {
                if !to
                    .refusals
                    .dead_letter(&delivery, Some(part), &because)
                    .await?
                {
                    alone.push(*part);
                }
            }
            RequestOutcome::Later => alone.push(*part),
        }
    }
    if alone.is_empty() {
        Ok(Settle::Ack)
    } else {
        to.refusals.send_back_alone(&delivery, &alone).await
    }
}

/// Check one request message of `delivery`, have it handled (or answer it
/// again from memory) and its answer published; `Err` when the connection
/// failed.
async fn answer(to: &Handling, delivery: &Delivery, data: &[u8]) -> lapin::Result<RequestOutcome> {
    let Handling {
        adapter,
        replies,
        answered,
        hub,
        refusals: _,
        calls,
    } = to;
    let keys = hub.current();
    let mut checked = check_request(data, &keys, &hub.seals);
    // Sealed by a key the hub rotated to since this adapter was given its keys?
    if matches!(checked, Err(MessageRejected::Unverified(_)))
        && let Some(newer) = hub.follow(delivery, &keys)
    {
        checked = check_request(data, &newer, &hub.seals);
    }
    let checked = match checked {
        Ok(c) if c.receiver.as_ref() == Some(adapter.provider()) => c,
        Ok(c) => {
            return Ok(RequestOutcome::Refused(match c.receiver {
                Some(r) => format!("a request for {r}, not this provider"),
                None => "a request naming no receiver".to_owned(),
            }));
        }
        Err(e) => return Ok(RequestOutcome::Refused(e.to_string())),
    };
    let Some(reply_to) = delivery.properties.reply_to().clone() else {
        return Ok(RequestOutcome::Refused(
            "a request without reply_to".to_owned(),
        ));
    };
    let id = checked.request.exchange_id;
    let cached = answered.lock().await.get(&id);
    let reply = match cached {
        Some(reply) => {
            info!(exchange = %id, "a request answered before; answering again");
            reply
        }
        None => {
            // The semaphore is never closed.
            let _call = calls.acquire().await.map_err(|_| connection_lost())?;
            let outcome = match adapter.handle(&checked.request).await {
                Ok(payload) => ReplyOutcome::Payload(payload),
                Err(e) => ReplyOutcome::Error(e.to_string()),
            };
            let reply = Reply {
                exchange_id: id,
                provider: adapter.provider().clone(),
                outcome,
            };
            let Ok(bytes) = serde_json::to_vec(&reply) else {
                return Ok(RequestOutcome::Later);
            };
            answered.lock().await.insert(id, bytes.clone());
            bytes
        }
    };
    let (taken, confirmed) = oneshot::channel();
    let answer = Outgoing {
        reply_to,
        id,
        reply,
        taken,
    };
    if replies.send(answer).await.is_err() {
        return Err(connection_lost());
    }
    match confirmed.await {
        Ok(true) => Ok(RequestOutcome::Done),
        Ok(false) => {
            warn!(exchange = %id, "the answer was not accepted by the broker; retrying");
            Ok(RequestOutcome::Later)
        }
        // The publisher stopped: the connection failed, and the request
        // comes back once it is re-established.
        Err(_) => Err(connection_lost()),
    }
}

fn connection_lost() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// An answer on its way to the broker, and who to tell whether the broker
/// took it.
struct Outgoing {
    reply_to: ShortString,
    id: ExchangeId,
    reply: Vec<u8>,
    taken: oneshot::Sender<bool>,
}

/// Publish the answers handed over on `outgoing`, each round's answers to
/// one reply queue as one message, and wait for the broker's confirms
/// before the next round: what becomes ready meanwhile makes the next
/// round. Each message names `user`, the broker user the adapter connected
/// as, in `user_id`: RabbitMQ refuses the message if that is not true, so
/// the hub knows who answered ([`publisher_of`]). Ends when every sender is
/// gone, or with the first broker error.
async fn publish_replies(
    ch: Channel,
    user: ShortString,
    mut outgoing: mpsc::Receiver<Outgoing>,
) -> lapin::Result<()> {
    let mut round = Vec::new();
    while outgoing.recv_many(&mut round, 1024).await > 0 {
        let mut confirms = Vec::new();
        for (reply_to, answers) in by_reply_queue(std::mem::take(&mut round)) {
            let bodies: Vec<&[u8]> = answers.iter().map(|a| a.reply.as_slice()).collect();
            let properties =
                array_properties(&answers[0].id, answers.len()).with_user_id(user.clone());
            let publishing = ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &array_message(&bodies),
                    properties,
                )
                .await?;
            confirms.push((publishing, answers));
        }
        for (publishing, answers) in confirms {
            let taken = confirmed(publishing).await?;
            for answer in answers {
                let _ = answer.taken.send(taken);
            }
        }
    }
    Ok(())
}

/// `round` grouped by reply queue, each group in the order it came.
fn by_reply_queue(round: Vec<Outgoing>) -> Vec<(ShortString, Vec<Outgoing>)> {
    let mut groups: Vec<(ShortString, Vec<Outgoing>)> = Vec::new();
    for answer in round {
        match groups
            .iter_mut()
            .find(|(queue, _)| *queue == answer.reply_to)
        {
            Some((_, group)) => group.push(answer),
            None => groups.push((answer.reply_to.clone(), vec![answer])),
        }
    }
    groups
}

/// Header naming the broker user that first published a message, once
/// another user has published it again (dead-lettered or re-driven it):
/// believed only when the message's `user_id` is that of whoever reads it
/// ([`publisher_of`]).
pub const PUBLISHED_BY: &str = "x-published-by";

/// The broker user who published a message with `properties`, as far as
/// one logged in as `own` can tell. RabbitMQ refuses a message whose
/// `user_id` is not the user that published it, so `user_id` is that user;
/// a message `own` published again (a dead letter, a re-drive) names its
/// first publisher in [`PUBLISHED_BY`]. `None`: a message that names none.
pub fn publisher_of(properties: &BasicProperties, own: &str) -> Option<String> {
    let user = properties.user_id().as_ref()?.as_str();
    if user != own {
        return Some(user.to_owned());
    }
    let first = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(PUBLISHED_BY));
    Some(first.map_or_else(|| own.to_owned(), header_text))
}

/// `properties` for a message that `own` publishes again on another's
/// behalf: `headers` instead of its own, with [`PUBLISHED_BY`] naming its
/// first publisher ([`publisher_of`]), and `own` as `user_id` (which
/// RabbitMQ requires), the rest as it was.
pub fn republished(
    properties: &BasicProperties,
    own: &ShortString,
    mut headers: FieldTable,
) -> BasicProperties {
    if let Some(first) = publisher_of(properties, own.as_str()) {
        headers.insert(PUBLISHED_BY.into(), AMQPValue::LongString(first.into()));
    }
    properties
        .clone()
        .with_headers(headers)
        .with_user_id(own.clone())
}

/// A header's value as text (the first of an array; empty if it is not text).
pub fn header_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::FieldArray(a) => a.as_slice().first().map(header_text).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The broker user `url` logs in as.
pub fn broker_user(url: &str) -> Result<ShortString, String> {
    Ok(parse_url(url)?.authority.userinfo.username.into())
}

/// `url` parsed; the error never repeats it (it may hold a password).
pub fn parse_url(url: &str) -> Result<AMQPUri, String> {
    url.parse().map_err(|e: String| {
        if e.contains(url) {
            "not an AMQP URL".to_owned()
        } else {
            e
        }
    })
}

/// Header of a refused message naming the queue it was taken from.
pub const REFUSED_QUEUE: &str = "x-refused-queue";
/// Header of a refused message: why it will never be handled.
pub const REFUSED_BECAUSE: &str = "x-refused-because";
/// Headers of a refused message naming the exchange and routing key it
/// was published with: where a re-drive sends it back to.
pub const REFUSED_EXCHANGE: &str = "x-refused-exchange";
pub const REFUSED_ROUTING_KEY: &str = "x-refused-routing-key";

/// Dead-letters the messages of one queue that its consumer will never
/// handle: it publishes a copy to the dead-letter exchange, saying where
/// the message came from and why, and acknowledges the original once the
/// broker has confirmed the copy. Done here rather than by `basic.reject`,
/// whose dead-lettering runs inside the broker where a failure goes
/// unseen; if the copy is not taken, the message is rejected and the
/// broker's own (at-least-once) dead-lettering is left to move it.
pub struct Refuser {
    ch: Channel,
    topology: Topology,
    queue: String,
    /// The broker user `ch`'s connection logged in as.
    user: ShortString,
}

impl Refuser {
    /// `ch` (in confirm mode) is the channel `queue` is consumed on, on a
    /// connection logged in as broker user `user`.
    pub fn new(ch: Channel, topology: Topology, queue: String, user: ShortString) -> Self {
        Self {
            ch,
            topology,
            queue,
            user,
        }
    }

    /// Dead-letter `delivery` and acknowledge it.
    pub async fn refuse(&self, delivery: &Delivery, because: &str) -> lapin::Result<Settle> {
        if self.dead_letter(delivery, None, because).await? {
            delivery.ack(BasicAckOptions::default()).await
        } else {
            warn!(queue = %self.queue, "the dead-letter queue did not take a refused message; rejecting it");
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
        .map(|_| Settle::Settled)
    }

    /// Publish `delivery` to the dead-letter exchange with its properties,
    /// saying why - or only `request`, one of the requests it holds, named
    /// by its own exchange id; whether the broker took it.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        request: Option<&[u8]>,
        because: &str,
    ) -> lapin::Result<bool> {
        warn!(queue = %self.queue, because, "a message that will never be handled; dead-lettering it");
        // `republished` names the first publisher, if it can tell.
        let mut headers: FieldTable = delivery
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| name.as_str() != PUBLISHED_BY)
            .collect::<BTreeMap<_, _>>()
            .into();
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(REFUSED_QUEUE.into(), text(&self.queue));
        headers.insert(REFUSED_BECAUSE.into(), text(because));
        headers.insert(REFUSED_EXCHANGE.into(), text(delivery.exchange.as_str()));
        headers.insert(
            REFUSED_ROUTING_KEY.into(),
            text(delivery.routing_key.as_str()),
        );
        let mut properties = republished(&delivery.properties, &self.user, headers);
        if let Some(id) = request.and_then(request_exchange_id) {
            properties = properties
                .with_message_id(id.as_str().into())
                .with_correlation_id(id.into());
        }
        let data = request.unwrap_or(&delivery.data);
        let publishing = self
            .ch
            .basic_publish(
                self.topology.dead_letter_exchange().into(),
                delivery.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                data,
                properties,
            )
            .await?;
        confirmed(publishing).await
    }

    /// Publish each of `requests` (request messages of `delivery`) back to
    /// where `delivery` came from as a message of its own, then
    /// acknowledge `delivery`. If the broker does not take them all,
    /// `delivery` is put back whole, to come back later (the requests
    /// answered meanwhile are then answered again from memory).
    pub async fn send_back_alone(
        &self,
        delivery: &Delivery,
        requests: &[&[u8]],
    ) -> lapin::Result<Settle> {
        info!(queue = %self.queue, requests = requests.len(), "requests of one message go back to the queue one by one");
        let mut confirms = Vec::with_capacity(requests.len());
        for request in requests {
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            if let Some(reply_to) = delivery.properties.reply_to() {
                properties = properties.with_reply_to(reply_to.clone());
            }
            if let Some(id) = request_exchange_id(request) {
                properties = properties
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.into());
            }
            if let Some(headers) = key_handovers_of(&delivery.properties) {
                properties = properties.with_headers(headers);
            }
            let publishing = self
                .ch
                .basic_publish(
                    delivery.exchange.clone(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    request,
                    properties,
                )
                .await?;
            confirms.push(publishing);
        }
        let mut all_taken = true;
        for publishing in confirms {
            all_taken &= confirmed(publishing).await?;
        }
        if all_taken {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map(|_| Settle::Settled)
        } else {
            warn!(queue = %self.queue, "the broker did not take the requests sent back one by one; the message comes back whole");
            retry_later(delivery).await
        }
    }
}

/// The exchange id a request message names, read without checking it.
fn request_exchange_id(request: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        record: Record,
    }
    #[derive(Deserialize)]
    struct Record {
        exchange_id: String,
    }
    serde_json::from_slice::<Named>(request)
        .ok()
        .map(|n| n.record.exchange_id)
}

/// Why an adapter process cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

impl WorkerConfig {
    /// Read the worker's settings from the environment:
    /// `HUB_AMQP_URL` (required), `HUB_JWKS_FILE` (required: the hub's
    /// `hub-jwks.json`, or its `/.well-known/jwks.json` saved to a file),
    /// `HUB_AMQP_PREFIX` (default `hub`), `ADAPTER_PREFETCH` (default 64).
    pub fn from_env() -> Result<Self, StartError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| StartError::Missing(name));
        let amqp_url = var("HUB_AMQP_URL")?;
        let jwks_file = var("HUB_JWKS_FILE")?;
        let text = std::fs::read_to_string(&jwks_file).map_err(|e| StartError::Invalid {
            name: "HUB_JWKS_FILE",
            message: format!("{jwks_file}: {e}"),
        })?;
        let hub_keys: Jwks = serde_json::from_str(&text).map_err(|e| StartError::Invalid {
            name: "HUB_JWKS_FILE",
            message: format!("{jwks_file}: {e}"),
        })?;
        Ok(Self {
            amqp_url,
            topology: Topology::new(
                std::env::var("HUB_AMQP_PREFIX").unwrap_or_else(|_| "hub".into()),
            ),
            hub_keys,
            prefetch: Self::prefetch_from_env()?,
        })
    }

    /// `ADAPTER_PREFETCH`: messages taken, and handler calls, at once
    /// (default 64).
    pub fn prefetch_from_env() -> Result<u16, StartError> {
        match std::env::var("ADAPTER_PREFETCH") {
            Ok(v) => v.parse().map_err(|e| StartError::Invalid {
                name: "ADAPTER_PREFETCH",
                message: format!("{v:?}: {e}"),
            }),
            Err(_) => Ok(64),
        }
    }
}

/// The whole `main` of an adapter process: logs to stderr (`RUST_LOG`,
/// default `info`), settings from the environment
/// ([`WorkerConfig::from_env`]), then [`run`] until Ctrl-C or SIGTERM.
pub async fn main_with(adapter: Arc<dyn Adapter>) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match WorkerConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::stop_signal().await;
        let _ = stop.send(true);
    });
    info!(provider = %adapter.provider(), "adapter process starting");
    run(adapter, config, stopped).await;
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_does_not_parse_is_not_repeated_in_the_error() {
        let refused = broker_user("amqp:hub:s3cret@mq").unwrap_err();
        assert!(!refused.contains("s3cret"), "{refused}");
        assert_eq!(
            broker_user("amqp://hub:s3cret@mq/%2f").unwrap().as_str(),
            "hub"
        );
    }

    #[test]
    fn the_operations_guide_grants_an_adapter_what_adapter_permissions_says() {
        let guide = include_str!("../../../docs/operations.md");
        let population: Member = "000.00.00.G01/population-registry".parse().unwrap();
        for pattern in Topology::new("hub").adapter_permissions(&population) {
            assert!(guide.contains(&format!("'{pattern}'")), "{pattern}");
        }
    }

    fn open(done: &[(u64, Option<u64>)], start: Instant) -> OpenDeliveries {
        OpenDeliveries(
            done.iter()
                .map(|&(tag, at)| (tag, at.map(|ms| start + Duration::from_millis(ms))))
                .collect(),
        )
    }

    #[test]
    fn deliveries_done_in_order_are_acknowledged_by_one_frame() {
        let t = Instant::now();
        let mut open = open(&[(1, Some(0)), (2, Some(0)), (3, Some(1))], t);
        assert_eq!(open.take_ready(t), (Some(3), vec![], None));
        assert!(open.0.is_empty());
    }

    #[test]
    fn a_delivery_done_behind_an_open_one_waits_then_goes_alone() {
        let t = Instant::now();
        let mut open = open(&[(1, Some(0)), (2, None), (3, Some(5)), (4, None)], t);
        let due = t + Duration::from_millis(5) + ACK_DELAY;
        assert_eq!(open.take_ready(t), (Some(1), vec![], Some(due)));
        assert_eq!(open.take_ready(due), (None, vec![3], None));
        // What is still open is left alone; once it is done, it goes.
        assert_eq!(open.0.keys().copied().collect::<Vec<_>>(), [2, 4]);
        open.0.insert(2, Some(due));
        open.0.insert(4, Some(due));
        assert_eq!(open.take_ready(due), (Some(4), vec![], None));
    }

    #[test]
    fn a_delivery_settled_otherwise_no_longer_holds_the_others() {
        let t = Instant::now();
        let mut open = open(&[(1, None), (2, Some(0)), (3, Some(0))], t);
        assert_eq!(open.take_ready(t).0, None);
        open.0.remove(&1);
        assert_eq!(open.take_ready(t), (Some(3), vec![], None));
    }

    #[test]
    fn replies_are_strict_json() {
        let id = "01930f1e-0000-7000-8000-000000000001";
        let provider = json_member();
        let ok: Reply = serde_json::from_str(&format!(
            r#"{{"exchange_id":"{id}","provider":{provider},"payload":{{"found":false}}}}"#
        ))
        .unwrap();
        assert_eq!(
            ok.outcome,
            ReplyOutcome::Payload(serde_json::json!({"found": false}))
        );
        let failed: Reply = serde_json::from_str(&format!(
            r#"{{"exchange_id":"{id}","provider":{provider},"error":"registry down"}}"#
        ))
        .unwrap();
        assert_eq!(failed.outcome, ReplyOutcome::Error("registry down".into()));
        for bad in [
            format!(r#"{{"exchange_id":"{id}","provider":{provider},"payload":{{}},"extra":1}}"#),
            format!(r#"{{"exchange_id":"{id}","provider":{provider}}}"#),
            format!(r#"{{"exchange_id":"{id}","provider":{provider},"payload":{{}},"error":"x"}}"#),
        ] {
            assert!(serde_json::from_str::<Reply>(&bad).is_err(), "{bad}");
        }
    }

    fn reply(n: u128, outcome: ReplyOutcome) -> Reply {
        Reply {
            exchange_id: ExchangeId::parse(&format!("01930f1e-0000-7000-8000-{n:012}")).unwrap(),
            provider: serde_json::from_str(json_member()).unwrap(),
            outcome,
        }
    }

    #[test]
    fn answers_sent_together_read_back_as_sent() {
        let sent = [
            reply(1, ReplyOutcome::Payload(serde_json::json!({"found": true}))),
            reply(2, ReplyOutcome::Error("registry down".into())),
            reply(3, ReplyOutcome::Payload(serde_json::json!([1, "]"]))),
        ];
        let bytes: Vec<Vec<u8>> = sent
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap())
            .collect();
        let bodies: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        for n in 1..=sent.len() {
            let message = array_message(&bodies[..n]);
            assert_eq!(parse_replies(&message).unwrap(), sent[..n], "{n} answers");
        }
        // One answer travels as itself, as adapters not using this SDK send it.
        assert_eq!(array_message(&bodies[..1]), bytes[0]);
        assert_eq!(array_message(&bodies[..2]).first(), Some(&b'['));
        let spaced = format!(" \n[{}]", String::from_utf8(bytes[1].clone()).unwrap());
        assert_eq!(parse_replies(spaced.as_bytes()).unwrap(), sent[1..2]);
    }

    #[test]
    fn the_parts_of_a_message_are_read_back_byte_for_byte() {
        let parts: [&[u8]; 3] = [
            br#"{"record": {"exchange_id": "a"}, "body": [1, 2.50]}"#,
            br#"{"b":"]"}"#,
            b"{ }",
        ];
        for n in 1..=parts.len() {
            let message = array_message(&parts[..n]);
            assert_eq!(message_parts(&message).unwrap(), parts[..n], "{n} parts");
        }
        assert_eq!(
            request_exchange_id(parts[0]).as_deref(),
            Some("a"),
            "named without being checked"
        );
        assert_eq!(request_exchange_id(parts[1]), None);
        assert!(message_parts(b" []").is_err(), "an empty array");
    }

    #[test]
    fn a_message_of_answers_is_refused_whole_when_any_is_unreadable() {
        let good = serde_json::to_string(&reply(1, ReplyOutcome::Error("x".into()))).unwrap();
        for bad in [
            "[]".to_owned(),
            format!("[{good},{{}}]"),
            format!("[{good},{good}"),
            format!("{good},{good}"),
            "".to_owned(),
        ] {
            assert!(parse_replies(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_round_is_grouped_by_reply_queue_in_arrival_order() {
        let answer = |queue: &str, n: u128| Outgoing {
            reply_to: queue.into(),
            id: reply(n, ReplyOutcome::Error(String::new())).exchange_id,
            reply: Vec::new(),
            taken: oneshot::channel().0,
        };
        let groups = by_reply_queue(vec![
            answer("hub.replies.a", 1),
            answer("hub.replies.b", 2),
            answer("hub.replies.a", 3),
            answer("hub.replies.a", 4),
        ]);
        let seen: Vec<(String, Vec<ExchangeId>)> = groups
            .iter()
            .map(|(q, g)| (q.to_string(), g.iter().map(|a| a.id).collect()))
            .collect();
        let id = |n| reply(n, ReplyOutcome::Error(String::new())).exchange_id;
        assert_eq!(
            seen,
            [
                ("hub.replies.a".to_owned(), vec![id(1), id(3), id(4)]),
                ("hub.replies.b".to_owned(), vec![id(2)]),
            ]
        );
    }

    fn json_member() -> &'static str {
        r#"{"agency":"000.00.00.G01","subsystem":"population-registry"}"#
    }
}
