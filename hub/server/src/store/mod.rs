//! Storage behind one small trait, chosen once at start-up from the
//! database URL. Handlers and the pipeline never see SQL.
//!
//! The store keeps the registry (agencies, services, grants,
//! subscriptions), the exchange log, the idempotency table, and the
//! embedded queue. [`Store::append`] writes a batch of sealed entries and
//! their side effects (exchange state, queued deliveries) in ONE
//! transaction: what the hub acknowledges is durable, and nothing is
//! half-written.

use std::collections::HashSet;

use async_trait::async_trait;
use hub_adapter_sdk::ServiceKind;
use hub_core::body::{DataKey, SealedBody};
use hub_core::fields::FieldSet;
use hub_core::hash::Hash;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::Jwk;
use hub_core::log::Sealed;

pub mod postgres;
mod rows;
pub mod sqlite;

/// A storage failure. The message is for the log, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported database URL {0:?} (expected sqlite:<path> or postgres://...)")]
    UnsupportedUrl(String),
}

/// An agency subsystem known to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyRecord {
    pub member: Member,
    pub name: String,
    /// When set, every envelope from this member must carry a valid signature by it.
    pub signing_key: Option<Jwk>,
    /// Suspended by an administrator: every request is refused until resumed.
    pub suspended: bool,
    /// The RabbitMQ user whose answers are taken as this member's, when it
    /// provides query services through an adapter process; `None`: the
    /// hubs' own broker user.
    pub broker_user: Option<String>,
}

/// A service and its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub name: ServiceName,
    pub version: u32,
    pub kind: ServiceKind,
    pub provider: Member,
    pub request_schema: String,
    pub response_schema: Option<String>,
}

impl ServiceRecord {
    /// The service as the pipeline's decisions see it.
    pub fn view(&self) -> hub_core::decide::ServiceView {
        hub_core::decide::ServiceView {
            name: self.name.clone(),
            version: self.version,
            kind: self.kind,
            provider: self.provider.clone(),
            request_schema: self.request_schema.clone(),
        }
    }
}

/// The registry's facts about one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub agency: Option<AgencyRecord>,
    pub service: Option<ServiceRecord>,
    /// A grant for the consumer, service and purpose exists.
    pub granted: bool,
    /// The response fields that grant releases (`None`: all of them).
    pub fields: Option<FieldSet>,
}

/// A consumer may call a service for a purpose, and receive these fields
/// of its responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub consumer: Member,
    pub service: ServiceName,
    pub purpose: PurposeCode,
    /// `None`: the whole response.
    pub fields: Option<FieldSet>,
}

impl Grant {
    /// The column's text: a JSON array of pointers, or NULL.
    pub(crate) fn fields_column(&self) -> Option<String> {
        self.fields
            .as_ref()
            .map(|f| serde_json::to_string(f).unwrap_or_else(|_| "[]".into()))
    }
}

/// What giving `agency` the envelope-signing key `new` (or none) from
/// `now` on writes. The key it replaces is retired, not forgotten: kept
/// with `valid_until = now`, so that the requests it signed still verify
/// for an auditor while the hub accepts no new one under it.
pub fn key_replacement(
    mut agency: AgencyRecord,
    new: Option<Jwk>,
    now: time::OffsetDateTime,
) -> Vec<RegistryChange> {
    let now = hub_core::timefmt::rfc3339_millis(now);
    let new = new.map(|mut key| {
        key.valid_from.get_or_insert_with(|| now.clone());
        key
    });
    let mut writes = Vec::new();
    if let Some(mut old) = agency.signing_key.take()
        && new.as_ref().is_none_or(|k| k.kid != old.kid)
    {
        old.valid_until = Some(now);
        writes.push(RegistryChange::RetireAgencyKey {
            member: agency.member.clone(),
            key: old,
        });
    }
    agency.signing_key = new;
    writes.push(RegistryChange::UpsertAgency(agency));
    writes
}

/// A page of [`Store::subject_records`] from `rows` (each entry's record
/// and its exchange's first entry index, in log order, of at most one
/// exchange more than `limit`): the records of the `limit` exchanges that
/// begin first, and the first entry index of the last of them if there
/// were more.
pub(crate) fn page_of_exchanges(
    rows: Vec<(String, i64)>,
    limit: u32,
) -> (Vec<String>, Option<u64>) {
    let mut firsts: Vec<i64> = rows.iter().map(|(_, first)| *first).collect();
    firsts.sort_unstable();
    firsts.dedup();
    let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
    let Some(&last) = firsts.get(limit - 1).filter(|_| firsts.len() > limit) else {
        return (rows.into_iter().map(|(record, _)| record).collect(), None);
    };
    let kept = rows
        .into_iter()
        .filter(|(_, first)| *first <= last)
        .map(|(record, _)| record)
        .collect();
    (kept, Some(to_u64(last)))
}

/// A value as the JSON text a column keeps.
pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Read a grant's `fields` column.
pub(crate) fn fields_of_column(text: Option<String>) -> Result<Option<FieldSet>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("grant fields {t:?}: {e}")))
    })
    .transpose()
}

/// A member receives an event service's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub subscriber: Member,
    pub service: ServiceName,
    pub version: u32,
}

/// What appending an entry also does, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Record an accepted exchange id as pending. An id already recorded
    /// (two hubs racing on one id) keeps its first row: a batch is never
    /// failed by one sender's duplicate.
    OpenExchange {
        sender: Member,
        /// Keyed with the data key: no guessing the request from it.
        request_hash: String,
        at_millis: u64,
    },
    /// Mark the pending exchange done, its reply this entry's message
    /// (stored as a pointer to the entry, whose record and body the log
    /// already keeps). An exchange already done keeps its first reply:
    /// the one its sender was given.
    CloseExchange,
    /// Forget a pending exchange so that a retry runs again.
    AbandonExchange,
    /// Queue this entry's sealed message for `recipient`.
    Enqueue {
        recipient: Member,
        visible_at_millis: u64,
    },
    /// Remove `recipient`'s queued message of this entry's exchange (the
    /// request an answer settles), in the answer's transaction.
    Dequeue { recipient: Member },
    /// Remove `recipient`'s queued message of this entry's exchange, which
    /// must still be queued: the entry (a receipt) is written only if it
    /// is, so that a message acknowledged twice at once - through one hub
    /// or two - gets one receipt ([`Claims::acknowledging`]).
    Acknowledge { recipient: Member },
    /// Put this entry's sealed message in the outbox for `instance`'s
    /// relay to publish to `recipient`'s broker queue.
    Dispatch { recipient: Member, instance: String },
    /// Store with this entry the data subjects it touched (keyed hashes of
    /// their personal IDs, `hub_core::log::subject_of`), for
    /// [`Store::index_subjects`] to index.
    IndexSubjects { subjects: Vec<String> },
    /// Change the registry, in the transaction that logs the change (an
    /// administrator's change is an entry, and never one without the other).
    Registry(Box<RegistryChange>),
}

