//! Delivery to adapters that run as their own processes, over RabbitMQ.
//!
//! Chosen at start-up by `amqp_url`. Requests for providers enter the
//! outbox table in the same transaction as their log entry
//! ([`crate::store::Effect::Dispatch`]); the relay publishes them with
//! publisher confirms, many in flight at once, `mandatory` set (the rows
//! of one round for one provider as one message: `by_recipient`), and
//! deletes a row only when the broker has confirmed it (an unroutable
//! return counts as a failure). Answers come back on this hub instance's durable reply
//! queue and are acknowledged only after they are durably logged.
//!
//! When the broker goes away both loops reconnect with back-off; nothing is
//! lost because unsent rows stay in the outbox and unacknowledged answers
//! stay in their queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use hub_adapter_sdk::ServiceKind;
use hub_adapter_sdk::amqp::{
    Acks, KEY_HANDOVERS, REFUSED_BECAUSE, REFUSED_EXCHANGE, REFUSED_QUEUE, REFUSED_ROUTING_KEY,
    Refuser, ReplyOutcome, Settle, Topology, array_message, array_properties, broker_user,
    header_text, key_handovers_of, parse_replies, publisher_of, republished, retry_later, taken,
};
use hub_core::body::DataKey;
use hub_core::handover::KeyHandover;
use hub_core::ids::Member;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{Mutex, Notify, watch};
use tracing::{info, instrument, warn};

use crate::metrics::AnswerRefusal;
use crate::pipeline::{Hub, RemoteAnswerError};
use crate::store::{AgencyRecord, OutboxRow, Store, StoreError};

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker did not take {0} message(s)")]
    NotTaken(usize),
    #[error("the broker did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("amqp_url: {0}")]
    Url(String),
}

/// Which broker user may answer for which provider: the user the registry
/// binds to the provider (`agency set-broker-user`, [`AgencyRecord::broker_user`]),
/// and for every other provider the user the hub itself logs in as.
/// RabbitMQ vouches for the user who published an answer ([`publisher_of`]);
/// the answer's `provider` field is only a claim.
#[derive(Debug)]
pub struct Answerers {
    own: ShortString,
    bound: std::sync::RwLock<BTreeMap<Member, String>>,
}

impl Answerers {
    /// The hub logs in as `own`; no provider is bound to another user yet.
    fn new(own: ShortString) -> Self {
        Self {
            own,
            bound: std::sync::RwLock::default(),
        }
    }

    /// Take the bindings from the registry's agencies (at start, and on
    /// every reload: a change made through another hub holds here from
    /// the next reload on).
    pub fn replace(&self, agencies: &[AgencyRecord]) {
        let bound = agencies
            .iter()
            .filter_map(|a| Some((a.member.clone(), a.broker_user.clone()?)))
            .collect();
        *self.bound.write().unwrap_or_else(PoisonError::into_inner) = bound;
    }

    /// Bind `provider` to `user` (`None`: to the hub's own user) at once,
    /// for a change made through this hub.
    pub fn set(&self, provider: &Member, user: Option<&str>) {
        let mut bound = self.bound.write().unwrap_or_else(PoisonError::into_inner);
        match user {
            Some(user) => bound.insert(provider.clone(), user.to_owned()),
            None => bound.remove(provider),
        };
    }

    /// Why an answer naming `provider` and published by `publisher` is not
    /// taken as that provider's; `None` if it is.
    fn refusal(&self, provider: &Member, publisher: Option<&str>) -> Option<String> {
        let bound = self.bound.read().unwrap_or_else(PoisonError::into_inner);
        let user = bound
            .get(provider)
            .map_or(self.own.as_str(), String::as_str);
        match publisher {
            Some(p) if p == user => None,
            Some(p) => Some(format!(
                "it names provider {provider}, whose answers come from broker user '{user}', \
                 but broker user '{p}' published it"
            )),
            None => Some(format!(
                "it names provider {provider}, whose answers come from broker user '{user}', \
                 but does not name the user who published it (user_id)"
            )),
        }
    }
}

