//! The log's single writer, with group commit.
//!
//! Requests from every connection queue here; the writer takes all that are
//! waiting (up to a batch limit), places each at the next index after the
//! previous entry's leaf hash, signs it, and writes the whole batch and its
//! effects in one transaction. Only then does each caller get its sealed
//! entry back - an acknowledgment always follows durability.

use std::sync::Arc;

use hub_core::hash::Hash;
use hub_core::jws::SigningKey;
use hub_core::log::{EntryDraft, seal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, instrument};

use crate::clock::Clock;
use crate::store::{AppendItem, Effect, Store, StoreError};

/// What a caller hands the writer.
struct Pending {
    draft: EntryDraft,
    body: Vec<u8>,
    effects: Vec<Effect>,
    reply: oneshot::Sender<Result<AppendItem, AppendError>>,
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
}

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Pending>,
}

impl LogWriter {
    /// Start the writer task over `store`, continuing after its last entry.
    pub async fn start(
        store: Arc<dyn Store>,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        batch_max: usize,
    ) -> Result<Self, StoreError> {
        let head = store.log_head().await?;
        let (tx, rx) = mpsc::channel(batch_max.max(1) * 4);
        let state = WriterState {
            next: head.map_or(0, |(i, _)| i + 1),
            prev: head.map_or([0; 32], |(_, h)| h),
        };
        tokio::spawn(run(rx, state, store, key, clock, batch_max.max(1)));
        Ok(Self { tx })
    }

    /// Append one entry with its effects; returns once it is durable.
    pub async fn append(
        &self,
        draft: EntryDraft,
        body: Vec<u8>,
        effects: Vec<Effect>,
    ) -> Result<AppendItem, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                draft,
                body,
                effects,
                reply,
            })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }
}

struct WriterState {
    next: u64,
    prev: Hash,
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    mut state: WriterState,
    store: Arc<dyn Store>,
    key: Arc<SigningKey>,
    clock: Arc<dyn Clock>,
    batch_max: usize,
) {
    let mut batch = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut batch, batch_max).await > 0 {
        write_batch(&mut batch, &mut state, store.as_ref(), &key, clock.as_ref()).await;
    }
}

#[instrument(skip_all, fields(entries = batch.len(), first = state.next))]
async fn write_batch(
    batch: &mut Vec<Pending>,
    state: &mut WriterState,
    store: &dyn Store,
    key: &SigningKey,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let mut items = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let (mut next, mut prev) = (state.next, state.prev);
    for p in batch.drain(..) {
        match seal(p.draft, next, &prev, now, key) {
            Ok(sealed) => {
                next += 1;
                prev = sealed.leaf_hash;
                items.push(AppendItem {
                    sealed,
                    body: p.body,
                    effects: p.effects,
                });
                replies.push(p.reply);
            }
            Err(e) => {
                let _ = p.reply.send(Err(AppendError::Canonical(e.to_string())));
            }
        }
    }
    if items.is_empty() {
        return;
    }
    match store.append(&items).await {
        Ok(()) => {
            state.next = next;
            state.prev = prev;
            for (item, reply) in items.into_iter().zip(replies) {
                let _ = reply.send(Ok(item));
            }
        }
        Err(e) => {
            // Nothing of the batch was written; the next batch reuses its indexes.
            error!(error = %e, "group commit failed");
            let err = AppendError::Store(e.to_string());
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
