//! The log's single writer, with group commit.
//!
//! Requests from every connection queue here; the writer takes all that are
//! waiting (up to a batch limit), places each at the next index after the
//! previous entry's leaf hash, seals the batch with one signature
//! (`hub_core::log::seal_batch`), and writes the whole batch and its
//! effects in one transaction. Only then does each caller get its sealed
//! entry back - an acknowledgment always follows durability.
//!
//! Placing and writing overlap: a sealer task places the next batch at the
//! position the batch being written is expected to leave, while a
//! committer task seals and writes batches in order. Under the store's
//! lock the committer checks that expectation against the log's real tail
//! and registry version, and places the batch again where it failed
//! (another hub appended, a commit failed, the registry changed), so what
//! is written is always chained to what is there.
//!
//! The writer also keeps the Merkle tree's right edge ([`Frontier`]) and
//! publishes the tree head after every commit, so checkpoints only ever
//! sign committed entries. Beside it, it keeps the roots of the tree's
//! complete subtrees of 256 leaves and more ([`SubtreeRoots`]), from which the transparency API serves proofs and
//! tiles without reading the log from its start, and stores the root of
//! each 256-leaf block as it completes. At start it rebuilds the tree up to
//! the last signed checkpoint from those block roots (and leaf hashes
//! where they are missing), refuses to run if that does not reproduce the
//! checkpoint (a truncated or rewritten log), and reads the leaf hashes
//! after it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hub_core::body::{DataKey, NONCE_LEN};
use hub_core::hash::Hash;
use hub_core::ids::ExchangeId;
use hub_core::jws::SigningKey;
use hub_core::log::{EntryDraft, EntryKind, Placed, place, seal_batch};
use hub_core::merkle::{Frontier, SubtreeRoots, TILE_WIDTH};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, instrument, warn};

use crate::clock::{Clock, Random};
use crate::store::{
    AppendItem, AtTail, Body, Claim, Claims, Effect, Presumed, Presumption, Store, StoreError,
    message_of,
};

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
    /// The entry would open an exchange that the log holds already (opened
    /// through another hub meanwhile); its first outcome stands.
    #[error("exchange {0} is already in the log")]
    AlreadyOpen(ExchangeId),
    /// The entry (a receipt) would acknowledge a message that is no longer
    /// queued: acknowledged meanwhile, through this hub or another, and
    /// that receipt stands.
    #[error("the message of exchange {0} was acknowledged already")]
    AlreadyAcknowledged(ExchangeId),
    /// The entry (an answer) would settle an exchange that is no longer
    /// pending: answered meanwhile, through this hub or another, and that
    /// answer stands.
    #[error("exchange {0} was answered already")]
    AlreadyAnswered(ExchangeId),
}

/// What the writer signs and seals with.
pub struct WriterKeys {
    /// Signs every entry.
    pub signing: Arc<SigningKey>,
    /// Seals the messages the queue and the outbox keep.
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
    /// The committed tree's kept subtree roots, at least as far as `head`.
    roots: Arc<RwLock<SubtreeRoots>>,
    /// Entries appended through this process, by [`EntryKind::ALL`]'s order.
    appended: Arc<[AtomicU64; EntryKind::ALL.len()]>,
}

/// How many leaf hashes to read at a time when rebuilding the tree: whole
/// blocks, so that a rebuild reading leaves stays at block boundaries.
const REBUILD_CHUNK: u64 = 200 * TILE_WIDTH;
/// How many block roots to read at a time when rebuilding the tree.
const REBUILD_BLOCKS: u64 = 50_000;

/// The tree as a rebuild grows it.
#[derive(Default)]
struct Rebuilt {
    frontier: Frontier,
    roots: SubtreeRoots,
    /// The last leaf hash read, if the last thing read was a leaf.
    last: Option<Hash>,
    /// The first block whose root was not read from the store.
    first_unread_block: Option<u64>,
}