impl Effect {
    /// Whether effect `i` of an entry's `effects` queues the entry as its
    /// exchange's reply: the entry opened its exchange and closed it before
    /// (an event). Such an inbox row points at the exchange's reply, the
    /// entry itself, instead of holding a sealed copy.
    pub(crate) fn enqueues_reply(effects: &[Effect], i: usize) -> bool {
        let before = &effects[..i.min(effects.len())];
        before
            .iter()
            .rposition(|e| matches!(e, Effect::OpenExchange { .. }))
            .is_some_and(|open| {
                before[open..]
                    .iter()
                    .any(|e| matches!(e, Effect::CloseExchange))
            })
    }

    /// Whether an entry with `effects` needs its message sealed on its own
    /// ([`AppendItem::sealed_message`]): for the outbox, or for an inbox row
    /// that cannot point at the entry (a queued request).
    pub(crate) fn need_sealed_message(effects: &[Effect]) -> bool {
        effects.iter().enumerate().any(|(i, e)| match e {
            Effect::Dispatch { .. } => true,
            Effect::Enqueue { .. } => !Self::enqueues_reply(effects, i),
            _ => false,
        })
    }
}

/// One write to the registry (agencies, keys, grants, subscriptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    UpsertAgency(AgencyRecord),
    /// Keep a replaced signing key, with its `valid_until`; idempotent.
    RetireAgencyKey {
        member: Member,
        key: Jwk,
    },
    /// Add a grant, or replace the fields of the same (consumer, service, purpose).
    AddGrant(Grant),
    RevokeGrant(Grant),
    /// Take out of `recipient`'s inbox the events of `service` it was never
    /// handed and would not be delivered now: it holds no grant for the
    /// service any more, or no subscription to the event's version. Written
    /// as a pending [`Withdrawal`], which closes the recipient's inbox at
    /// once; the messages go after the change, in batches
    /// ([`crate::withdrawal`]), since there may be up to `inbox_max` of them
    /// and the change's transaction holds the writers' lock. A message
    /// already leased stays, so that the recipient's acknowledgement of
    /// what it received is logged.
    WithdrawUnfetchedEvents {
        recipient: Member,
        service: ServiceName,
        at_millis: u64,
    },
    AddSubscription(Subscription),
    /// Deliver no more of the service's events to the subscriber.
    RemoveSubscription(Subscription),
    /// Register a witness (or replace its key): its cosignatures count.
    AddWitness {
        name: String,
        vkey: String,
    },
    /// Refuse the client certificate with this serial (lowercase hex) from
    /// its next handshake on; idempotent.
    RevokeCertificate {
        serial: String,
        member: Member,
        at: String,
    },
}

/// An entry's body: the bytes, the salt of its commitment, the commitment,
/// and the same sealed for storage.
#[derive(Debug, Clone)]
pub struct Body {
    pub plain: Vec<u8>,
    pub salt: Vec<u8>,
    pub commitment: String,
    pub sealed: SealedBody,
}

impl Body {
    /// Put the body's commitments into the entry that logs it.
    pub fn describe(&self, draft: &mut hub_core::log::EntryDraft) {
        draft.body_hash.clone_from(&self.commitment);
        draft.sealed_body_hash = Some(self.sealed.hash());
    }
}

/// A sealed entry, its body, and its effects.
#[derive(Debug, Clone)]
pub struct AppendItem {
    pub sealed: Sealed,
    pub body: Body,
    pub effects: Vec<Effect>,
    /// [`AppendItem::message`] sealed with the data key (the exchange id as
    /// associated data), for the outbox and for inbox rows that cannot point
    /// at the entry; `None` when no effect needs it
    /// (`Effect::need_sealed_message`).
    pub sealed_message: Option<Vec<u8>>,
}

impl AppendItem {
    /// `{"record": <record>, "body": <body>, "body_salt": <salt>}` as sent to
    /// recipients and stored as a reply, built without re-serializing.
    pub fn message(&self) -> String {
        canonical_text(message_of(&self.sealed, &self.body))
    }

    /// The entry's record as logged: its canonical JSON.
    pub fn record_text(self) -> String {
        canonical_text(self.sealed.canonical)
    }
}

/// Bytes the hub wrote as canonical JSON, as text. They are UTF-8, so the
/// lossy path is never taken; `from_utf8` checks them several times faster
/// than `from_utf8_lossy` does.
fn canonical_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`AppendItem::message`]'s bytes, of an entry not yet paired with its
/// effects.
pub fn message_of(sealed: &Sealed, body: &Body) -> Vec<u8> {
    message_bytes(&sealed.canonical, &body.plain, &body.salt)
}

/// `{"record", "body", "body_salt"}` put together from bytes: the record
/// and the body are canonical JSON already, and checking them again as
/// text cost ~2 % of the hub's instructions per event.
fn message_bytes(record: &[u8], body: &[u8], salt: &[u8]) -> Vec<u8> {
    let salt = hub_core::hash::b64url(salt);
    let mut out = Vec::with_capacity(record.len() + body.len() + salt.len() + 40);
    out.extend_from_slice(b"{\"record\":");
    out.extend_from_slice(record);
    out.extend_from_slice(b",\"body\":");
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"body_salt\":\"");
    out.extend_from_slice(salt.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// A message (`{"record", "body", "body_salt"}`) as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredMessage {
    /// Sealed on its own ([`AppendItem::sealed_message`]): queued requests,
    /// and replies stored before they pointed at their entries.
    Sealed(Vec<u8>),
    /// The message of a logged entry, put together again from the entry's
    /// record and its sealed body (`None`: purged), so that an exchange's
    /// reply and an event's inbox messages do not store the entry twice.
    Entry {
        record: String,
        body: Option<SealedBody>,
    },
}

/// The one member of a record that opening its body needs.
#[derive(serde::Deserialize)]
struct Commitment {
    body_hash: String,
}

/// What a receipt names of the entry a message carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct MessageEntry {
    pub index: u64,
    pub service: Option<ServiceName>,
    pub version: Option<u32>,
}

/// An entry's record as a lease reads it: what opening the body needs and
/// what a receipt names, in one pass over the record. (Not a flattened
/// [`MessageEntry`]: serde would copy every other member aside.)
#[derive(serde::Deserialize)]
struct LeasedRecord {
    body_hash: String,
    index: u64,
    service: Option<ServiceName>,
    version: Option<u32>,
}

