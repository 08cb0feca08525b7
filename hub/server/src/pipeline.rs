//! The exchange pipeline: one visible sequence of steps, each a function
//! with a typed input and output.
//!
//! ```text
//! mTLS identity -> parse envelope -> verify sender signature (if the agency has a key)
//!   -> authorize (grant) -> validate payload (schema + semantic checks)
//!   -> assign exchange id + log position -> hub countersign
//!   -> append to log + outbox in ONE transaction (durable before any ack)
//!   -> deliver -> provider adapter -> response
//!   -> validate response -> countersign -> log -> reply
//! ```
//!
//! Every outcome is logged, refusals included, so that an auditor sees what
//! was refused as well as what passed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_adapter_sdk::{Adapter, AdapterRequest, ServiceKind};
use hub_core::body::{self, DataKey, NONCE_LEN, SALT_LEN};
use hub_core::decide::{self, Partial, Refusal, violations_of};
use hub_core::envelope::{EndUser, Envelope};
use hub_core::fields::FieldSet;
use hub_core::ids::{ExchangeId, Member};
use hub_core::jcs;
use hub_core::jws::{Jwks, SigningKey};
use hub_core::log::{EntryDraft, EntryError, EntryKind, LoggedEndUser, Record, subject_of};
use hub_core::schema::{Catalog, Violation};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tracing::{info, instrument, warn};

use crate::clock::{Clock, Random};
use crate::error::{ExchangeError, Failure, Logged};
use crate::log_writer::{AppendError, LogWriter};
use crate::queue::{Message, Pending, Queue};
use crate::registry_cache::RegistryCache;
use crate::store::{
    AppendItem, Body, Effect, ExchangeRow, ExchangeState, ServiceRecord, Store, StoreError,
    StoredMessage,
};

/// What a finished query hands its waiting caller.
type Completion = Result<String, Failure>;

/// A request that passed every check, ready to be logged and routed.
#[derive(Debug)]
pub struct Accepted {
    pub exchange_id: ExchangeId,
    pub envelope: Envelope,
    /// RFC 8785 form of the envelope as sent.
    pub canonical: Vec<u8>,
    /// The canonical envelope keyed with the data key, for idempotency.
    pub request_hash: String,
    pub signature: Option<String>,
    /// The service as registered (with its response schema).
    pub service: ServiceRecord,
    /// The response fields the consumer's grant releases (`None`: all).
    pub fields: Option<FieldSet>,
    /// Who receives an event (empty for a query).
    pub subscribers: Vec<Member>,
    /// The registry version this was decided at.
    pub registry_version: u64,
}

/// What the registry's facts decided for a parsed request.
struct Decision {
    service: ServiceRecord,
    fields: Option<FieldSet>,
    subscribers: Vec<Member>,
    registry_version: u64,
}

/// Providers reached through a broker: requests go to the outbox, and the
/// relay is woken after each commit.
pub struct Remote {
    pub broker: Arc<crate::broker::Broker>,
    pub relay: Arc<Notify>,
}

/// Why a remote adapter's answer was not logged.
#[derive(Debug, thiserror::Error)]
pub enum RemoteAnswerError {
    /// Worth another try later.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// No request was logged for this exchange id.
    #[error("no request is logged for this exchange")]
    UnknownExchange,
    /// Another answer to the same exchange is being logged: try again later.
    #[error("another answer to this exchange is being logged")]
    Busy,
    /// The answer comes from another member than the request's receiver.
    #[error("the answer does not come from the request's receiver")]
    NotTheReceiver,
}

/// How an accepted exchange ended, for the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Published,
}

/// The hub's shared state and its pipeline.
pub struct Hub {
    pub catalog: Arc<Catalog>,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub log: LogWriter,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
    pub jwks: Jwks,
    /// The hub key's hand-overs, oldest first (`hub_core::handover`).
    pub key_handovers: Vec<hub_core::handover::KeyHandover>,
    /// Seals bodies at rest and keys the idempotency hashes.
    pub data_key: Arc<DataKey>,
    /// The checkpoint key's name (the log origin) and public key.
    pub note_verifier: hub_core::note::Verifier,
    pub query_timeout: Duration,
    /// Set when providers are adapter processes behind a broker.
    pub remote: Option<Remote>,
    /// In-process adapters by provider (the hub's own services always, the
    /// reference adapters when there is no broker): called straight after
    /// the request commits. Their queue rows only serve recovery (after a
    /// crash or a timeout), so a query costs two commits.
    pub local: HashMap<Member, Arc<dyn Adapter>>,
    /// Most queries this hub waits on per provider at once; past it a query
    /// is turned away (503 `provider_queue_full`) before it is logged.
    pub provider_queue_max: usize,
    /// The backlog's last count and the inbox cap: an event to a full
    /// inbox is turned away (503 `inbox_full`) before it is logged.
    pub backlog: Arc<crate::backlog::BacklogCount>,
    /// Client certificates administrators revoked, for the API listener's
    /// handshakes (reloaded from the registry; see `crate::tls`).
    pub revoked_certificates: Arc<crate::tls::RevokedCertificates>,
    /// Suspended members, for the routes outside the pipeline.
    pub suspended: Arc<crate::identity::SuspendedMembers>,
    /// This process's request counters (`crate::metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The registry facts requests are decided on.
    registry: RegistryCache,
    pending: Mutex<HashMap<Member, usize>>,
    waiters: Mutex<HashMap<ExchangeId, oneshot::Sender<Completion>>>,
    in_flight: Mutex<HashSet<ExchangeId>>,
    /// Exchanges whose answer is being logged: a second answer to one
    /// (a redelivered request answered twice) waits until the first is
    /// logged, then finds the exchange settled.
    answering: Mutex<HashSet<ExchangeId>>,
    /// Requests this hub dispatched to remote adapters and still waits on,
    /// with their service: an answer to one is logged without looking them
    /// up again.
    dispatched: Mutex<HashMap<ExchangeId, (Record, ServiceRecord)>>,
    wakers: Mutex<HashMap<Member, Arc<Notify>>>,
}