impl Rebuilt {
    /// Grow the tree to `to` leaves, or to the end of the log: up to `to`
    /// from the kept block roots where there are some, else (and beyond)
    /// from the leaf hashes.
    async fn grow(&mut self, store: &dyn Store, to: Option<u64>) -> Result<(), StoreError> {
        loop {
            let size = self.frontier.size();
            if to == Some(size) {
                return Ok(());
            }
            if let Some(to) = to
                && size.is_multiple_of(TILE_WIDTH)
            {
                let whole = ((to - size) / TILE_WIDTH).min(REBUILD_BLOCKS);
                if whole > 0 {
                    let blocks = store.block_roots(size / TILE_WIDTH, whole).await?;
                    if !blocks.is_empty() {
                        for block in blocks {
                            self.frontier
                                .push_block(block, &mut self.roots)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        }
                        self.last = None;
                        continue;
                    }
                }
            }
            self.first_unread_block.get_or_insert(size / TILE_WIDTH);
            let mut end = size + REBUILD_CHUNK - size % TILE_WIDTH;
            if let Some(to) = to {
                end = end.min(to);
            }
            let leaves = store.leaf_hashes(size, end).await?;
            let Some(last) = leaves.last() else {
                return Ok(());
            };
            self.last = Some(*last);
            for leaf in &leaves {
                self.frontier.push_keeping(*leaf, &mut self.roots);
            }
        }
    }
}

/// Rebuild the tree and check it against the last signed checkpoint: up
/// to that checkpoint from the kept roots of 256-leaf blocks (leaves only
/// where a block's root is missing, and for the checkpoint's last partial
/// block), after it from the leaf hashes. Returns the tree, the last leaf
/// hash and how many blocks' roots the store is known to keep.
async fn rebuild(store: &dyn Store) -> Result<(Frontier, SubtreeRoots, Hash, u64), StoreError> {
    let checkpoint = store.latest_checkpoint().await?;
    let mut tree = Rebuilt::default();
    if let Some(cp) = &checkpoint {
        tree.grow(store, Some(cp.size)).await?;
        if tree.frontier.size() < cp.size {
            return Err(StoreError::Corrupt(format!(
                "the log has {} entries but a checkpoint of size {} was signed: the log was truncated",
                tree.frontier.size(),
                cp.size
            )));
        }
        if tree.frontier.root() != cp.root {
            return Err(StoreError::Corrupt(format!(
                "the stored leaves do not reproduce the signed checkpoint of size {}: the log was rewritten",
                cp.size
            )));
        }
    }
    tree.grow(store, None).await?;
    let size = tree.frontier.size();
    let last = match tree.last {
        Some(last) => last,
        None if size == 0 => [0u8; 32],
        // The log ends where a kept block does.
        None => store
            .leaf_hashes(size - 1, size)
            .await?
            .first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt(format!("the log has no entry {}", size - 1)))?,
    };
    let kept = tree.first_unread_block.unwrap_or(size / TILE_WIDTH);
    Ok((tree.frontier, tree.roots, last, kept))
}

impl LogWriter {
    /// Start the writer task over `store`, continuing after its last entry.
    pub async fn start(
        store: Arc<dyn Store>,
        keys: Arc<WriterKeys>,
        clock: Arc<dyn Clock>,
        batch_max: usize,
    ) -> Result<Self, StoreError> {
        let (frontier, roots, prev, blocks_kept) = rebuild(store.as_ref()).await?;
        let roots = Arc::new(RwLock::new(roots));
        info!(size = frontier.size(), "log tree rebuilt");
        let (head_tx, head) = watch::channel(TreeHead {
            size: frontier.size(),
            root: frontier.root(),
        });
        let (tx, rx) = mpsc::channel(batch_max.max(1) * 4);
        let mut state = WriterState {
            frontier,
            roots: Arc::clone(&roots),
            prev,
            head: head_tx,
            blocks_kept,
            blocks_tried: 0,
        };
        state.keep_blocks(store.as_ref()).await;
        let start = state.position(None);
        let (commits, work) = mpsc::unbounded_channel();
        let (landed_tx, landed) = mpsc::unbounded_channel();
        tokio::spawn(commit_all(work, state, landed_tx, store, keys));
        tokio::spawn(run(rx, commits, landed, start, clock, batch_max.max(1)));
        Ok(Self {
            tx,
            head,
            roots,
            appended: Arc::default(),
        })
    }