impl StoredMessage {
    /// The message's text, opened with the data key (exchange `id`'s).
    pub fn open(&self, key: &DataKey, id: ExchangeId) -> Result<String, StoreError> {
        match self {
            Self::Sealed(sealed) => key
                .open_blob(id.to_string().as_bytes(), sealed)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    corrupt(format!(
                        "the message of {id} does not open with the data key"
                    ))
                }),
            Self::Entry { record, body } => {
                let commitment: Commitment = serde_json::from_str(record)
                    .map_err(|e| corrupt(format!("the record of {id}'s message: {e}")))?;
                open_entry_body(record, body.as_ref(), &commitment.body_hash, key, id)
            }
        }
    }

    /// The text of a message that points at its entry ([`Self::Entry`]) and
    /// what a receipt names of that entry, the record read once; `None` for
    /// a message sealed on its own.
    pub fn open_entry(
        &self,
        key: &DataKey,
        id: ExchangeId,
    ) -> Result<Option<(String, MessageEntry)>, StoreError> {
        let Self::Entry { record, body } = self else {
            return Ok(None);
        };
        let read: LeasedRecord = serde_json::from_str(record)
            .map_err(|e| corrupt(format!("the record of {id}'s message: {e}")))?;
        let text = open_entry_body(record, body.as_ref(), &read.body_hash, key, id)?;
        let entry = MessageEntry {
            index: read.index,
            service: read.service,
            version: read.version,
        };
        Ok(Some((text, entry)))
    }

    /// The record of the message's entry, read as a `T`; `None` if it does
    /// not read as one. An entry's record is stored in the clear beside
    /// its sealed body, so only a message sealed on its own is opened.
    pub fn record_as<T: serde::de::DeserializeOwned>(
        &self,
        key: &DataKey,
        id: ExchangeId,
    ) -> Result<Option<T>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Message<T> {
            record: T,
        }
        Ok(match self {
            Self::Entry { record, .. } => serde_json::from_str(record).ok(),
            Self::Sealed(_) => serde_json::from_str::<Message<T>>(&self.open(key, id)?)
                .ok()
                .map(|m| m.record),
        })
    }

    /// From a row's columns: the sealed message, else the record and the
    /// sealed body (`key_id`, `nonce`, `ciphertext`) of the entry it
    /// points at; `None` if the row has neither.
    pub(crate) fn from_columns(
        sealed: Option<Vec<u8>>,
        record: Option<String>,
        key_id: Option<String>,
        nonce: Option<Vec<u8>>,
        ciphertext: Option<Vec<u8>>,
    ) -> Result<Option<Self>, StoreError> {
        if let Some(sealed) = sealed {
            return Ok(Some(Self::Sealed(sealed)));
        }
        let Some(record) = record else {
            return Ok(None);
        };
        let body = match (key_id, nonce, ciphertext) {
            (Some(key_id), Some(nonce), Some(ciphertext)) => Some(SealedBody {
                key_id,
                nonce: nonce
                    .try_into()
                    .map_err(|_| corrupt("a stored body's nonce is not 12 bytes"))?,
                ciphertext,
            }),
            _ => None,
        };
        Ok(Some(Self::Entry { record, body }))
    }
}

/// The text of the message of the entry `record` whose body commits to
/// `body_hash`.
fn open_entry_body(
    record: &str,
    body: Option<&SealedBody>,
    body_hash: &str,
    key: &DataKey,
    id: ExchangeId,
) -> Result<String, StoreError> {
    // Bodies a queued message or a kept reply points at are not purged
    // (`Store::purge`): missing, the store is broken.
    let body = body.ok_or_else(|| {
        corrupt(format!(
            "the body of {id}'s message was purged (or not read: `Store::deliveries`)"
        ))
    })?;
    let (salt, plain) = key.open(body, body_hash).ok_or_else(|| {
        corrupt(format!(
            "the body of {id}'s message does not open with the data key"
        ))
    })?;
    Ok(canonical_text(message_bytes(
        record.as_bytes(),
        &plain,
        &salt,
    )))
}

/// The state of an accepted exchange id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeState {
    Pending,
    /// The first reply.
    Done {
        reply: StoredMessage,
    },
}

/// An accepted exchange, for idempotent retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRow {
    pub sender: String,
    pub request_hash: String,
    pub state: ExchangeState,
}

/// One stored log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub index: u64,
    pub record: String,
    pub leaf_hash: Hash,
    /// `None` once purged.
    pub body: Option<SealedBody>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The signed note.
    pub note: String,
}

/// A checkpoint with the cosignature lines witnesses added to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignedCheckpoint {
    pub checkpoint: StoredCheckpoint,
    pub cosignatures: Vec<String>,
}

/// Pair `checkpoints` (by size) with `lines` (`(size, line)`, by size),
/// as a backend read them.
pub(crate) fn cosigned(
    checkpoints: Vec<StoredCheckpoint>,
    lines: Vec<(i64, String)>,
) -> Vec<CosignedCheckpoint> {
    let mut lines = lines.into_iter().peekable();
    checkpoints
        .into_iter()
        .map(|checkpoint| {
            let mut cosignatures = Vec::new();
            while let Some((size, _)) = lines.peek() {
                let size = to_u64(*size);
                if size > checkpoint.size {
                    break;
                }
                if let Some((_, line)) = lines.next()
                    && size == checkpoint.size
                {
                    cosignatures.push(line);
                }
            }
            CosignedCheckpoint {
                checkpoint,
                cosignatures,
            }
        })
        .collect()
}

/// A message leased from the queue, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub exchange_id: ExchangeId,
    pub message: StoredMessage,
    pub attempts: u32,
}

/// A withdrawal of events from an inbox, written by a registry change
/// ([`RegistryChange::WithdrawUnfetchedEvents`]) and not yet worked off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub id: i64,
    pub recipient: Member,
    pub service: ServiceName,
}

/// A place in an inbox, in the order a lease reads it: (`visible_at`, `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxPosition {
    pub visible_at: i64,
    pub seq: i64,
}

impl InboxPosition {
    /// Before every message.
    pub const START: Self = Self {
        visible_at: i64::MIN,
        seq: i64::MIN,
    };
}

/// What waits in the store ([`Store::backlog`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Unpublished outbox rows by hub instance.
    pub outbox: Vec<(String, u64)>,
    /// Inbox messages by recipient, leased or not.
    pub inboxes: Vec<(String, u64)>,
    /// Pending withdrawals by recipient: those inboxes hand out nothing.
    pub withdrawals: Vec<(String, u64)>,
}

/// The backlog's counts, the same SQL on both backends.
pub(crate) const OUTBOX_BY_INSTANCE: &str =
    "SELECT instance, count(*) FROM outbox GROUP BY instance ORDER BY instance";