/// One of a provider's places in [`Hub::provider_queue_max`], held while
/// this hub waits on the query; freed when dropped.
struct PendingSlot<'a> {
    hub: &'a Hub,
    provider: Member,
}

impl<'a> PendingSlot<'a> {
    fn take(hub: &'a Hub, provider: &Member) -> Option<Self> {
        let mut pending = hub
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = pending.entry(provider.clone()).or_insert(0);
        if *count >= hub.provider_queue_max {
            return None;
        }
        *count += 1;
        Some(Self {
            hub,
            provider: provider.clone(),
        })
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        let mut pending = self
            .hub
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = pending.get_mut(&self.provider) {
            *count = count.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn storage(e: StoreError) -> Failure {
    warn!(error = %e, "storage error");
    ExchangeError::from(e).into()
}

fn append_failed(e: AppendError) -> Failure {
    match e {
        AppendError::RegistryChanged { .. } => ExchangeError::RegistryChanged.into(),
        // The hub's own fault, not an outage: retrying cannot help.
        AppendError::Canonical(_) => ExchangeError::Internal(e.to_string()).into(),
        _ => {
            warn!(error = %e, "append failed");
            ExchangeError::StorageUnavailable(e.to_string()).into()
        }
    }
}

/// How many times a request is decided again when the registry changed
/// under its decision (see `crate::registry_cache`).
const DECISION_ATTEMPTS: usize = 4;

/// An exchange id held in a set of ids being worked on; removed when dropped.
struct Claim<'a> {
    set: &'a Mutex<HashSet<ExchangeId>>,
    id: ExchangeId,
}

impl<'a> Claim<'a> {
    /// `None` when the id is already held.
    fn take(set: &'a Mutex<HashSet<ExchangeId>>, id: ExchangeId) -> Option<Self> {
        let inserted = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        // Built only when taken: a Claim that is made and dropped would
        // release the id its holder still holds (and, made while the lock
        // above is held, deadlock on it).
        inserted.then(|| Self { set, id })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
    }
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        log: LogWriter,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        hub_key: &SigningKey,
        data_key: Arc<DataKey>,
        note_verifier: hub_core::note::Verifier,
        query_timeout: Duration,
    ) -> Self {
        Self {
            catalog,
            store,
            queue,
            log,
            clock,
            random,
            jwks: Jwks {
                keys: vec![hub_key.public_jwk()],
            },
            key_handovers: Vec::new(),
            data_key,
            note_verifier,
            query_timeout,
            remote: None,
            local: HashMap::new(),
            provider_queue_max: usize::MAX,
            backlog: Arc::new(crate::backlog::BacklogCount::new(u64::MAX)),
            revoked_certificates: Arc::default(),
            suspended: Arc::default(),
            metrics: Arc::default(),
            registry: RegistryCache::default(),
            pending: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            answering: Mutex::new(HashSet::new()),
            dispatched: Mutex::new(HashMap::new()),
            wakers: Mutex::new(HashMap::new()),
        }
    }

    /// The notifier that wakes an in-process provider's worker.
    pub fn waker(&self, member: &Member) -> Arc<Notify> {
        let mut w = self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.entry(member.clone()).or_default().clone()
    }

    fn wake(&self, member: &Member) {
        let w = self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = w.get(member) {
            n.notify_one();
        }
    }

    /// The text of a stored reply or message of exchange `id`.
    fn open_message(&self, id: ExchangeId, stored: &StoredMessage) -> Result<String, StoreError> {
        stored.open(&self.data_key, id)
    }

    /// The end user as the log records them (a citizen by keyed hash).
    fn logged_end_user(&self, envelope: &Envelope) -> Option<LoggedEndUser> {
        envelope
            .on_behalf_of
            .as_ref()
            .map(|u| LoggedEndUser::of(u, |id| subject_of(&self.data_key, id.as_str())))
    }

    /// Index an accepted request or event under the data subjects its
    /// payload names and the citizen it was made for, if any.
    fn subjects_of_request(&self, a: &Accepted) -> Option<Effect> {
        let mut ids = self
            .catalog
            .subjects(&a.service.request_schema, &a.envelope.payload);
        if let Some(EndUser::Citizen { personal_id }) = &a.envelope.on_behalf_of {
            ids.push(personal_id.as_str());
        }
        self.index_subjects(ids)
    }

    fn index_subjects(&self, mut ids: Vec<&str>) -> Option<Effect> {
        ids.sort_unstable();
        ids.dedup();
        (!ids.is_empty()).then(|| Effect::IndexSubjects {
            subjects: ids
                .into_iter()
                .map(|id| subject_of(&self.data_key, id))
                .collect(),
        })
    }

    /// A body with a fresh salt, its commitment, and sealed for storage.
    fn body(&self, plain: Vec<u8>) -> Body {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut salt);
        self.random.fill(&mut nonce);
        let commitment = body::commitment(&salt, &plain);
        let sealed = self.data_key.seal(&salt, &plain, &commitment, nonce);
        Body {
            plain,
            salt: salt.to_vec(),
            commitment,
            sealed,
        }
    }