/// How long connecting (with declaring the topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish may wait for its confirm: past it the connection is
/// treated as lost (a broker that blocks publishers, a half-open socket).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping hub keeps logging the answers it had already been
/// handed; what is left then goes back to the queue unacknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// This hub instance's connection to the broker, made on demand.
pub struct Broker {
    url: String,
    /// Who may answer for whom: the hub's own broker user and the users
    /// the registry binds to providers.
    pub answerers: Arc<Answerers>,
    pub topology: Topology,
    /// Names this instance's reply queue.
    pub instance: String,
    /// How many publishes may await their confirm at once.
    pub window: usize,
    connection: Mutex<Option<(Arc<Connection>, Channel)>>,
    up: AtomicBool,
    /// The headers every request message carries once the hub's key was
    /// rotated ([`KEY_HANDOVERS`]); made once, they do not change while the
    /// hub runs.
    key_handovers: Option<FieldTable>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("Broker")
            .field("topology", &self.topology)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Fails if `url` is not an AMQP URL.
    pub fn new(
        url: String,
        topology: Topology,
        instance: String,
        window: usize,
        key_handovers: &[KeyHandover],
    ) -> Result<Self, BrokerError> {
        let own = broker_user(&url).map_err(BrokerError::Url)?;
        Ok(Self {
            url,
            answerers: Arc::new(Answerers::new(own)),
            topology,
            instance,
            window: window.max(1),
            connection: Mutex::new(None),
            up: AtomicBool::new(false),
            key_handovers: key_handovers_header(key_handovers),
        })
    }

    /// Whether the last attempt to use the broker succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The publishing channel, connecting and declaring the topology first
    /// if there is no live connection.
    async fn channel(&self, store: &dyn Store) -> Result<(Arc<Connection>, Channel), BrokerError> {
        let mut guard = self.connection.lock().await;
        if let Some((conn, ch)) = guard.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok((conn.clone(), ch.clone()));
        }
        *guard = None;
        // A connect attempt while the broker restarts can wait forever.
        let result = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(store))
            .await
            .unwrap_or(Err(BrokerError::TimedOut(CONNECT_TIMEOUT)));
        self.up.store(result.is_ok(), Ordering::Relaxed);
        let (conn, ch) = result?;
        let conn = Arc::new(conn);
        *guard = Some((conn.clone(), ch.clone()));
        Ok((conn, ch))
    }

    async fn connect(&self, store: &dyn Store) -> Result<(Connection, Channel), BrokerError> {
        let conn = Connection::connect(
            &self.url,
            ConnectionProperties::default()
                .with_connection_name(format!("hub {}", self.instance).into()),
        )
        .await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare_common(&ch).await?;
        self.topology.declare_replies(&ch, &self.instance).await?;
        let mut providers: Vec<Member> = store
            .services()
            .await?
            .into_iter()
            .filter(|s| s.kind == ServiceKind::Query)
            .map(|s| s.provider)
            // The hub answers its own services in process.
            .filter(|p| *p != crate::access_history::hub_member())
            .collect();
        providers.sort();
        providers.dedup();
        for p in &providers {
            self.topology.declare_provider(&ch, p).await?;
        }
        info!(instance = %self.instance, providers = providers.len(), "connected to the broker; topology declared");
        Ok((conn, ch))
    }

    /// Forget the connection after a failure, so the next use reconnects;
    /// with `failed`, only if that is still the connection in use (the
    /// relay or the reply consumer may have made a new one meanwhile).
    async fn reset(&self, failed: Option<&Arc<Connection>>) {
        let mut guard = self.connection.lock().await;
        if let (Some(failed), Some((current, _))) = (failed, guard.as_ref())
            && !Arc::ptr_eq(failed, current)
        {
            return;
        }
        self.up.store(false, Ordering::Relaxed);
        if let Some((conn, _)) = guard.take() {
            let _ = conn.close(200, "reconnecting".into()).await;
        }
    }
}