pub(crate) const INBOX_BY_RECIPIENT: &str =
    "SELECT recipient, count(*) FROM deliveries GROUP BY recipient ORDER BY recipient";
pub(crate) const WITHDRAWALS_BY_RECIPIENT: &str =
    "SELECT recipient, count(*) FROM withdrawals GROUP BY recipient ORDER BY recipient";

/// How many bodies a purge reads at a time ([`expired_in`]).
pub(crate) const PURGE_CHUNK: u32 = 1_000;

/// One chunk of a purge, as a backend read it: of the `PURGE_CHUNK` oldest
/// bodies from some index on, their indexes in order and whether each
/// one's entry was written before the cutoff.
pub(crate) type BodyChunk = Vec<(i64, bool)>;

/// Where a purge goes after reading `chunk`: the expired bodies to delete
/// and the index to read on from, or `None` to stop. A purge deletes
/// expired bodies oldest first, a chunk at a time, and stops at the first
/// chunk without one: entries are written in time order (give or take the
/// clocks of the hubs that wrote them, which a later purge makes up for),
/// so the bodies past it are newer still. So it reads the bodies that
/// expired since the last purge, plus those kept because their exchange
/// still has messages queued, never the whole log.
pub(crate) fn expired_in(chunk: &BodyChunk) -> Option<(Vec<i64>, i64)> {
    let &(last, _) = chunk.last()?;
    let expired: Vec<i64> = chunk
        .iter()
        .filter(|(_, expired)| *expired)
        .map(|(idx, _)| *idx)
        .collect();
    (!expired.is_empty()).then_some((expired, last + 1))
}

/// Counts as read, made unsigned.
pub(crate) fn counts(rows: Vec<(String, i64)>) -> Vec<(String, u64)> {
    rows.into_iter()
        .map(|(name, n)| (name, u64::try_from(n).unwrap_or(0)))
        .collect()
}

/// A message waiting in the outbox for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub recipient: Member,
    pub exchange_id: ExchangeId,
    /// The message sealed with the data key, the exchange id as
    /// associated data (as [`AppendItem::sealed_message`]).
    pub sealed: Vec<u8>,
}

/// What the store holds where a batch lands, read under the writers' lock.
#[derive(Debug, Clone, Copy)]
pub struct AtTail<'a> {
    /// Leaf hashes of the entries other writers appended since the caller
    /// last looked.
    pub adopted: &'a [Hash],
    /// The registry version (see [`Store::registry_version`]).
    pub registry_version: u64,
    /// Those of the exchange ids the batch would open that the store
    /// already holds: opened through another hub since this one looked.
    pub opened: &'a [ExchangeId],
    /// Those of the messages the batch would acknowledge that are no
    /// longer queued: acknowledged since the hub read them.
    pub acknowledged: &'a [(Member, ExchangeId)],
    /// Those of the exchanges the batch would answer that are no longer
    /// pending: answered (or abandoned) since the hub looked.
    pub settled: &'a [ExchangeId],
}

/// What a batch takes that another writer may have taken since the hub
/// looked; the store tells, under the writers' lock, which of them are
/// gone ([`AtTail`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The exchanges its entries open ([`Effect::OpenExchange`]).
    pub opening: Vec<ExchangeId>,
    /// The queued messages its receipts acknowledge
    /// ([`Effect::Acknowledge`]), as (recipient, exchange).
    pub acknowledging: Vec<(Member, ExchangeId)>,
    /// The exchanges its answers settle ([`Effect::CloseExchange`] or
    /// [`Effect::AbandonExchange`] of an exchange opened before the
    /// batch): each must still be pending, so that a request is answered
    /// once however many answers to it race.
    pub answering: Vec<ExchangeId>,
}

/// What one entry takes that only one entry may.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A receipt: the queued message of (recipient, exchange).
    Receipt(Member, ExchangeId),
    /// An answer: the pending exchange it settles.
    Answer(ExchangeId),
}

impl Claim {
    /// The claim of an entry of exchange `id` with `effects`: the message
    /// a receipt acknowledges, or the exchange (opened before the entry)
    /// that an answer closes or abandons.
    pub fn of(id: ExchangeId, effects: &[Effect]) -> Option<Self> {
        let opens = effects
            .iter()
            .any(|e| matches!(e, Effect::OpenExchange { .. }));
        effects.iter().find_map(|e| match e {
            Effect::Acknowledge { recipient } => Some(Self::Receipt(recipient.clone(), id)),
            Effect::CloseExchange | Effect::AbandonExchange if !opens => Some(Self::Answer(id)),
            _ => None,
        })
    }
}

impl Claims {
    /// What `entries`, each an exchange id and the entry's effects, claim.
    pub fn of<'a>(entries: impl IntoIterator<Item = (ExchangeId, &'a [Effect])>) -> Self {
        let mut claims = Self::default();
        for (id, effects) in entries {
            if effects
                .iter()
                .any(|e| matches!(e, Effect::OpenExchange { .. }))
            {
                claims.opening.push(id);
            }
            match Claim::of(id, effects) {
                Some(Claim::Receipt(to, of)) => claims.acknowledging.push((to, of)),
                Some(Claim::Answer(of)) => claims.answering.push(of),
                None => {}
            }
        }
        // An exchange opened by the batch itself (an event, or a request
        // and its answer) is not pending before it.
        let opening: HashSet<ExchangeId> = claims.opening.iter().copied().collect();
        claims.answering.retain(|id| !opening.contains(id));
        claims
    }

    /// The claims of `items`.
    pub fn of_items(items: &[AppendItem]) -> Self {
        Self::of(
            items
                .iter()
                .map(|i| (i.sealed.record.statement.draft.exchange_id, &i.effects[..])),
        )
    }
}

/// Leaf hashes of rows `(idx, leaf_hash)` that must start at `from` without
/// a gap. `db` maps the backend's errors.
pub(crate) fn leaves<R: sqlx::Row>(
    from: u64,
    rows: &[R],
    db: fn(sqlx::Error) -> StoreError,
) -> Result<Vec<Hash>, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let run = hash_run(from, rows, ["idx", "leaf_hash"], db)?;
    if run.len() < rows.len() {
        return Err(corrupt(format!(
            "the log has a gap at index {}",
            from + run.len() as u64
        )));
    }
    Ok(run)
}

/// The run of block roots from block `first` in `rows` (`block`, `root`,
/// ordered by block), up to the first block missing.
pub(crate) fn block_run<R: sqlx::Row>(
    first: u64,
    rows: &[R],
    db: fn(sqlx::Error) -> StoreError,
) -> Result<Vec<Hash>, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    hash_run(first, rows, ["block", "root"], db)
}