    /// A fresh UUIDv7 from the hub's clock and randomness.
    pub fn new_exchange_id(&self) -> ExchangeId {
        let mut r = [0u8; 10];
        self.random.fill(&mut r);
        ExchangeId::from_parts(self.clock.unix_millis(), r)
    }

    /// Run one request from `who` through the pipeline.
    #[instrument(skip_all, fields(sender = %who))]
    pub async fn submit(
        self: &Arc<Self>,
        who: &Member,
        raw: &[u8],
    ) -> Result<(Outcome, String), Failure> {
        let mut attempts = 1;
        loop {
            match self.decide_and_run(who, raw).await {
                Err(f) if matches!(f.error, ExchangeError::RegistryChanged) => {
                    if attempts == DECISION_ATTEMPTS {
                        return Err(f);
                    }
                    attempts += 1;
                }
                done => return done,
            }
        }
    }

    async fn decide_and_run(
        self: &Arc<Self>,
        who: &Member,
        raw: &[u8],
    ) -> Result<(Outcome, String), Failure> {
        let mut partial = Partial::default();
        let mut decided_at = None;
        let accepted = match self.check(who, raw, &mut partial, &mut decided_at).await {
            Ok(a) => a,
            Err(ExchangeError::Refused(r)) => {
                return Err(self.refuse(who, partial, r, decided_at).await);
            }
            Err(e) => return Err(e.into()),
        };
        match accepted.service.kind {
            ServiceKind::Query => self
                .run_query(who, accepted)
                .await
                .map(|r| (Outcome::Answered, r)),
            ServiceKind::Event => self
                .publish(who, accepted)
                .await
                .map(|r| (Outcome::Published, r)),
        }
    }

    /// Every decision before anything is written: the pure steps of
    /// `hub_core::decide`, with the registry's facts looked up between them
    /// (`decided_at`: the registry version they were read at). On a
    /// refusal `partial` holds what was read of the request.
    async fn check(
        &self,
        who: &Member,
        raw: &[u8],
        partial: &mut Partial,
        decided_at: &mut Option<u64>,
    ) -> Result<Accepted, ExchangeError> {
        let parsed = decide::parse(raw, &self.catalog, partial)?;
        match self.decide_parsed(who, &parsed, decided_at).await {
            Ok(decision) => Ok(Accepted {
                exchange_id: parsed.envelope.id.unwrap_or_else(|| self.new_exchange_id()),
                request_hash: self.data_key.keyed_hash(&parsed.canonical),
                canonical: parsed.canonical,
                signature: parsed.signature,
                envelope: parsed.envelope,
                service: decision.service,
                fields: decision.fields,
                subscribers: decision.subscribers,
                registry_version: decision.registry_version,
            }),
            Err(e) => {
                *partial = Partial::from(parsed);
                Err(e)
            }
        }
    }

    /// The steps after parsing, against the registry's facts.
    async fn decide_parsed(
        &self,
        who: &Member,
        parsed: &decide::Parsed,
        decided_at: &mut Option<u64>,
    ) -> Result<Decision, ExchangeError> {
        let env = &parsed.envelope;
        let snapshot = self
            .registry
            .facts(
                self.store.as_ref(),
                who,
                &env.service,
                env.version,
                &env.purpose,
            )
            .await
            .map_err(ExchangeError::from)?;
        *decided_at = Some(snapshot.registry_version);
        let facts = &snapshot.facts;
        decide::authenticate(
            who,
            parsed,
            facts.agency.as_ref().map(|a| a.signing_key.as_ref()),
        )?;
        decide::not_suspended(who, facts.agency.as_ref().is_some_and(|a| a.suspended))?;
        let service = decide::route(parsed, facts.service.as_ref().map(ServiceRecord::view))?;
        let record = facts
            .service
            .clone()
            .ok_or_else(|| ExchangeError::Internal("a routed service has no record".into()))?;
        let granted = service.kind == ServiceKind::Query && facts.granted;
        decide::authorize(who, parsed, &service, granted)?;
        decide::validate_payload(parsed, &service, &self.catalog)?;
        Ok(Decision {
            service: record,
            fields: if granted { facts.fields.clone() } else { None },
            subscribers: snapshot.subscribers.clone(),
            registry_version: snapshot.registry_version,
        })
    }