/// Publish the outbox until shutdown; `wake` is notified after each commit
/// that dispatched something.
pub async fn run_relay(
    hub: Arc<Hub>,
    broker: Arc<Broker>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match relay_once(&hub, &broker).await {
            Ok(0) => {
                backoff = Duration::from_millis(50);
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ok(_) => backoff = Duration::from_millis(50),
            Err(e) => {
                warn!(error = %e, "relay: publishing the outbox failed; retrying");
                // The database failing, or the broker refusing a message,
                // says nothing against the connection.
                if matches!(e, BrokerError::Amqp(_) | BrokerError::TimedOut(_)) {
                    broker.reset(None).await;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Publish one window of the outbox; how many rows the broker confirmed.
#[instrument(skip_all)]
async fn relay_once(hub: &Hub, broker: &Broker) -> Result<usize, BrokerError> {
    let limit = u32::try_from(broker.window).unwrap_or(u32::MAX);
    let rows = hub.store.outbox(&broker.instance, limit).await?;
    if rows.is_empty() {
        // Nothing to send, but after a failure (or at start) reconnect
        // anyway: readiness reports the broker from this connection, and
        // the rows that failed may have been settled by their answers
        // meanwhile, leaving nothing that would reconnect it.
        if !broker.is_up() {
            broker.channel(hub.store.as_ref()).await?;
        }
        return Ok(0);
    }
    let (_conn, ch) = broker.channel(hub.store.as_ref()).await?;
    let mut sent = Vec::with_capacity(rows.len());
    let mut opened = Vec::with_capacity(rows.len());
    for row in &rows {
        match open(&hub.data_key, row) {
            Some(text) => opened.push((row, text)),
            None => {
                warn!(exchange = %row.exchange_id, "an outbox row does not open with the data key; dropping it");
                sent.push(row.seq);
            }
        }
    }
    let mut in_flight = Vec::new();
    for requests in by_recipient(opened) {
        let (first, _) = requests[0];
        let texts: Vec<&[u8]> = requests.iter().map(|(_, t)| t.as_bytes()).collect();
        let mut properties = array_properties(&first.exchange_id, requests.len())
            .with_reply_to(broker.topology.reply_queue(&broker.instance).into());
        if let Some(headers) = &broker.key_handovers {
            properties = properties.with_headers(headers.clone());
        }
        let confirm = ch
            .basic_publish(
                broker.topology.exchange().into(),
                Topology::routing_key(&first.recipient).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &array_message(&texts),
                properties,
            )
            .await?;
        in_flight.push((requests, confirm));
    }
    let mut failed = 0usize;
    for (requests, confirm) in in_flight {
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| BrokerError::TimedOut(CONFIRM_TIMEOUT))??;
        if taken(confirmation) {
            sent.extend(requests.iter().map(|(row, _)| row.seq));
        } else {
            // Unroutable (no queue for this provider yet) or refused: the
            // rows stay; declaring the queue lets the next round route them.
            failed += requests.len();
            let recipient = &requests[0].0.recipient;
            warn!(requests = requests.len(), %recipient, "the broker did not take a message of requests; they stay in the outbox");
            broker.topology.declare_provider(&ch, recipient).await?;
        }
    }
    hub.store.remove_outbox(&sent).await?;
    if failed > 0 {
        return Err(BrokerError::NotTaken(failed));
    }
    Ok(sent.len())
}

/// The headers that carry the hub key's hand-overs to the adapters
/// ([`KEY_HANDOVERS`]), if it was ever rotated: those given the keys from
/// before follow them instead of refusing every request.
fn key_handovers_header(handovers: &[KeyHandover]) -> Option<FieldTable> {
    if handovers.is_empty() {
        return None;
    }
    let text = serde_json::to_string(handovers).ok()?;
    let mut headers = FieldTable::default();
    headers.insert(KEY_HANDOVERS.into(), AMQPValue::LongString(text.into()));
    Some(headers)
}

/// The most requests one message carries, and about the most bytes: a
/// message stays unacknowledged until its slowest request is answered, and
/// comes back whole if its adapter goes down.
const REQUESTS_PER_MESSAGE: usize = 64;
const BYTES_PER_MESSAGE: usize = 256 * 1024;

/// `requests` grouped into messages: by recipient, in outbox order, at
/// most [`REQUESTS_PER_MESSAGE`] and about [`BYTES_PER_MESSAGE`] each.
fn by_recipient<T: AsRef<str>>(requests: Vec<(&OutboxRow, T)>) -> Vec<Vec<(&OutboxRow, T)>> {
    let mut open: Vec<(Vec<(&OutboxRow, T)>, usize)> = Vec::new();
    let mut full = Vec::new();
    for (row, text) in requests {
        let len = text.as_ref().len();
        let at = open
            .iter()
            .position(|(group, _)| group[0].0.recipient == row.recipient);
        let at = match at {
            Some(i) if open[i].1 + len <= BYTES_PER_MESSAGE => i,
            Some(i) => {
                full.push(open.swap_remove(i).0);
                open.push((Vec::new(), 0));
                open.len() - 1
            }
            None => {
                open.push((Vec::new(), 0));
                open.len() - 1
            }
        };
        let (group, bytes) = &mut open[at];
        group.push((row, text));
        *bytes += len;
        if group.len() == REQUESTS_PER_MESSAGE {
            full.push(open.swap_remove(at).0);
        }
    }
    full.extend(open.into_iter().map(|(group, _)| group));
    full
}

fn open(key: &DataKey, row: &OutboxRow) -> Option<String> {
    key.open_blob(row.exchange_id.to_string().as_bytes(), &row.sealed)
        .and_then(|b| String::from_utf8(b).ok())
}

/// Log the answers arriving on this instance's reply queue until shutdown.
pub async fn run_replies(hub: Arc<Hub>, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut used = None;
        let result = consume_replies(&hub, &broker, &mut used, &mut shutdown).await;
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = result {
            warn!(error = %e, "reply consumer: broker connection lost; reconnecting");
        }
        if used.is_some() {
            // It was consuming: a new failure, so the back-off starts over.
            backoff = Duration::from_millis(100);
            broker.reset(used.as_ref()).await;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Consume until the connection fails or shutdown; `used` is set to the
/// connection once the consumer is registered on it.
async fn consume_replies(
    hub: &Arc<Hub>,
    broker: &Broker,
    used: &mut Option<Arc<Connection>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    let (conn, _) = broker.channel(hub.store.as_ref()).await?;
    let ch = conn.create_channel().await?;
    // Confirms for the answers it dead-letters itself.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_qos(256, BasicQosOptions::default()).await?;
    let tag = format!("hub {}", broker.instance);
    let queue = broker.topology.reply_queue(&broker.instance);
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *used = Some(conn);
    let answerers = broker.answerers.clone();
    let refusals = Arc::new(Refuser::new(
        ch.clone(),
        broker.topology.clone(),
        queue,
        answerers.own.clone(),
    ));
    let mut handling = tokio::task::JoinSet::new();
    let acks = Acks::new(ch.clone());
    handling.spawn(acks.clone().run());
    let take = |delivery: Delivery| {
        let (hub, refusals, answerers) = (hub.clone(), refusals.clone(), answerers.clone());
        let tag = delivery.delivery_tag;
        acks.settle_after(tag, async move {
            take_reply(&hub, &answerers, &refusals, delivery).await
        })
    };
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    handling.spawn(take(delivery));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            Some(done) = handling.join_next() => {
                if let Ok(Err(e)) = done {
                    return Err(e.into());
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Stopping: the broker has handed over answers whose senders may be
    // waiting; log and acknowledge those rather than hand them back.
    let drain = acks.cancel_and_finish(&ch, &tag, &mut consumer, &mut handling, take);
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(Ok(())) => info!("reply consumer: stopped with every answer taken settled"),
        Ok(Err(e)) => {
            warn!(error = %e, "reply consumer: stopped; unsettled answers go back to the queue")
        }
        Err(_) => {
            warn!("reply consumer: answers still unsettled at the deadline go back to the queue")
        }
    }
    Ok(())
}

/// Log the answers a message holds (one, or an array of them, logged
/// together so that they share group commits), then have it acknowledged.
/// An answer is taken only from the broker user its provider answers as
/// ([`Answerers`]). Answers that can never be logged are dead-lettered
/// with their message; if any cannot be logged now, the whole message
/// comes back later (the answers logged meanwhile are then found settled,
/// and dropped).
async fn take_reply(
    hub: &Hub,
    answerers: &Answerers,
    refusals: &Refuser,
    delivery: Delivery,
) -> lapin::Result<Settle> {
    let replies = match parse_replies(&delivery.data) {
        Ok(r) => r,
        Err(e) => {
            let because = format!("an unreadable answer: {e}");
            hub.metrics.refused_answers(AnswerRefusal::Unreadable, 1);
            return refusals.refuse(&delivery, &because).await;
        }
    };
    let publisher = publisher_of(&delivery.properties, answerers.own.as_str());
    let mut never = Vec::new();
    let total = replies.len();
    let replies: Vec<_> = replies
        .into_iter()
        .filter(
            |reply| match answerers.refusal(&reply.provider, publisher.as_deref()) {
                Some(why) => {
                    never.push(format!(
                        "the answer for {} is not taken: {why}",
                        reply.exchange_id
                    ));
                    false
                }
                None => true,
            },
        )
        .collect();
    let wrong_user = total - replies.len();
    let outcomes = futures_util::future::join_all(replies.into_iter().map(|reply| async move {
        let answer = match reply.outcome {
            ReplyOutcome::Payload(v) => Ok(v),
            ReplyOutcome::Error(e) => Err(e),
        };
        let outcome = hub
            .complete_remote(&reply.provider, reply.exchange_id, answer)
            .await;
        (reply.exchange_id, outcome)
    }))
    .await;
    let mut later = false;
    for (id, outcome) in outcomes {
        match outcome {
            Ok(()) => {}
            Err(RemoteAnswerError::Storage(e)) => {
                warn!(error = %e, exchange = %id, "cannot log an answer now; it will come back");
                later = true;
            }
            Err(RemoteAnswerError::Busy) => later = true,
            Err(e) => never.push(format!("the answer for {id} cannot be logged: {e}")),
        }
    }
    if later {
        retry_later(&delivery).await
    } else if !never.is_empty() {
        let not_loggable = never.len() - wrong_user;
        hub.metrics
            .refused_answers(AnswerRefusal::WrongBrokerUser, wrong_user as u64);
        hub.metrics
            .refused_answers(AnswerRefusal::NotLoggable, not_loggable as u64);
        refusals.refuse(&delivery, &never.join("; ")).await
    } else {
        Ok(Settle::Ack)
    }
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// The queue it died in, why (`refused` by its consumer, or the
    /// broker's `rejected`, `delivery_limit`, ...), and where it had been
    /// published: what re-driving sends it back to.
    pub queue: String,
    pub reason: String,
    /// For a refused message, its consumer's words; empty otherwise.
    pub because: String,
    pub exchange: String,
    pub routing_key: String,
    pub bytes: usize,
}

fn dead_letter(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref().map(|h| h.inner());
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(header_text);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned());
    let bytes = delivery.data.len();
    // Refused by its consumer, which said why in headers of its own.
    if let Some(queue) = header(REFUSED_QUEUE) {
        return DeadLetter {
            message_id,
            queue,
            reason: "refused".to_owned(),
            because: header(REFUSED_BECAUSE).unwrap_or_default(),
            exchange: header(REFUSED_EXCHANGE).unwrap_or_default(),
            routing_key: header(REFUSED_ROUTING_KEY).unwrap_or_default(),
            bytes,
        };
    }
    // Dead-lettered by the broker: the first x-death entry is where the
    // message last died.
    let death = headers
        .and_then(|h| h.get("x-death").cloned())
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
            _ => None,
        });
    let field = |name: &str| match &death {
        Some(AMQPValue::FieldTable(t)) => t.inner().get(name).map(header_text).unwrap_or_default(),
        _ => String::new(),
    };
    DeadLetter {
        message_id,
        queue: field("queue"),
        reason: field("reason"),
        because: String::new(),
        exchange: field("exchange"),
        routing_key: field("routing-keys"),
        bytes,
    }
}

/// Look at (`redrive: None`) or re-publish to where they came from
/// (`Some(ids)`, every one when `ids` is empty) the dead letters. Letters
/// not re-driven stay in the queue. Returns the letters seen and how many
/// were re-driven.
pub async fn dead_letters(
    url: &str,
    topology: &Topology,
    redrive: Option<&[String]>,
) -> Result<(Vec<DeadLetter>, usize), BrokerError> {
    // Parsed here first: lapin's own error would repeat the URL.
    let own = broker_user(url).map_err(BrokerError::Url)?;
    let conn = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("hub dead-letters".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    topology.declare_common(&ch).await?;
    let mut seen = Vec::new();
    let mut redriven = 0;
    // Unacknowledged letters return to the queue when the channel closes,
    // so each is seen once here; and only the letters there when we began
    // are looked at (one re-driven and refused again comes back meanwhile).
    let mut budget: Option<u32> = None;
    while budget != Some(0) {
        let Some(got) = ch
            .basic_get(
                topology.dead_letter_queue().into(),
                lapin::options::BasicGetOptions::default(),
            )
            .await?
        else {
            break;
        };
        budget = Some(budget.map_or(got.message_count, |b| b.saturating_sub(1)));
        let delivery = got.delivery;
        let letter = dead_letter(&delivery);
        let chosen = match redrive {
            None => false,
            Some([]) => true,
            Some(ids) => letter
                .message_id
                .as_ref()
                .is_some_and(|m| ids.iter().any(|id| id == m)),
        };
        if chosen && !letter.routing_key.is_empty() {
            let confirm = ch
                .basic_publish(
                    letter.exchange.as_str().into(),
                    letter.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    // Without the dead-lettering's headers, but with the
                    // hub key's hand-overs the request came with, and
                    // naming who first published it: an answer re-driven
                    // is still taken only from its provider's user.
                    republished(
                        &delivery.properties,
                        &own,
                        key_handovers_of(&delivery.properties).unwrap_or_default(),
                    ),
                )
                .await?
                .await?;
            if taken(confirm) {
                delivery.ack(BasicAckOptions::default()).await?;
                redriven += 1;
            }
        }
        seen.push(letter);
    }
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok((seen, redriven))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hub_core::ids::ExchangeId;

    fn row(seq: i64, recipient: &str) -> OutboxRow {
        OutboxRow {
            seq,
            recipient: recipient.parse().unwrap(),
            exchange_id: ExchangeId::from_parts(1, [0; 10]),
            sealed: Vec::new(),
        }
    }

    fn seqs(groups: &[Vec<(&OutboxRow, String)>]) -> Vec<Vec<i64>> {
        groups
            .iter()
            .map(|g| g.iter().map(|(r, _)| r.seq).collect())
            .collect()
    }

    #[test]
    fn requests_go_together_by_recipient_in_outbox_order_up_to_the_limits() {
        let population = "000.00.00.G01/population-registry";
        let land = "000.00.00.G13/land-registry";
        let rows: Vec<OutboxRow> = (0..150)
            .map(|i| row(i, if i % 50 == 7 { land } else { population }))
            .collect();
        let groups = by_recipient(rows.iter().map(|r| (r, "{}".to_owned())).collect());
        let got = seqs(&groups);
        for group in &groups {
            assert!(group.len() <= REQUESTS_PER_MESSAGE);
            assert!(
                group
                    .iter()
                    .all(|(r, _)| r.recipient == group[0].0.recipient)
            );
        }
        let mut all: Vec<i64> = got.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>(), "each row once");
        let land_rows: Vec<i64> = got
            .iter()
            .zip(&groups)
            .filter(|(_, g)| g[0].0.recipient.to_string() == land)
            .flat_map(|(s, _)| s.clone())
            .collect();
        assert_eq!(land_rows, [7, 57, 107], "one message, in order");
        let population_groups: Vec<&Vec<i64>> = got
            .iter()
            .zip(&groups)
            .filter(|(_, g)| g[0].0.recipient.to_string() == population)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            population_groups
                .iter()
                .map(|g| g.len())
                .collect::<Vec<_>>(),
            [64, 64, 19]
        );
        assert!(
            population_groups.iter().flat_map(|g| g.iter()).is_sorted(),
            "in outbox order: {population_groups:?}"
        );

        // About the byte limit: two of 100 KiB fit a message, three do not;
        // one larger than the limit travels alone.
        let big = "x".repeat(100 * 1024);
        let huge = "x".repeat(BYTES_PER_MESSAGE + 1);
        let rows: Vec<OutboxRow> = (0..6).map(|i| row(i, population)).collect();
        let texts = [&big, &big, &big, &huge, &big, &big];
        let groups = by_recipient(
            rows.iter()
                .zip(texts)
                .map(|(r, t)| (r, t.clone()))
                .collect(),
        );
        assert_eq!(seqs(&groups), [vec![0, 1], vec![2], vec![3], vec![4, 5]]);
    }
}