/// The hashes of rows `[position, hash]` (ordered by position) from
/// position `first` on, up to the first position missing.
fn hash_run<R: sqlx::Row>(
    first: u64,
    rows: &[R],
    [position, hash]: [&str; 2],
    db: fn(sqlx::Error) -> StoreError,
) -> Result<Vec<Hash>, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let mut out = Vec::with_capacity(rows.len());
    for (expected, r) in (first..).zip(rows) {
        if to_u64(r.try_get(position).map_err(db)?) != expected {
            break;
        }
        let bytes: Vec<u8> = r.try_get(hash).map_err(db)?;
        out.push(
            bytes
                .try_into()
                .map_err(|_| corrupt(format!("a {hash} is not 32 bytes")))?,
        );
    }
    Ok(out)
}

/// How many block roots one statement keeps at most.
pub(crate) const BLOCK_ROOTS_PER_STATEMENT: usize = 1_000;

/// Parse a backend's tail read and let `seal` place the batch there;
/// returns the adopted leaf hashes, what to write and where. The rows are
/// `(idx, leaf_hash)` of the entries from `known` on, in order, then one
/// with the registry `version`, one per id already `opened`, one per
/// message of `claims` still queued (`queued_to`, `queued_id`) and one per
/// exchange it answers that is still `pending`, the other columns NULL.
/// `db` maps the backend's errors.
pub(crate) fn seal_at_tail<R>(
    known: u64,
    rows: &[R],
    claims: &Claims,
    db: fn(sqlx::Error) -> StoreError,
    seal: SealAfter<'_>,
) -> Result<(Vec<Hash>, Vec<AppendItem>, Presumed), StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let entries = rows
        .iter()
        .take_while(|r| matches!(r.try_get::<Option<i64>, _>("idx"), Ok(Some(_))))
        .count();
    let (tail, rest) = rows.split_at(entries);
    let adopted = leaves(known, tail, db)?;
    let mut version = None;
    let mut opened = Vec::new();
    let mut queued = HashSet::new();
    let mut pending = HashSet::new();
    for r in rest {
        let v: Option<i64> = r.try_get("version").map_err(db)?;
        let id: Option<String> = r.try_get("opened").map_err(db)?;
        let to: Option<String> = r.try_get("queued_to").map_err(db)?;
        let of: Option<String> = r.try_get("queued_id").map_err(db)?;
        let open: Option<String> = r.try_get("pending").map_err(db)?;
        match (v, id, to, of, open) {
            (Some(v), ..) => version = Some(to_u64(v)),
            (None, Some(id), ..) => opened.push(ExchangeId::parse(&id).map_err(corrupt)?),
            (None, None, Some(to), Some(of), _) => {
                queued.insert((to, of));
            }
            (None, None, None, None, Some(open)) => {
                pending.insert(open);
            }
            _ => return Err(corrupt("an unexpected row at the log's tail")),
        }
    }
    let settled: Vec<ExchangeId> = claims
        .answering
        .iter()
        .filter(|id| !pending.contains(&id.to_string()))
        .copied()
        .collect();
    let acknowledged: Vec<(Member, ExchangeId)> = claims
        .acknowledging
        .iter()
        .filter(|(to, of)| !queued.contains(&(to.to_string(), of.to_string())))
        .cloned()
        .collect();
    let registry_version = version.ok_or_else(|| corrupt("the registry version is missing"))?;
    let written = seal(AtTail {
        adopted: &adopted,
        registry_version,
        opened: &opened,
        acknowledged: &acknowledged,
        settled: &settled,
    });
    let at = Presumed {
        size: known + adopted.len() as u64,
        registry_version,
    };
    Ok((adopted, written, at))
}

/// Places a batch at the tail the store read, sealing each entry.
pub type SealAfter<'a> = Box<dyn FnOnce(AtTail<'_>) -> Vec<AppendItem> + Send + 'a>;

/// What [`Store::append_at_tail`] found and wrote.
#[derive(Debug)]
pub struct Tail {
    /// Leaf hashes of the entries other writers appended.
    pub adopted: Vec<Hash>,
    pub written: Vec<AppendItem>,
}

/// Where a writer presumes the log ends: its size and the registry version
/// there (see [`Store::append_presumed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presumed {
    pub size: u64,
    pub registry_version: u64,
}

/// What [`Store::append_presumed`] did.
#[derive(Debug)]
pub enum Presumption {
    /// The log ended where presumed: the items are written.
    Written(Vec<AppendItem>),
    /// It did not (another writer appended, the registry changed, or an
    /// exchange the items open was opened meanwhile): nothing is written,
    /// and the items come back to be sealed again at the real tail.
    Moved(Vec<AppendItem>),
}

/// The registry changes of `items`, in order.
pub(crate) fn registry_changes(items: &[AppendItem]) -> impl Iterator<Item = &RegistryChange> {
    items
        .iter()
        .flat_map(|i| &i.effects)
        .filter_map(|e| match e {
            Effect::Registry(change) => Some(&**change),
            _ => None,
        })
}

/// [`Store::append_presumed`] through [`Store::append_at_tail`]: its lock
/// and tail read, then the presumption checked against what it read.
pub(crate) async fn append_presumed_at_tail<S: Store + ?Sized>(
    store: &S,
    at: Presumed,
    items: Vec<AppendItem>,
) -> Result<Presumption, StoreError> {
    let claims = Claims::of_items(&items);
    let mut moved = None;
    let tail = store
        .append_at_tail(
            at.size,
            &claims,
            Box::new(|tail: AtTail<'_>| {
                if tail.adopted.is_empty()
                    && tail.opened.is_empty()
                    && tail.acknowledged.is_empty()
                    && tail.settled.is_empty()
                    && tail.registry_version == at.registry_version
                {
                    items
                } else {
                    moved = Some(items);
                    Vec::new()
                }
            }),
        )
        .await?;
    Ok(match moved {
        Some(items) => Presumption::Moved(items),
        None => Presumption::Written(tail.written),
    })
}

/// A role only one hub process plays at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signs checkpoints, so that they form one sequence.
    Checkpointer,
}

impl Role {
    /// The advisory lock key of the role (PostgreSQL).
    pub fn lock_key(self) -> i64 {
        match self {
            // "hub-ckpt" in ASCII.
            Role::Checkpointer => 0x6875_622d_636b_7074,
        }
    }
}

/// Held while a process plays a [`Role`]; dropping it gives the role up.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Whether the role is still held (the session holding it is alive).
    async fn still_leading(&mut self) -> bool;
}

