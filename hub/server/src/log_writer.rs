//! The log's single writer, with group commit.
//!
//! Requests from every connection queue here; the writer takes all that are
//! waiting (up to a batch limit), places each at the next index after the
//! previous entry's leaf hash, signs it, and writes the whole batch and its
//! effects in one transaction. Only then does each caller get its sealed
//! entry back - an acknowledgment always follows durability.
//!
//! The writer also keeps the Merkle tree's right edge ([`Frontier`]) and
//! publishes the tree head after every commit, so checkpoints only ever
//! sign committed entries. At start it rebuilds the frontier from the stored
//! leaf hashes and refuses to run if they do not reproduce the last signed
//! checkpoint (a truncated or rewritten log).

use std::sync::Arc;

use hub_core::body::{DataKey, NONCE_LEN};
use hub_core::hash::Hash;
use hub_core::jws::SigningKey;
use hub_core::log::{EntryDraft, seal};
use hub_core::merkle::Frontier;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, instrument, warn};

use crate::clock::{Clock, Random};
use crate::store::{AppendItem, Body, Effect, Store, StoreError};

type Reply = oneshot::Sender<Result<AppendItem, AppendError>>;

/// What a caller hands the writer.
struct Pending {
    draft: EntryDraft,
    body: Body,
    effects: Vec<Effect>,
    /// The registry version the entry was decided at, if it records a
    /// decision (see `crate::registry_cache`).
    decided_at: Option<u64>,
    reply: Reply,
}

/// The writer's work.
enum Job {
    Append(Box<Pending>),
    /// Adopt what other hubs appended, then answer.
    Refresh(oneshot::Sender<()>),
}

/// An append did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the log is unavailable: {0}")]
    Store(String),
    #[error("the entry has no canonical form: {0}")]
    Canonical(String),
    #[error("the log writer has stopped")]
    Stopped,
    /// The entry was decided on an older registry than the log's tail
    /// holds, which is at `now` or later; decide it again.
    #[error("the registry changed while the entry was decided")]
    RegistryChanged { now: u64 },
}

/// What the writer signs and seals with.
pub struct WriterKeys {
    /// Signs every entry.
    pub signing: Arc<SigningKey>,
    /// Seals the messages the reply cache and the queue keep.
    pub data: Arc<DataKey>,
    /// Nonces.
    pub random: Arc<dyn Random>,
}

/// The size and root of the committed tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Job>,
    head: watch::Receiver<TreeHead>,
}

/// How many leaf hashes to read at a time when rebuilding the tree.
const REBUILD_CHUNK: u64 = 50_000;

/// Rebuild the tree from the stored leaves and check it against the last
/// signed checkpoint.
async fn rebuild(store: &dyn Store) -> Result<(Frontier, Hash), StoreError> {
    let checkpoint = store.latest_checkpoint().await?;
    let mut frontier = Frontier::new();
    let mut last = [0u8; 32];
    loop {
        let from = frontier.size();
        if let Some(cp) = &checkpoint
            && cp.size == from
            && cp.root != frontier.root()
        {
            return Err(StoreError::Corrupt(format!(
                "the stored leaves do not reproduce the signed checkpoint of size {}: the log was rewritten",
                cp.size
            )));
        }
        let chunk = store.leaf_hashes(from, from + REBUILD_CHUNK).await?;
        if chunk.is_empty() {
            break;
        }
        for leaf in &chunk {
            frontier.push(*leaf);
        }
        last = chunk[chunk.len() - 1];
    }
    if let Some(cp) = &checkpoint
        && cp.size > frontier.size()
    {
        return Err(StoreError::Corrupt(format!(
            "the log has {} entries but a checkpoint of size {} was signed: the log was truncated",
            frontier.size(),
            cp.size
        )));
    }
    Ok((frontier, last))
}

impl LogWriter {
    /// Start the writer task over `store`, continuing after its last entry.
    pub async fn start(
        store: Arc<dyn Store>,
        keys: Arc<WriterKeys>,
        clock: Arc<dyn Clock>,
        batch_max: usize,
    ) -> Result<Self, StoreError> {
        let (frontier, prev) = rebuild(store.as_ref()).await?;
        info!(size = frontier.size(), "log tree rebuilt");
        let (head_tx, head) = watch::channel(TreeHead {
            size: frontier.size(),
            root: frontier.root(),
        });
        let (tx, rx) = mpsc::channel(batch_max.max(1) * 4);
        let state = WriterState {
            frontier,
            prev,
            head: head_tx,
        };
        tokio::spawn(run(rx, state, store, keys, clock, batch_max.max(1)));
        Ok(Self { tx, head })
    }

    /// The committed tree's head now.
    pub fn head(&self) -> TreeHead {
        *self.head.borrow()
    }

    /// Append one entry with its effects; returns once it is durable.
    pub async fn append(
        &self,
        draft: EntryDraft,
        body: Body,
        effects: Vec<Effect>,
    ) -> Result<AppendItem, AppendError> {
        self.append_decided(None, draft, body, effects).await
    }