    /// Append an entry that records a decision made at registry version
    /// `decided_at`; a registry change since empties the cache.
    async fn append_decided(
        &self,
        decided_at: Option<u64>,
        draft: EntryDraft,
        body: Body,
        effects: Vec<Effect>,
    ) -> Result<AppendItem, AppendError> {
        let result = self
            .log
            .append_decided(decided_at, draft, body, effects)
            .await;
        if let Err(AppendError::RegistryChanged { now }) = &result {
            self.registry.outdated(*now);
        }
        result
    }

    /// Log a refusal and return it with where it was logged.
    async fn refuse(
        &self,
        who: &Member,
        known: Partial,
        refusal: Refusal,
        decided_at: Option<u64>,
    ) -> Failure {
        let error = ExchangeError::Refused(refusal);
        let exchange_id = known.exchange_id.unwrap_or_else(|| self.new_exchange_id());
        let env = known.envelope.as_ref();
        let draft = EntryDraft {
            receiver: env.and_then(|e| e.receiver.clone()),
            service: env.map(|e| e.service.clone()),
            version: env.map(|e| e.version),
            purpose: env.map(|e| e.purpose.clone()),
            case_ref: env.map(|e| e.case_ref.clone()),
            on_behalf_of: env.and_then(|e| self.logged_end_user(e)),
            error: Some(EntryError {
                code: error.code().to_owned(),
                message: error.to_string(),
            }),
            sender_signature: known.signature,
            ..EntryDraft::new(EntryKind::Refusal, exchange_id, who.clone())
        };
        info!(code = error.code(), %exchange_id, "refused");
        let body = self.body(known.body);
        let mut draft = draft;
        body.describe(&mut draft);
        match self.append_decided(decided_at, draft, body, vec![]).await {
            Ok(item) => Failure {
                error,
                logged: Some(Logged {
                    exchange_id,
                    index: item.sealed.record.statement.index,
                }),
            },
            // A registry change since the decision is no failure: the
            // request is decided again (`DECISION_ATTEMPTS`).
            Err(e @ AppendError::RegistryChanged { .. }) => append_failed(e),
            Err(e) => {
                warn!(error = %e, "could not log a refusal");
                append_failed(e)
            }
        }
    }

    fn accepted_draft(
        &self,
        who: &Member,
        a: &Accepted,
        kind: EntryKind,
        recipients: Vec<Member>,
    ) -> EntryDraft {
        EntryDraft {
            receiver: (kind == EntryKind::Request).then(|| a.service.provider.clone()),
            recipients,
            service: Some(a.service.name.clone()),
            version: Some(a.service.version),
            purpose: Some(a.envelope.purpose.clone()),
            case_ref: Some(a.envelope.case_ref.clone()),
            on_behalf_of: self.logged_end_user(&a.envelope),
            fields: match kind {
                EntryKind::Request => a.fields.as_ref().map(FieldSet::to_vec),
                _ => None,
            },
            schema: Some(a.service.request_schema.clone()),
            sender_signature: a.signature.clone(),
            ..EntryDraft::new(kind, a.exchange_id, who.clone())
        }
    }