/// Everything the hub stores.
#[async_trait]
pub trait Store: Send + Sync {
    /// Is the database reachable?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Reclaim the rows the queues removed. On PostgreSQL every delivery
    /// and outbox row is inserted, updated and deleted within seconds, and
    /// until a `VACUUM` their dead versions stay in the indexes that every
    /// lease scans; autovacuum looks at most once a minute (and may be
    /// off). Whether dead rows are left that this vacuum could not reclaim
    /// (a snapshot older than their removal still sees them), so that the
    /// caller tries again. SQLite reuses freed pages by itself: nothing to
    /// do there.
    async fn vacuum_queues(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Apply `changes` in one transaction; the rows they touched.
    async fn apply_changes(&self, changes: &[RegistryChange]) -> Result<u64, StoreError>;

    async fn upsert_agency(&self, agency: &AgencyRecord) -> Result<(), StoreError> {
        self.apply_changes(&[RegistryChange::UpsertAgency(agency.clone())])
            .await
            .map(|_| ())
    }
    async fn agency(&self, member: &Member) -> Result<Option<AgencyRecord>, StoreError>;
    async fn agencies(&self) -> Result<Vec<AgencyRecord>, StoreError>;
    /// Keep a member's replaced signing key (with its `valid_until`) so
    /// that what it signed still verifies; idempotent.
    async fn retire_agency_key(&self, member: &Member, key: &Jwk) -> Result<(), StoreError> {
        self.apply_changes(&[RegistryChange::RetireAgencyKey {
            member: member.clone(),
            key: key.clone(),
        }])
        .await
        .map(|_| ())
    }
    /// The serials (lowercase hex) of every revoked client certificate.
    async fn revoked_certificates(&self) -> Result<Vec<String>, StoreError>;
    /// Every retired agency key, by member.
    async fn retired_agency_keys(&self) -> Result<Vec<(Member, Jwk)>, StoreError>;

    async fn upsert_service(&self, service: &ServiceRecord) -> Result<(), StoreError>;
    async fn service(
        &self,
        name: &ServiceName,
        version: u32,
    ) -> Result<Option<ServiceRecord>, StoreError>;
    async fn services(&self) -> Result<Vec<ServiceRecord>, StoreError>;

    /// What a request from `who` for `service` v`version` needs to know,
    /// in one round trip: the agency, the service, and whether a grant
    /// for `purpose` exists.
    async fn facts(
        &self,
        who: &Member,
        service: &ServiceName,
        version: u32,
        purpose: &PurposeCode,
    ) -> Result<Facts, StoreError>;

    /// Add a grant, or replace the fields of the same (consumer, service, purpose).
    async fn add_grant(&self, grant: &Grant) -> Result<(), StoreError> {
        self.apply_changes(&[RegistryChange::AddGrant(grant.clone())])
            .await
            .map(|_| ())
    }
    /// Whether a grant existed to remove.
    async fn revoke_grant(&self, grant: &Grant) -> Result<bool, StoreError> {
        self.apply_changes(&[RegistryChange::RevokeGrant(grant.clone())])
            .await
            .map(|n| n > 0)
    }
    async fn grants(&self) -> Result<Vec<Grant>, StoreError>;

    async fn add_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.apply_changes(&[RegistryChange::AddSubscription(sub.clone())])
            .await
            .map(|_| ())
    }
    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;
    /// Whom an event of `service` v`version` is delivered to: its
    /// subscribers that still hold a grant for the service (for any
    /// purpose), so that revoking one stops its events as it stops queries.
    async fn subscribers(
        &self,
        service: &ServiceName,
        version: u32,
    ) -> Result<Vec<Member>, StoreError>;