    /// `read` of the committed tree's kept subtree roots (at least as far
    /// as [`LogWriter::head`]), under the lock the writer takes to add to
    /// them: keep it short.
    pub fn with_subtree_roots<T>(&self, read: impl FnOnce(&SubtreeRoots) -> T) -> T {
        read(&self.roots.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many entries of each kind were appended through this process.
    pub fn appended_by_kind(&self) -> Vec<(&'static str, u64)> {
        EntryKind::ALL
            .iter()
            .zip(self.appended.iter())
            .map(|(kind, n)| (kind.as_str(), n.load(Ordering::Relaxed)))
            .collect()
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
        let kind = draft.kind;
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
        let item = rx.await.map_err(|_| AppendError::Stopped)??;
        if let Some(n) = EntryKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.appended.get(i))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Ok(item)
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
    roots: Arc<RwLock<SubtreeRoots>>,
    /// The last entry's leaf hash.
    prev: Hash,
    head: watch::Sender<TreeHead>,
    /// How many of the tree's first blocks have their roots in the store.
    blocks_kept: u64,
    /// How many blocks the tree had at the last attempt to keep them.
    blocks_tried: usize,
}

impl WriterState {
    /// Keep in the store the roots of the blocks completed since the last
    /// call, for the next start to read instead of their leaves. Every
    /// hub keeps them, the first one's stay; those that fail are tried
    /// again with the next block completed.
    async fn keep_blocks(&mut self, store: &dyn Store) {
        let new: Vec<Hash> = {
            let roots = self.roots.read().unwrap_or_else(PoisonError::into_inner);
            let blocks = roots.level(1);
            if blocks.len() <= self.blocks_tried {
                return;
            }
            self.blocks_tried = blocks.len();
            usize::try_from(self.blocks_kept)
                .ok()
                .and_then(|kept| blocks.get(kept..))
                .map(<[Hash]>::to_vec)
                .unwrap_or_default()
        };
        match store.keep_block_roots(self.blocks_kept, &new).await {
            Ok(()) => self.blocks_kept += new.len() as u64,
            Err(e) => warn!(
                error = %e,
                "cannot keep the log's block roots; a start reads those blocks' leaves until they are kept"
            ),
        }
    }

    fn adopt(&mut self, leaves: &[Hash]) {
        if let Some(last) = leaves.last() {
            self.prev = *last;
            let mut roots = self.roots.write().unwrap_or_else(PoisonError::into_inner);
            for leaf in leaves {
                self.frontier.push_keeping(*leaf, &mut roots);
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

    /// Where the next entry lands, as far as this writer knows.
    fn position(&self, registry: Option<u64>) -> Position {
        Position {
            size: self.frontier.size(),
            prev: self.prev,
            registry,
        }
    }
}

/// Where a batch lands: the index after the log's last entry, that
/// entry's leaf hash, and the registry version decisions there must have
/// been made at (`None` while unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    size: u64,
    prev: Hash,
    registry: Option<u64>,
}

/// What the committer did with one [`Work`]: where the log now ends, and
/// whether that is where the sealer expected it (its batch was sealed
/// ahead at the right place and written, and no other hub wrote).
struct Landed {
    at: Position,
    as_expected: bool,
}

/// What the sealer hands the committer: the refreshes asked for, then
/// the appends gathered since the last handover, placed ahead (all of
/// them, from `ahead`'s position) when they could be. The committer seals
/// the batch it writes with one signature.
struct Work {
    refreshes: Vec<oneshot::Sender<()>>,
    /// The time the entries are sealed at: when the first was gathered.
    now: time::OffsetDateTime,
    pending: Vec<Pending>,
    /// What `pending` takes that one entry only may.
    taken: HashSet<Claim>,
    ahead: Option<(Position, Vec<Placed>)>,
}

impl Default for Work {
    fn default() -> Self {
        Self {
            refreshes: Vec::new(),
            now: time::OffsetDateTime::UNIX_EPOCH,
            pending: Vec::new(),
            taken: HashSet::new(),
            ahead: None,
        }
    }
}

impl Work {
    fn is_empty(&self) -> bool {
        self.refreshes.is_empty() && self.pending.is_empty()
    }

    /// Place the appends gathered from `from` on after those placed
    /// before them, the first at `expect`; returns where the log ends
    /// after them, or `None` (and nothing placed ahead) if that cannot be
    /// known before the commit.
    fn place_ahead_from(&mut self, from: usize, expect: Option<Position>) -> Option<Position> {
        let at = expect?;
        if from == self.pending.len() {
            return Some(at);
        }
        let continues = from == 0 || self.ahead.as_ref().is_some_and(|(_, s)| s.len() == from);
        let placed = continues
            .then(|| place_ahead(&self.pending[from..], at, self.now))
            .flatten();
        let Some(placed) = placed else {
            self.ahead = None;
            return None;
        };
        let end = placed.last().map_or(at, |last| Position {
            size: at.size + placed.len() as u64,
            prev: last.leaf_hash,
            registry: at.registry,
        });
        match &mut self.ahead {
            Some((_, all)) => all.extend(placed),
            None => self.ahead = Some((at, placed)),
        }
        Some(end)
    }
}

/// What an append keeps while its draft is placed and sealed.
type Placing = (Body, Vec<Effect>, Reply);

/// Seal `placed` as one batch, with the message of each entry the queue or
/// the outbox keeps sealed on its own; `placing` holds their appends, in
/// order.
fn seal_items(
    placing: Vec<Placing>,
    placed: Vec<Placed>,
    keys: &WriterKeys,
) -> (Vec<AppendItem>, Vec<Reply>) {
    let sealed = match seal_batch(placed, &keys.signing) {
        Ok(sealed) => sealed,
        Err(e) => {
            let err = AppendError::Canonical(e.to_string());
            for (_, _, reply) in placing {
                let _ = reply.send(Err(err.clone()));
            }
            return (Vec::new(), Vec::new());
        }
    };
    placing
        .into_iter()
        .zip(sealed)
        .map(|((body, effects, reply), sealed)| {
            let sealed_message = Effect::need_sealed_message(&effects).then(|| {
                let mut nonce = [0u8; NONCE_LEN];
                keys.random.fill(&mut nonce);
                let id = sealed.record.statement.draft.exchange_id.to_string();
                keys.data
                    .seal_blob(id.as_bytes(), &message_of(&sealed, &body), nonce)
            });
            let item = AppendItem {
                sealed,
                body,
                effects,
                sealed_message,
            };
            (item, reply)
        })
        .unzip()
}

/// Place `pending` at `at` ahead of the commit, if nothing in it depends on
/// what only the store can tell: every decision made at `at`'s registry
/// version, no registry change, every entry with a canonical form.
fn place_ahead(
    pending: &[Pending],
    at: Position,
    now: time::OffsetDateTime,
) -> Option<Vec<Placed>> {
    let registry = at.registry?;
    let plain = pending.iter().all(|p| {
        p.decided_at.is_none_or(|v| v == registry)
            && !p.effects.iter().any(|e| matches!(e, Effect::Registry(_)))
    });
    if !plain {
        return None;
    }
    let (mut next, mut prev) = (at.size, at.prev);
    pending
        .iter()
        .map(|p| {
            let placed = place(p.draft.clone(), next, &prev, now).ok()?;
            next += 1;
            prev = placed.leaf_hash;
            Some(placed)
        })
        .collect()
}

/// The sealer: gathers waiting appends into the next batch and places
/// them, as they arrive, where the batch being written is expected to
/// leave the log; the moment the committer is free it gets the whole
/// batch to seal and write. Canonical forms and leaf hashes are thus made
/// while the commit before runs, and every append that arrives during a
/// commit joins the next one.
async fn run(
    mut rx: mpsc::Receiver<Job>,
    commits: mpsc::UnboundedSender<Work>,
    mut landed: mpsc::UnboundedReceiver<Landed>,
    start: Position,
    clock: Arc<dyn Clock>,
    batch_max: usize,
) {
    let mut jobs = Vec::with_capacity(batch_max);
    let mut next = Work::default();
    // Where the log ends once the committed, in-flight and gathered
    // entries are in, if known.
    let mut expect = Some(start);
    let mut busy = false;
    let mut open = true;
    while open || busy || !next.is_empty() {
        if !busy && !next.is_empty() {
            if commits.send(std::mem::take(&mut next)).is_err() {
                return;
            }
            busy = true;
        }
        let room = batch_max.saturating_sub(next.pending.len());
        tokio::select! {
            l = landed.recv(), if busy => {
                let Some(l) = l else { return };
                busy = false;
                if !l.as_expected {
                    // What was gathered was sealed on a wrong guess: seal it
                    // again where the log really ends.
                    next.ahead = None;
                    expect = next.place_ahead_from(0, Some(l.at));
                }
            }
            n = rx.recv_many(&mut jobs, room), if open && room > 0 => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let from = next.pending.len();
                for job in jobs.drain(..) {
                    match job {
                        // A second receipt for one message, or answer to one
                        // request, in one batch: the store would tell both
                        // that the message is queued, the request pending.
                        Job::Append(p) => match Claim::of(p.draft.exchange_id, &p.effects) {
                            Some(x) if next.taken.contains(&x) => {
                                let _ = p.reply.send(Err(taken(&x)));
                            }
                            x => {
                                next.taken.extend(x);
                                next.pending.push(*p);
                            }
                        },
                        Job::Refresh(done) => next.refreshes.push(done),
                    }
                }
                if from == 0 {
                    next.now = clock.now();
                }
                expect = next.place_ahead_from(from, expect);
            }
        }
    }
}

/// The committer: writes each batch in order and tells the sealer where
/// each left the log.
async fn commit_all(
    mut work: mpsc::UnboundedReceiver<Work>,
    mut state: WriterState,
    landed: mpsc::UnboundedSender<Landed>,
    store: Arc<dyn Store>,
    keys: Arc<WriterKeys>,
) {
    // The registry version of the last commit, if it did not change it.
    let mut registry = None;
    while let Some(mut w) = work.recv().await {
        let mut as_expected = true;
        if !w.refreshes.is_empty() {
            let before = state.frontier.size();
            if let Err(e) = state.catch_up(store.as_ref()).await {
                warn!(error = %e, "cannot read the log's tail");
            }
            for done in std::mem::take(&mut w.refreshes) {
                let _ = done.send(());
            }
            // Other hubs' entries, perhaps with registry changes.
            if state.frontier.size() != before {
                as_expected = false;
                registry = None;
            }
        }
        if !w.pending.is_empty() {
            let (took_ahead, after) = write_batch(w, &mut state, store.as_ref(), &keys).await;
            as_expected &= took_ahead;
            registry = after;
        }
        let _ = landed.send(Landed {
            at: state.position(registry),
            as_expected,
        });
        state.keep_blocks(store.as_ref()).await;
    }
}

/// Place `pending` in order from index `next` after `prev` and seal them
/// as one batch; entries that have no canonical form, or were decided on
/// another registry version than `registry` (or before a registry change
/// earlier in the batch), are answered at once and left out.
fn seal_all(
    pending: Vec<Pending>,
    mut next: u64,
    mut prev: Hash,
    registry: u64,
    now: time::OffsetDateTime,
    keys: &WriterKeys,
) -> (Vec<AppendItem>, Vec<Reply>) {
    let mut placing = Vec::with_capacity(pending.len());
    let mut placed = Vec::with_capacity(pending.len());
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
        match place(p.draft, next, &prev, now) {
            Ok(entry) => {
                next += 1;
                prev = entry.leaf_hash;
                placed.push(entry);
                placing.push((p.body, p.effects, p.reply));
            }
            Err(e) => {
                let _ = p.reply.send(Err(AppendError::Canonical(e.to_string())));
            }
        }
    }
    seal_items(placing, placed, keys)
}

/// Whether the entry opens an exchange (a request or an event).
fn opens_exchange(p: &Pending) -> bool {
    p.effects
        .iter()
        .any(|e| matches!(e, Effect::OpenExchange { .. }))
}

/// The error of an entry whose claim was taken.
fn taken(claim: &Claim) -> AppendError {
    match claim {
        Claim::Receipt(_, id) => AppendError::AlreadyAcknowledged(*id),
        Claim::Answer(id) => AppendError::AlreadyAnswered(*id),
    }
}

/// Whether the store found `claim` taken already.
fn gone(claim: &Claim, tail: &AtTail<'_>) -> bool {
    match claim {
        Claim::Receipt(m, id) => tail.acknowledged.iter().any(|(to, of)| to == m && of == id),
        Claim::Answer(id) => tail.settled.contains(id),
    }
}

/// Seal the entries placed ahead for `pending`, as one batch.
fn take_ahead(
    pending: Vec<Pending>,
    placed: Vec<Placed>,
    keys: &WriterKeys,
) -> (Vec<AppendItem>, Vec<Reply>) {
    let placing = pending
        .into_iter()
        .map(|p| (p.body, p.effects, p.reply))
        .collect();
    seal_items(placing, placed, keys)
}

/// Write one batch after whatever the store holds beyond the frontier.
/// Returns whether it was written as placed ahead, and the registry
/// version after it (unknown if it was not written or may have changed it).
#[instrument(skip_all, fields(entries = batch.pending.len(), first = state.frontier.size()))]
async fn write_batch(
    batch: Work,
    state: &mut WriterState,
    store: &dyn Store,
    keys: &WriterKeys,
) -> (bool, Option<u64>) {
    let Work {
        now,
        pending,
        ahead,
        ..
    } = batch;

    let (known, prev) = (state.frontier.size(), state.prev);
    // Placed ahead exactly where the log ends as far as this writer knows:
    // the store can check that in the write itself instead of reading the
    // tail first. Only if another writer moved the tail meanwhile does the
    // batch take the reading path below, sealed again.
    let (pending, ahead) = match ahead {
        Some((at, placed))
            if at.size == known && at.prev == prev && placed.len() == pending.len() =>
        {
            match at.registry {
                Some(registry_version) => {
                    let at = Presumed {
                        size: known,
                        registry_version,
                    };
                    match write_presumed(at, pending, placed, state, store, keys).await {
                        Ok(done) => return done,
                        Err(moved) => (moved, None),
                    }
                }
                None => (pending, Some((at, placed))),
            }
        }
        other => (pending, other),
    };
    let claims = Claims::of(
        pending
            .iter()
            .map(|p| (p.draft.exchange_id, &p.effects[..])),
    );
    let mut replies = Vec::new();
    let mut registry_after = None;
    let mut took_ahead = false;
    // The store reads what other hubs appended since `known` under its
    // writers' lock; the batch is placed after that (again, unless
    // it was placed ahead at exactly that place) and sealed.
    let sealing = |tail: AtTail<'_>| {
        let registry = tail.registry_version;
        let at = Position {
            size: known + tail.adopted.len() as u64,
            prev: tail.adopted.last().copied().unwrap_or(prev),
            registry: Some(registry),
        };
        // Two hubs can take one exchange id at once (a sender retrying
        // through the load balancer); the first in the log keeps it, and
        // the other's sender gets that first outcome, never a second entry.
        // Likewise a message acknowledged twice at once gets one receipt,
        // and a request answered twice at once one answer.
        let refusal = |p: &Pending| {
            let id = p.draft.exchange_id;
            if opens_exchange(p) && tail.opened.contains(&id) {
                return Some(AppendError::AlreadyOpen(id));
            }
            Claim::of(id, &p.effects)
                .filter(|c| gone(c, &tail))
                .map(|c| taken(&c))
        };
        let mut kept = Vec::with_capacity(pending.len());
        let mut refused = false;
        for p in pending {
            match refusal(&p) {
                Some(error) => {
                    refused = true;
                    let _ = p.reply.send(Err(error));
                }
                None => kept.push(p),
            }
        }
        let pending = kept;
        let ahead = ahead.filter(|_| !refused);
        let changes_registry = pending
            .iter()
            .any(|p| p.effects.iter().any(|e| matches!(e, Effect::Registry(_))));
        registry_after = (!changes_registry).then_some(registry);
        let (items, r) = match ahead {
            // The sealer keeps a batch placed ahead only whole; the length
            // check keeps a slip there from dropping appends unwritten.
            Some((expected, placed)) if expected == at && placed.len() == pending.len() => {
                took_ahead = true;
                take_ahead(pending, placed, keys)
            }
            _ => seal_all(pending, at.size, at.prev, registry, now, keys),
        };
        replies = r;
        items
    };
    let started = std::time::Instant::now();
    match store
        .append_at_tail(known, &claims, Box::new(sealing))
        .await
    {
        Ok(tail) => {
            landed(
                state,
                &tail.adopted,
                tail.written,
                replies,
                took_ahead,
                started,
            );
            (took_ahead, registry_after)
        }
        Err(e) => {
            failed(&e, replies);
            (false, None)
        }
    }
}

/// Write a batch placed ahead at `at`, the end of the log as this writer
/// knows it, with [`Store::append_presumed`]. `Err`: the log had moved and
/// nothing was written; the batch's appends come back to be sealed again.
async fn write_presumed(
    at: Presumed,
    pending: Vec<Pending>,
    placed: Vec<Placed>,
    state: &mut WriterState,
    store: &dyn Store,
    keys: &WriterKeys,
) -> Result<(bool, Option<u64>), Vec<Pending>> {
    let decided: Vec<Option<u64>> = pending.iter().map(|p| p.decided_at).collect();
    let (items, replies) = take_ahead(pending, placed, keys);
    let started = std::time::Instant::now();
    match store.append_presumed(at, items).await {
        Ok(Presumption::Written(written)) => {
            landed(state, &[], written, replies, true, started);
            // Placed ahead only without registry changes (`place_ahead`).
            Ok((true, Some(at.registry_version)))
        }
        Ok(Presumption::Moved(items)) => {
            debug!(at = at.size, "the log moved: sealing the batch again");
            Err(items
                .into_iter()
                .zip(decided)
                .zip(replies)
                .map(|((item, decided_at), reply)| Pending {
                    draft: item.sealed.record.statement.draft,
                    body: item.body,
                    effects: item.effects,
                    decided_at,
                    reply,
                })
                .collect())
        }
        Err(e) => {
            failed(&e, replies);
            Ok((false, None))
        }
    }
}

/// A batch is durable after `adopted` (other writers' entries): advance
/// the tree and answer each append.
fn landed(
    state: &mut WriterState,
    adopted: &[Hash],
    written: Vec<AppendItem>,
    replies: Vec<Reply>,
    sealed_ahead: bool,
    started: std::time::Instant,
) {
    state.adopt(adopted);
    let leaves: Vec<Hash> = written.iter().map(|i| i.sealed.leaf_hash).collect();
    state.adopt(&leaves);
    state.publish_head();
    debug!(
        written = written.len(),
        adopted = adopted.len(),
        sealed_ahead,
        micros = started.elapsed().as_micros(),
        "batch committed"
    );
    for (item, reply) in written.into_iter().zip(replies) {
        let _ = reply.send(Ok(item));
    }
}

/// A batch did not become durable: every append hears so.
fn failed(e: &StoreError, replies: Vec<Reply>) {
    // Usually nothing of the batch was written and the next batch reuses
    // its indexes; a commit whose outcome was lost is adopted by the next
    // batch's tail read (its presumed write finds the log moved).
    error!(error = %e, "group commit failed");
    let err = AppendError::Store(e.to_string());
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}