    /// Append one entry that records a decision made on the registry at
    /// version `decided_at`: refused with [`AppendError::RegistryChanged`]
    /// unless the registry is still at that version where the entry lands.
    pub async fn append_decided(
        &self,
        decided_at: Option<u64>,
        draft: EntryDraft,
        body: Body,
        effects: Vec<Effect>,
    ) -> Result<AppendItem, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Append(Box::new(Pending {
                draft,
                body,
                effects,
                decided_at,
                reply,
            })))
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// Bring the tree head up to what the store holds, including other
    /// hubs' appends; returns once done.
    pub async fn refresh(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job::Refresh(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct WriterState {
    frontier: Frontier,
    /// The last entry's leaf hash.
    prev: Hash,
    head: watch::Sender<TreeHead>,
}

impl WriterState {
    fn adopt(&mut self, leaves: &[Hash]) {
        if let Some(last) = leaves.last() {
            self.prev = *last;
            for leaf in leaves {
                self.frontier.push(*leaf);
            }
        }
    }

    fn publish_head(&self) {
        let _ = self.head.send(TreeHead {
            size: self.frontier.size(),
            root: self.frontier.root(),
        });
    }

    /// Adopt whatever entries the store holds beyond the frontier (other
    /// hubs' appends, or a commit whose outcome was lost).
    async fn catch_up(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        loop {
            let from = self.frontier.size();
            let tail = store.leaf_hashes(from, from + REBUILD_CHUNK).await?;
            if tail.is_empty() {
                break;
            }
            self.adopt(&tail);
        }
        self.publish_head();
        Ok(())
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    mut state: WriterState,
    store: Arc<dyn Store>,
    keys: Arc<WriterKeys>,
    clock: Arc<dyn Clock>,
    batch_max: usize,
) {
    let mut jobs = Vec::with_capacity(batch_max);
    let mut batch = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut jobs, batch_max).await > 0 {
        for job in jobs.drain(..) {
            match job {
                Job::Append(p) => batch.push(*p),
                Job::Refresh(done) => {
                    if let Err(e) = state.catch_up(store.as_ref()).await {
                        warn!(error = %e, "cannot read the log's tail");
                    }
                    let _ = done.send(());
                }
            }
        }
        if !batch.is_empty() {
            write_batch(
                &mut batch,
                &mut state,
                store.as_ref(),
                &keys,
                clock.as_ref(),
            )
            .await;
        }
    }
}

/// Seal `pending` in order from index `next` after `prev`; entries that
/// have no canonical form, or were decided on another registry version
/// than `registry` (or before a registry change earlier in the batch), are
/// answered at once and left out.
fn seal_all(
    pending: Vec<Pending>,
    mut next: u64,
    mut prev: Hash,
    registry: u64,
    now: time::OffsetDateTime,
    keys: &WriterKeys,
) -> (Vec<AppendItem>, Vec<Reply>) {
    let mut items = Vec::with_capacity(pending.len());
    let mut replies = Vec::with_capacity(pending.len());
    let mut changed = false;
    for p in pending {
        if p.decided_at.is_some_and(|v| changed || v != registry) {
            let _ = p
                .reply
                .send(Err(AppendError::RegistryChanged { now: registry }));
            continue;
        }
        // Not every registry change advances the version (a witness, a
        // revocation), so the next batch's read tells what it is now.
        changed |= p.effects.iter().any(|e| matches!(e, Effect::Registry(_)));
        match seal(p.draft, next, &prev, now, &keys.signing) {
            Ok(sealed) => {
                next += 1;
                prev = sealed.leaf_hash;
                let mut item = AppendItem {
                    sealed,
                    body: p.body,
                    effects: p.effects,
                    sealed_message: Vec::new(),
                };
                let mut nonce = [0u8; NONCE_LEN];
                keys.random.fill(&mut nonce);
                let id = item.sealed.record.statement.draft.exchange_id.to_string();
                item.sealed_message =
                    keys.data
                        .seal_blob(id.as_bytes(), item.message().as_bytes(), nonce);
                items.push(item);
                replies.push(p.reply);
            }
            Err(e) => {
                let _ = p.reply.send(Err(AppendError::Canonical(e.to_string())));
            }
        }
    }
    (items, replies)
}

#[instrument(skip_all, fields(entries = batch.len(), first = state.frontier.size()))]
async fn write_batch(
    batch: &mut Vec<Pending>,
    state: &mut WriterState,
    store: &dyn Store,
    keys: &WriterKeys,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let pending = std::mem::take(batch);
    let (known, prev) = (state.frontier.size(), state.prev);
    let mut replies = Vec::new();
    // The store reads what other hubs appended since `known` under its
    // writers' lock; the batch is placed after that.
    let sealing = |adopted: &[Hash], registry: u64| {
        let next = known + adopted.len() as u64;
        let prev = adopted.last().copied().unwrap_or(prev);
        let (items, r) = seal_all(pending, next, prev, registry, now, keys);
        replies = r;
        items
    };
    match store.append_at_tail(known, Box::new(sealing)).await {
        Ok(tail) => {
            state.adopt(&tail.adopted);
            let leaves: Vec<Hash> = tail.written.iter().map(|i| i.sealed.leaf_hash).collect();
            state.adopt(&leaves);
            state.publish_head();
            for (item, reply) in tail.written.into_iter().zip(replies) {
                let _ = reply.send(Ok(item));
            }
        }
        Err(e) => {
            // Usually nothing of the batch was written and the next batch
            // reuses its indexes; a commit whose outcome was lost is adopted
            // by the next batch's tail read.
            error!(error = %e, "group commit failed");
            let err = AppendError::Store(e.to_string());
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