    /// Write `items` and their effects in one transaction; they must
    /// continue the log where it ends.
    async fn append(&self, items: &[AppendItem]) -> Result<(), StoreError> {
        let first = items.first().map_or(0, |i| i.sealed.record.statement.index);
        let tail = self
            .append_at_tail(first, &Claims::default(), Box::new(|_| items.to_vec()))
            .await?;
        if tail.adopted.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!(
                "the log has entries from index {first} on; these items would overwrite them"
            )))
        }
    }
    /// A counter that advances with every change to agencies, services,
    /// grants and subscriptions, however it is made (the store's triggers
    /// advance it).
    async fn registry_version(&self) -> Result<u64, StoreError>;
    /// Append at the log's tail when several writers share the store: in
    /// one transaction, under a lock that serializes writers, read the
    /// leaf hashes of every entry from index `known` on (what other writers
    /// appended), the registry version, which of the exchanges `claims`
    /// opens exist already, which it answers are no longer pending and
    /// which of the messages it acknowledges are no longer queued, let
    /// `seal` place the batch after them, and write it. Returns those leaf
    /// hashes and the items written.
    async fn append_at_tail(
        &self,
        known: u64,
        claims: &Claims,
        seal: SealAfter<'_>,
    ) -> Result<Tail, StoreError>;
    /// Append `items`, sealed by the caller where it presumes the log
    /// ends, if the log still ends there, the registry is still at that
    /// version, none of the exchanges they open exists, every exchange
    /// they answer is still pending and every message they acknowledge is
    /// still queued; otherwise write nothing and hand them back. The same
    /// guarantees as [`Store::append_at_tail`], which the default goes
    /// through; a backend may check the presumption in the write itself,
    /// saving round trips.
    async fn append_presumed(
        &self,
        at: Presumed,
        items: Vec<AppendItem>,
    ) -> Result<Presumption, StoreError> {
        append_presumed_at_tail(self, at, items).await
    }
    /// Try to become the one holder of `role` among the processes sharing
    /// this store (`None`: another process holds it).
    async fn lead(&self, role: Role) -> Result<Option<Box<dyn Leadership>>, StoreError>;
    /// Up to `limit` entries from `from`, in order.
    async fn entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError>;

    /// Index the subjects of up to `limit` entries past the index's end
    /// (entries carry them, see [`Effect::IndexSubjects`]); how many
    /// entries it covered. Safe to run from several hubs at once.
    async fn index_subjects(&self, limit: u32) -> Result<u64, StoreError>;

    /// The records of every entry of the exchanges that touched `subject`
    /// (the index, and the entries past its end), in log order: at most
    /// `limit` exchanges, the oldest first (by their first entry), of
    /// those whose first entry comes after index `after`; and, when more
    /// exist, the first entry index of the last exchange returned - the
    /// `after` of the next page.
    async fn subject_records(
        &self,
        subject: &str,
        limit: u32,
        after: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), StoreError>;

    /// The leaf hashes of entries `from..to`, in order.
    async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError>;
    /// The kept roots of the log's 256-leaf blocks `first..first + limit`
    /// (block `b` holds leaves `256b..256b + 256`), in order, up to the
    /// first block not kept.
    async fn block_roots(&self, first: u64, limit: u64) -> Result<Vec<Hash>, StoreError>;
    /// Keep the roots of blocks `first..first + roots.len()`; a block kept
    /// already stays as it is.
    async fn keep_block_roots(&self, first: u64, roots: &[Hash]) -> Result<(), StoreError>;
    /// The canonical record of an exchange's request entry, if one was logged.
    async fn request_of(&self, id: ExchangeId) -> Result<Option<String>, StoreError>;
    /// The indexes of every entry of one exchange.
    async fn indexes_of_exchange(&self, id: ExchangeId) -> Result<Vec<u64>, StoreError>;

    /// Delete the bodies of entries logged before `before` (RFC 3339, UTC,
    /// as entries write it), and the cached replies of exchanges opened
    /// before `before_millis`, both only where the exchange has no message
    /// left in a queue (an event's inbox messages are its reply, which is
    /// its entry's record and body); how many of each.
    async fn purge(&self, before: &str, before_millis: u64) -> Result<(u64, u64), StoreError>;

    /// Store a signed checkpoint.
    async fn add_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError>;
    /// At most `limit` checkpoints of size `size` or more, smallest
    /// first, each with its witnesses' cosignature lines (by witness).
    async fn checkpoints_from(
        &self,
        size: u64,
        limit: u32,
    ) -> Result<Vec<CosignedCheckpoint>, StoreError>;
    /// The checkpoint of the largest size, if any.
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError>;
    /// The checkpoint of tree size `size`, if one was signed.
    async fn checkpoint_of_size(&self, size: u64) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// Register (or replace) a witness's verifier key.
    async fn add_witness(&self, name: &str, vkey: &str) -> Result<(), StoreError> {
        self.apply_changes(&[RegistryChange::AddWitness {
            name: name.to_owned(),
            vkey: vkey.to_owned(),
        }])
        .await
        .map(|_| ())
    }
    /// Every registered witness: (name, verifier key).
    async fn witnesses(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Store a witness's cosignature line of the checkpoint of `size`.
    async fn add_cosignature(&self, size: u64, witness: &str, line: &str)
    -> Result<(), StoreError>;
    /// The cosignature lines of the checkpoint of `size`.
    async fn cosignatures(&self, size: u64) -> Result<Vec<String>, StoreError>;

    async fn exchange(&self, id: ExchangeId) -> Result<Option<ExchangeRow>, StoreError>;

    /// Lease up to `max` visible messages for `recipient`, hiding them until
    /// `now + visibility`: those visible the longest first (so a message
    /// whose lease lapsed waits behind those already waiting), returned in
    /// the order they were queued. A lease reads about what it returns,
    /// however long the backlog. Nothing, while a withdrawal from the
    /// inbox is pending.
    async fn lease(
        &self,
        recipient: &Member,
        max: u32,
        now_millis: u64,
        visibility_millis: u64,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// The withdrawals not yet worked off that were written before
    /// `created_before_millis`, oldest first.
    async fn pending_withdrawals(
        &self,
        created_before_millis: u64,
    ) -> Result<Vec<Withdrawal>, StoreError>;
    /// Examine the next `limit` messages of the withdrawal's inbox after
    /// `after` and remove those it takes (see
    /// [`RegistryChange::WithdrawUnfetchedEvents`]): the position of the
    /// last one examined and how many were removed, or `None` once none
    /// are left to examine. A lease does not move a message meanwhile:
    /// the inbox is closed while the withdrawal is pending.
    async fn withdraw_batch(
        &self,
        withdrawal: &Withdrawal,
        after: InboxPosition,
        limit: u32,
    ) -> Result<Option<(InboxPosition, u64)>, StoreError>;
    /// The withdrawal is worked off: the inbox opens again (unless another
    /// is pending for it).
    async fn finish_withdrawal(&self, id: i64) -> Result<(), StoreError>;
    /// Those of messages `ids` that wait unacknowledged for `recipient`,
    /// leased or not, in no particular order, as far as a receipt needs
    /// them: a message that points at its entry comes without the entry's
    /// body (`StoredMessage::Entry::body` is `None`), so its record reads
    /// ([`StoredMessage::record_as`]) but it does not open.
    async fn deliveries(
        &self,
        recipient: &Member,
        ids: &[ExchangeId],
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Remove an acknowledged message; whether there was one.
    async fn remove_delivery(&self, recipient: &Member, id: ExchangeId)
    -> Result<bool, StoreError>;

    /// Up to `max` of `instance`'s outbox rows, oldest first.
    async fn outbox(&self, instance: &str, max: u32) -> Result<Vec<OutboxRow>, StoreError>;
    /// What waits: unpublished outbox rows by hub instance, and inbox
    /// messages by recipient (for `crate::metrics`).
    async fn backlog(&self) -> Result<Backlog, StoreError>;
    /// Delete outbox rows the broker confirmed.
    async fn remove_outbox(&self, seqs: &[i64]) -> Result<(), StoreError>;
}

/// How the connection pool is sized and how long a request waits for it.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long to wait for a connection before the database counts as
    /// unavailable (the hub then answers 503 instead of hanging).
    pub acquire_timeout: std::time::Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// The columns of one group commit, for multi-row statements: one
/// statement per table per batch, not one per row.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) idx: Vec<i64>,
    pub(crate) exchange_id: Vec<String>,
    pub(crate) kind: Vec<String>,
    pub(crate) record: Vec<String>,
    pub(crate) leaf_hash: Vec<Vec<u8>>,
    pub(crate) key_id: Vec<String>,
    pub(crate) nonce: Vec<Vec<u8>>,
    pub(crate) ciphertext: Vec<Vec<u8>>,
    /// Exchanges opened: id, sender, request hash, time, and the reply of
    /// one closed by the same entry (an event), which starts `done`.
    pub(crate) open: Open,
    /// Exchanges closed, and the index of the entry that is each one's reply.
    pub(crate) close: (Vec<String>, Vec<i64>),
    pub(crate) abandon: Vec<String>,
    pub(crate) dequeue: (Vec<String>, Vec<String>),
    /// Of `dequeue`, the messages acknowledged ([`Effect::Acknowledge`]):
    /// the batch holds only if each is still queued.
    pub(crate) acknowledge: (Vec<String>, Vec<String>),
    /// Messages queued: recipient, exchange id, the sealed message (`None`
    /// when it is the reply of the exchange its entry opened and closed,
    /// an event's: the inbox row points at the entry instead of keeping a
    /// copy per subscriber), visible from.
    pub(crate) enqueue: (
        Vec<String>,
        Vec<String>,
        Vec<Option<SealedMessage>>,
        Vec<i64>,
    ),
    pub(crate) dispatch: (Vec<String>, Vec<String>, Vec<String>, Vec<Vec<u8>>),
    /// Per entry, the JSON array of its subjects (`Store::index_subjects`).
    pub(crate) subjects: Vec<Option<String>>,
}

/// A message sealed under the data key, as stored.
type SealedMessage = Vec<u8>;

#[derive(Default)]
pub(crate) struct Open {
    pub(crate) id: Vec<String>,
    pub(crate) sender: Vec<String>,
    pub(crate) request_hash: Vec<String>,
    pub(crate) at: Vec<i64>,
    pub(crate) state: Vec<&'static str>,
    /// The index of the entry whose message is the reply: the entry's
    /// record and body are stored once, in the log.
    pub(crate) reply_idx: Vec<Option<i64>>,
}

impl Batch {
    /// About how many bytes the batch's columns hold: what a backend
    /// reserves for its statement's arguments at once, rather than grow
    /// the buffer by doubling (each step a copy into fresh pages, the
    /// hub's main source of page faults on PostgreSQL).
    pub(crate) fn size_hint(&self) -> usize {
        let bytes = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        let text = |v: &[String]| v.iter().map(String::len).sum::<usize>();
        // Per row, the small columns and each element's length word.
        text(&self.record)
            + bytes(&self.ciphertext)
            + self.enqueue.2.iter().flatten().map(Vec::len).sum::<usize>()
            + bytes(&self.dispatch.3)
            + 256 * (self.idx.len() + self.enqueue.0.len() + self.dispatch.0.len())
    }

    pub(crate) fn of(items: &[AppendItem]) -> Result<Self, StoreError> {
        let mut b = Batch::default();
        // Where each exchange opened in this batch is in `open`: closed in
        // the batch too, it is inserted done rather than inserted and then
        // updated, so that no statement needs to see another's rows.
        let mut opened_here: std::collections::HashMap<ExchangeId, usize> =
            std::collections::HashMap::new();
        for item in items {
            let record = &item.sealed.record.statement;
            let id = record.draft.exchange_id.to_string();
            b.idx.push(to_i64(record.index));
            b.kind.push(record.draft.kind.as_str().to_owned());
            b.record.push(canonical_text(item.sealed.canonical.clone()));
            b.leaf_hash.push(item.sealed.leaf_hash.to_vec());
            let sealed = &item.body.sealed;
            b.key_id.push(sealed.key_id.clone());
            b.nonce.push(sealed.nonce.to_vec());
            b.ciphertext.push(sealed.ciphertext.clone());
            let mut subjects_of_entry: Vec<String> = Vec::new();
            let mut own_row = None;
            // Needed by a dispatch or a queued request; the writer sealed it
            // by the same rule (`Effect::need_sealed_message`).
            let sealed_message = || {
                item.sealed_message.clone().ok_or_else(|| {
                    StoreError::Database(format!(
                        "entry {} is queued or dispatched without its sealed message",
                        record.index
                    ))
                })
            };
            for (i, effect) in item.effects.iter().enumerate() {
                match effect {
                    Effect::OpenExchange {
                        sender,
                        request_hash,
                        at_millis,
                    } => {
                        b.open.id.push(id.clone());
                        b.open.sender.push(sender.to_string());
                        b.open.request_hash.push(request_hash.clone());
                        b.open.at.push(to_i64(*at_millis));
                        b.open.state.push("pending");
                        b.open.reply_idx.push(None);
                        let row = b.open.id.len() - 1;
                        opened_here.entry(record.draft.exchange_id).or_insert(row);
                        own_row = Some(row);
                    }
                    // The entry's own row if it opened one (an event),
                    // else the row an earlier entry of the batch opened.
                    Effect::CloseExchange => match own_row
                        .or_else(|| opened_here.get(&record.draft.exchange_id).copied())
                    {
                        Some(at) => {
                            b.open.state[at] = "done";
                            b.open.reply_idx[at] = Some(to_i64(record.index));
                        }
                        None => {
                            b.close.0.push(id.clone());
                            b.close.1.push(to_i64(record.index));
                        }
                    },
                    Effect::AbandonExchange => b.abandon.push(id.clone()),
                    Effect::Dequeue { recipient } | Effect::Acknowledge { recipient } => {
                        let recipient = recipient.to_string();
                        if matches!(effect, Effect::Acknowledge { .. }) {
                            b.acknowledge.0.push(recipient.clone());
                            b.acknowledge.1.push(id.clone());
                        }
                        // Queued by this very batch: not inserted at all,
                        // since a backend may write both in one statement,
                        // where the delete would not see the insert.
                        if let Some(i) = (0..b.enqueue.0.len())
                            .find(|&i| b.enqueue.0[i] == recipient && b.enqueue.1[i] == id)
                        {
                            b.enqueue.0.remove(i);
                            b.enqueue.1.remove(i);
                            b.enqueue.2.remove(i);
                            b.enqueue.3.remove(i);
                        }
                        b.dequeue.0.push(recipient);
                        b.dequeue.1.push(id.clone());
                    }
                    Effect::Enqueue {
                        recipient,
                        visible_at_millis,
                    } => {
                        b.enqueue.0.push(recipient.to_string());
                        b.enqueue.1.push(id.clone());
                        b.enqueue
                            .2
                            .push(if Effect::enqueues_reply(&item.effects, i) {
                                None
                            } else {
                                Some(sealed_message()?)
                            });
                        b.enqueue.3.push(to_i64(*visible_at_millis));
                    }
                    Effect::Dispatch {
                        recipient,
                        instance,
                    } => {
                        b.dispatch.0.push(instance.clone());
                        b.dispatch.1.push(recipient.to_string());
                        b.dispatch.2.push(id.clone());
                        b.dispatch.3.push(sealed_message()?);
                    }
                    // Applied one by one in the same transaction: rare.
                    Effect::Registry(_) => {}
                    Effect::IndexSubjects { subjects } => {
                        subjects_of_entry.extend(subjects.iter().cloned());
                    }
                }
            }
            b.subjects.push(
                (!subjects_of_entry.is_empty())
                    .then(|| serde_json::to_string(&subjects_of_entry).unwrap_or_default()),
            );
            b.exchange_id.push(id);
        }
        Ok(b)
    }
}

// Shared by the backends.

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn member(agency: String, subsystem: String) -> Result<Member, StoreError> {
    format!("{agency}/{subsystem}").parse().map_err(corrupt)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Open the store the URL names (`sqlite:<path>` or `postgres://...`),
/// creating and migrating it if needed.
pub async fn open(
    url: &str,
    settings: PoolSettings,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, settings).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(postgres::redact(url)))
    }
}