    /// An exchange id seen before: the first result, or a conflict.
    async fn replay_or_claim<'a>(
        &'a self,
        who: &Member,
        a: &Accepted,
    ) -> Result<Result<Claim<'a>, String>, Failure> {
        let id = a.exchange_id;
        // An id the hub just made (fresh time and randomness) was never
        // seen: only a sender's own id needs the lookup.
        let seen = match a.envelope.id {
            Some(_) => self.store.exchange(id).await.map_err(storage)?,
            None => None,
        };
        if let Some(row) = seen {
            return Ok(Err(self.replay(who, a, row)?));
        }
        match Claim::take(&self.in_flight, id) {
            Some(claim) => Ok(Ok(claim)),
            None => Err(ExchangeError::InProgress(id).into()),
        }
    }

    /// The first outcome of the exchange `row` for a request that reuses
    /// its id: its reply, or why there is none.
    fn replay(
        &self,
        who: &Member,
        a: &Accepted,
        row: ExchangeRow,
    ) -> Result<String, ExchangeError> {
        let id = a.exchange_id;
        if row.request_hash != a.request_hash || row.sender != who.to_string() {
            return Err(ExchangeError::IdConflict(id));
        }
        match row.state {
            ExchangeState::Done { reply } => self.open_message(id, &reply).map_err(|e| {
                warn!(error = %e, "a stored reply does not open");
                ExchangeError::from(e)
            }),
            ExchangeState::Pending => Err(ExchangeError::InProgress(id)),
        }
    }

    /// The outcome of an append refused because another hub opened the
    /// exchange first: that first outcome, as a retry would get it.
    async fn opened_elsewhere(&self, who: &Member, a: &Accepted) -> Result<String, Failure> {
        match self.store.exchange(a.exchange_id).await.map_err(storage)? {
            Some(row) => Ok(self.replay(who, a, row)?),
            // Abandoned after a failure since then: a retry runs it anew.
            None => Err(ExchangeError::InProgress(a.exchange_id).into()),
        }
    }

    async fn run_query(self: &Arc<Self>, who: &Member, a: Accepted) -> Result<String, Failure> {
        let _claim = match self.replay_or_claim(who, &a).await? {
            Ok(claim) => claim,
            Err(first_reply) => return Ok(first_reply),
        };
        let provider = a.service.provider.clone();
        let _slot = PendingSlot::take(self, &provider).ok_or_else(|| {
            Failure::from(ExchangeError::ProviderQueueFull(a.service.name.clone()))
        })?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(a.exchange_id, tx);
        let now = self.clock.unix_millis();
        let local = self.local.get(&provider).cloned();
        // An in-process adapter is called at once; its queue row waits out
        // the query timeout, for the worker to redeliver only if the call
        // never got answered.
        let recovery_delay = match local {
            Some(_) => u64::try_from(self.query_timeout.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(1000),
            None => 0,
        };
        let mut effects = vec![
            Effect::OpenExchange {
                sender: who.clone(),
                request_hash: a.request_hash.clone(),
                at_millis: now,
            },
            match (&self.remote, &local) {
                (Some(remote), None) => Effect::Dispatch {
                    recipient: provider.clone(),
                    instance: remote.broker.instance.clone(),
                },
                _ => Effect::Enqueue {
                    recipient: provider.clone(),
                    visible_at_millis: now.saturating_add(recovery_delay),
                },
            },
        ];
        effects.extend(self.subjects_of_request(&a));
        let body = self.body(a.canonical.clone());
        let mut draft = self.accepted_draft(who, &a, EntryKind::Request, vec![]);
        body.describe(&mut draft);
        let item = match self
            .append_decided(Some(a.registry_version), draft, body, effects)
            .await
        {
            Ok(item) => item,
            Err(e) => {
                self.forget_waiter(a.exchange_id);
                return match e {
                    AppendError::AlreadyOpen(_) => self.opened_elsewhere(who, &a).await,
                    e => Err(append_failed(e)),
                };
            }
        };
        match (&self.remote, local) {
            (Some(remote), None) => {
                self.dispatched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        a.exchange_id,
                        (item.sealed.record.clone(), a.service.clone()),
                    );
                remote.relay.notify_one();
            }
            (_, Some(adapter)) => {
                // Its own task: a slow adapter's answer is still logged
                // after the sender got its 504.
                let hub = self.clone();
                let (envelope, service) = (a.envelope.clone(), a.service.clone());
                tokio::spawn(async move {
                    hub.answer_in_process(
                        adapter.as_ref(),
                        &item.sealed.record,
                        envelope,
                        Some(&service),
                    )
                    .await;
                });
            }
            (None, None) => self.wake(&provider),
        }
        match tokio::time::timeout(self.query_timeout, rx).await {
            Ok(Ok(completion)) => completion,
            Ok(Err(_)) | Err(_) => {
                self.forget_waiter(a.exchange_id);
                Err(self.log_timeout(who, &a).await)
            }
        }
    }

    fn forget_waiter(&self, id: ExchangeId) {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        self.dispatched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    async fn log_timeout(&self, who: &Member, a: &Accepted) -> Failure {
        let error = ExchangeError::ProviderTimeout(a.service.name.clone());
        let mut draft = self.accepted_draft(who, a, EntryKind::Failure, vec![]);
        draft.error = Some(EntryError {
            code: error.code().into(),
            message: error.to_string(),
        });
        draft.sender_signature = None;
        draft.schema = None;
        let body = self.body(b"{}".to_vec());
        body.describe(&mut draft);
        match self.log.append(draft, body, vec![]).await {
            Ok(item) => Failure {
                error,
                logged: Some(Logged {
                    exchange_id: a.exchange_id,
                    index: item.sealed.record.statement.index,
                }),
            },
            Err(e) => append_failed(e),
        }
    }

    async fn publish(&self, who: &Member, mut a: Accepted) -> Result<String, Failure> {
        let _claim = match self.replay_or_claim(who, &a).await? {
            Ok(claim) => claim,
            Err(first_reply) => return Ok(first_reply),
        };
        let subscribers = std::mem::take(&mut a.subscribers);
        if let Some((recipient, size)) = self.backlog.first_full_inbox(&subscribers) {
            return Err(ExchangeError::InboxFull {
                recipient: recipient.clone(),
                size,
                max: self.backlog.inbox_max(),
            }
            .into());
        }
        let now = self.clock.unix_millis();
        let mut effects = vec![
            Effect::OpenExchange {
                sender: who.clone(),
                request_hash: a.request_hash.clone(),
                at_millis: now,
            },
            Effect::CloseExchange,
        ];
        effects.extend(subscribers.iter().map(|s| Effect::Enqueue {
            recipient: s.clone(),
            visible_at_millis: now,
        }));
        effects.extend(self.subjects_of_request(&a));
        let body = self.body(a.canonical.clone());
        let mut draft = self.accepted_draft(who, &a, EntryKind::Event, subscribers.clone());
        body.describe(&mut draft);
        let item = match self
            .append_decided(Some(a.registry_version), draft, body, effects)
            .await
        {
            Ok(item) => item,
            Err(AppendError::AlreadyOpen(_)) => return self.opened_elsewhere(who, &a).await,
            Err(e) => return Err(append_failed(e)),
        };
        for s in &subscribers {
            self.wake(s);
        }
        Ok(item.message())
    }

    /// Whether an exchange needs no answer any more: answered before (its
    /// waiter gets the first answer) or abandoned after a logged failure.
    async fn settled(&self, id: ExchangeId) -> Result<bool, StoreError> {
        match self.store.exchange(id).await? {
            Some(row) => match row.state {
                ExchangeState::Done { reply } => {
                    let reply = self.open_message(id, &reply).map_err(storage);
                    self.resolve(id, reply);
                    Ok(true)
                }
                ExchangeState::Pending => Ok(false),
            },
            None => Ok(true),
        }
    }

    /// Call an in-process adapter for the request `record` and log its
    /// answer (which also removes the request's queue row). A redelivery
    /// (`service` unknown) first checks that the exchange still needs it.
    #[instrument(skip_all, fields(provider = %adapter.provider(), exchange = %record.statement.draft.exchange_id))]
    async fn answer_in_process(
        &self,
        adapter: &dyn Adapter,
        record: &Record,
        envelope: Envelope,
        service: Option<&ServiceRecord>,
    ) {
        let provider = adapter.provider();
        let id = record.statement.draft.exchange_id;
        // Being answered right now (the direct call is still running).
        let Some(_answering) = Claim::take(&self.answering, id) else {
            return;
        };
        if service.is_none() {
            // At-least-once delivery: a message whose exchange is settled was handled.
            match self.settled(id).await {
                Ok(true) => {
                    let _ = self.queue.ack(provider, id).await;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "storage unavailable; the message will come back");
                    return;
                }
            }
        }
        let answer = adapter
            .handle(&AdapterRequest::from_envelope(id, envelope))
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = self
            .log_answer(provider, record, answer, true, service)
            .await
        {
            warn!(error = %e, "could not log the answer; the request will be delivered again");
        }
    }

    /// Hand one queued request to its in-process provider and log the answer.
    pub async fn deliver_to_adapter(&self, adapter: &dyn Adapter, delivery: Message) {
        let id = delivery.exchange_id;
        let parsed: Result<(Record, Envelope), String> =
            serde_json::from_str::<Value>(&delivery.text)
                .map_err(|e| e.to_string())
                .and_then(|mut m| {
                    let record =
                        serde_json::from_value(m["record"].take()).map_err(|e| e.to_string())?;
                    let envelope =
                        serde_json::from_value(m["body"].take()).map_err(|e| e.to_string())?;
                    Ok((record, envelope))
                });
        match parsed {
            Ok((record, envelope)) => {
                self.answer_in_process(adapter, &record, envelope, None)
                    .await;
            }
            Err(e) => {
                warn!(error = %e, exchange = %id, "unreadable queued message; dropping it");
                let _ = self.queue.ack(adapter.provider(), id).await;
            }
        }
    }

    /// Log a remote adapter's answer to the request logged for its
    /// exchange (idempotent: an answer to a settled exchange is dropped).
    /// `Err` means nothing was logged and the answer should come back later.
    #[instrument(skip_all, fields(provider = %provider, exchange = %id))]
    pub async fn complete_remote(
        &self,
        provider: &Member,
        id: ExchangeId,
        answer: Result<Value, String>,
    ) -> Result<(), RemoteAnswerError> {
        let Some(_answering) = Claim::take(&self.answering, id) else {
            return Err(RemoteAnswerError::Busy);
        };
        // Still waited on here: pending, and its request is known. Taken
        // out, so that a second answer goes the long way and finds it settled.
        let waited = self
            .dispatched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some((record, service)) = waited {
            if record.statement.draft.receiver.as_ref() != Some(provider) {
                self.dispatched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, (record, service));
                return Err(RemoteAnswerError::NotTheReceiver);
            }
            return self
                .log_answer(provider, &record, answer, false, Some(&service))
                .await
                .map_err(RemoteAnswerError::from);
        }
        if self.settled(id).await? {
            return Ok(());
        }
        let text = self
            .store
            .request_of(id)
            .await?
            .ok_or(RemoteAnswerError::UnknownExchange)?;
        let record: Record = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("the request of {id}: {e}")))?;
        if record.statement.draft.kind != EntryKind::Request
            || record.statement.draft.receiver.as_ref() != Some(provider)
        {
            return Err(RemoteAnswerError::NotTheReceiver);
        }
        self.log_answer(provider, &record, answer, false, None)
            .await?;
        Ok(())
    }

    /// Validate a provider's answer to the request `record`, log it (a
    /// response, or a failure that abandons the exchange; with `dequeue`,
    /// removing the request from the provider's queue in the same
    /// transaction), and hand it to the waiting caller.
    async fn log_answer(
        &self,
        provider: &Member,
        record: &Record,
        answer: Result<Value, String>,
        dequeue: bool,
        known: Option<&ServiceRecord>,
    ) -> Result<(), StoreError> {
        let asked = &record.statement.draft;
        let id = asked.exchange_id;
        let (Some(name), Some(version)) = (&asked.service, asked.version) else {
            return Err(StoreError::Corrupt(format!(
                "the request of {id} names no service"
            )));
        };
        let looked_up;
        let service = match known {
            Some(s) => s,
            None => {
                looked_up = self.store.service(name, version).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("service {name} v{version} vanished"))
                })?;
                &looked_up
            }
        };
        let schema = service.response_schema.clone().unwrap_or_default();
        let granted_fields = asked
            .fields
            .clone()
            .map(FieldSet::new)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("the request of {id}: {e}")))?;
        let checked = answer
            .map_err(|e| {
                warn!(error = %e, "adapter failed");
                ExchangeError::ProviderUnavailable(service.name.clone())
            })
            .and_then(|payload| match self.catalog.validate(&schema, &payload) {
                Ok(()) => Ok(payload),
                Err(r) => {
                    // The consumer learns where the answer broke the schema,
                    // never the values: they may be data it is not granted.
                    let violations = violations_of(r)
                        .into_iter()
                        .map(|v| {
                            warn!(pointer = %v.pointer, keyword = %v.keyword, "provider answer invalid");
                            Violation {
                                message: format!("the provider's answer fails {} at {:?}", v.keyword, v.pointer),
                                ..v
                            }
                        })
                        .collect();
                    Err(ExchangeError::ProviderInvalidResponse {
                        service: service.name.clone(),
                        violations,
                    })
                }
            });
        let mut draft = EntryDraft {
            receiver: Some(asked.sender.clone()),
            service: Some(service.name.clone()),
            version: Some(service.version),
            purpose: asked.purpose.clone(),
            case_ref: asked.case_ref.clone(),
            schema: Some(schema.clone()),
            refers_to: Some(record.statement.index),
            ..EntryDraft::new(EntryKind::Response, id, provider.clone())
        };
        // Minimise after validating: the provider answers in full, the
        // consumer receives (and the log keeps) only what it is granted.
        let checked = checked.map(|payload| match &granted_fields {
            Some(fields) => {
                let (kept, released) = fields.release(&payload);
                draft.fields = Some(released);
                kept
            }
            None => payload,
        });
        let (body, effects, failure) = match checked {
            Ok(payload) => match jcs::canonicalize(&payload) {
                Ok(body) => {
                    let mut effects = vec![Effect::CloseExchange];
                    effects.extend(self.index_subjects(self.catalog.subjects(&schema, &payload)));
                    (body, effects, None)
                }
                Err(e) => {
                    let err = ExchangeError::ProviderInvalidResponse {
                        service: service.name.clone(),
                        violations: vec![Violation {
                            pointer: String::new(),
                            keyword: "rfc8785".into(),
                            schema_path: String::new(),
                            message: e.to_string(),
                        }],
                    };
                    (b"{}".to_vec(), vec![Effect::AbandonExchange], Some(err))
                }
            },
            Err(err) => (b"{}".to_vec(), vec![Effect::AbandonExchange], Some(err)),
        };
        if let Some(err) = &failure {
            draft.kind = EntryKind::Failure;
            draft.schema = None;
            draft.fields = None;
            draft.error = Some(EntryError {
                code: err.code().into(),
                message: err.to_string(),
            });
        }
        let mut effects = effects;
        if dequeue {
            effects.push(Effect::Dequeue {
                recipient: provider.clone(),
            });
        }
        let body = self.body(body);
        body.describe(&mut draft);
        let item = match self.log.append(draft, body, effects).await {
            Ok(item) => item,
            // Answered meanwhile (a redelivery raced the first answer,
            // perhaps through another hub): that first answer stands, and
            // a caller still waiting here gets it.
            Err(AppendError::AlreadyAnswered(_)) => {
                self.settled(id).await?;
                return Ok(());
            }
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        };
        let completion = match failure {
            None => Ok(item.message()),
            Some(error) => Err(Failure {
                error,
                logged: Some(Logged {
                    exchange_id: id,
                    index: item.sealed.record.statement.index,
                }),
            }),
        };
        self.resolve(id, completion);
        Ok(())
    }

    fn resolve(&self, id: ExchangeId, completion: Completion) {
        let waiter = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(completion);
        }
    }

    /// The first result of an exchange `who` sent: `Some(None)` while it is
    /// pending, `Some(Some(reply))` when done, `None` if `who` sent no such exchange.
    pub async fn result_of(
        &self,
        who: &Member,
        id: ExchangeId,
    ) -> Result<Option<Option<String>>, Failure> {
        match self.store.exchange(id).await.map_err(storage)? {
            Some(row) if row.sender == who.to_string() => match row.state {
                ExchangeState::Pending => Ok(Some(None)),
                ExchangeState::Done { reply } => {
                    Ok(Some(Some(self.open_message(id, &reply).map_err(storage)?)))
                }
            },
            _ => Ok(None),
        }
    }

    /// Log an administrator's change with the registry writes it makes (in
    /// one transaction); the signed entry as a message.
    pub async fn append_admin(
        &self,
        mut draft: EntryDraft,
        plain: Vec<u8>,
        effects: Vec<Effect>,
    ) -> Result<String, AppendError> {
        let body = self.body(plain);
        body.describe(&mut draft);
        Ok(self.log.append(draft, body, effects).await?.message())
    }

    /// Lease up to `max` messages from `who`'s inbox: `{"messages": [...]}`.
    #[instrument(skip(self))]
    pub async fn inbox(&self, who: &Member, max: u32) -> Result<String, Failure> {
        let deliveries = self
            .queue
            .receive(who, max.clamp(1, 100))
            .await
            .map_err(storage)?;
        let messages: Vec<&str> = deliveries.iter().map(|d| d.text.as_str()).collect();
        Ok(format!("{{\"messages\":[{}]}}", messages.join(",")))
    }

    /// Acknowledge inbox messages; each acknowledgment is logged as a
    /// signed receipt in the transaction that removes the message from
    /// the queue: `{"receipts": [...], "unknown": [...]}`, each receipt
    /// its record as logged (canonical JSON).
    #[instrument(skip(self, ids))]
    pub async fn acknowledge(&self, who: &Member, ids: &[ExchangeId]) -> Result<String, Failure> {
        // An id named twice is acknowledged once.
        let mut seen = HashSet::new();
        let ids: Vec<ExchangeId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let waiting: HashMap<ExchangeId, Pending> = self
            .queue
            .pending(who, &ids)
            .await
            .map_err(storage)?
            .into_iter()
            .map(|m| (m.exchange_id, m))
            .collect();
        // Every receipt of the request is appended at once, so that they
        // share group commits instead of waiting for one commit each.
        let outcomes = futures_util::future::join_all(
            ids.iter()
                .filter_map(|id| waiting.get(id))
                .map(|m| self.log_receipt(who, m)),
        )
        .await;
        let mut receipts = Vec::with_capacity(outcomes.len());
        // A hyphenated UUID needs no escaping as a JSON string.
        let mut unknown: Vec<String> = ids
            .iter()
            .filter(|id| !waiting.contains_key(id))
            .map(|id| format!("\"{id}\""))
            .collect();
        for outcome in outcomes {
            match outcome? {
                Ok(receipt) => receipts.push(receipt),
                // Acknowledged by a request that raced this one (or,
                // leased here, through another hub): its receipt stands,
                // and this one is as if it came after.
                Err(id) => unknown.push(format!("\"{id}\"")),
            }
        }
        Ok(format!(
            "{{\"receipts\":[{}],\"unknown\":[{}]}}",
            receipts.join(","),
            unknown.join(",")
        ))
    }

    /// Log `who`'s receipt of `message` and remove the message, in one
    /// transaction; the receipt's record as logged, or `Err(id)` if the
    /// message was acknowledged meanwhile.
    async fn log_receipt(
        &self,
        who: &Member,
        message: &Pending,
    ) -> Result<Result<String, ExchangeId>, Failure> {
        let id = message.exchange_id;
        let acknowledged = message.entry.clone();
        let body = json!({"acknowledged": id, "recipient": who.to_string()});
        let body = jcs::canonicalize(&body).unwrap_or_default();
        let mut draft = EntryDraft {
            refers_to: acknowledged.as_ref().map(|r| r.index),
            version: acknowledged.as_ref().and_then(|r| r.version),
            service: acknowledged.and_then(|r| r.service),
            ..EntryDraft::new(EntryKind::Receipt, id, who.clone())
        };
        let body = self.body(body);
        body.describe(&mut draft);
        let dequeue = Effect::Acknowledge {
            recipient: who.clone(),
        };
        match self.log.append(draft, body, vec![dequeue]).await {
            Ok(item) => Ok(Ok(item.record_text())),
            Err(AppendError::AlreadyAcknowledged(id)) => Ok(Err(id)),
            Err(e) => Err(append_failed(e)),
        }
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn a_second_claim_fails_without_releasing_the_first() {
        let set = Mutex::new(HashSet::new());
        let id = ExchangeId::from_parts(1, [1; 10]);
        let first = Claim::take(&set, id).expect("free");
        assert!(Claim::take(&set, id).is_none());
        assert!(
            set.lock().unwrap().contains(&id),
            "the failed claim left the first in place"
        );
        drop(first);
        assert!(Claim::take(&set, id).is_some(), "free again");
    }
}
