//! Delivery to recipients (provider adapters, subscribers' inboxes) behind
//! one trait. Messages enter through the store's transactional outbox (an
//! [`crate::store::Effect::Enqueue`] in the same transaction as their log
//! entry); a recipient receives them at least once, and acknowledges each
//! by exchange id after its own work is durable.
//!
//! The embedded queue is the outbox table itself: receiving leases rows for
//! a visibility timeout, after which an unacknowledged message comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::ids::{ExchangeId, Member};

use crate::clock::Clock;
use hub_core::body::DataKey;

pub use crate::store::MessageEntry;
use crate::store::{Delivery, Store, StoreError};

/// A message for a recipient: `{"record", "body", "body_salt"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub exchange_id: ExchangeId,
    pub text: String,
    pub attempts: u32,
}

/// A message waiting for its recipient's acknowledgement, as much of it
/// as a receipt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub exchange_id: ExchangeId,
    /// The entry the message carries; `None` if its record does not read.
    pub entry: Option<MessageEntry>,
}

/// A recipient's messages.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Up to `max` messages for `recipient`, hidden from other receivers
    /// until acknowledged or until the visibility timeout passes.
    async fn receive(&self, recipient: &Member, max: u32) -> Result<Vec<Message>, StoreError>;
    /// Those of messages `ids` that wait unacknowledged for `recipient`,
    /// in no particular order. A message this hub leased may be among them
    /// though acknowledged meanwhile elsewhere: whether it is still there
    /// is settled where its receipt commits (`store::Claims`).
    async fn pending(
        &self,
        recipient: &Member,
        ids: &[ExchangeId],
    ) -> Result<Vec<Pending>, StoreError>;
    /// Acknowledge a message; whether it was still there.
    async fn ack(&self, recipient: &Member, id: ExchangeId) -> Result<bool, StoreError>;
}

/// The embedded durable queue: a table in the hub's own database, its
/// messages sealed with the data key at rest.
pub struct EmbeddedQueue {
    store: Arc<dyn Store>,
    data_key: Arc<DataKey>,
    clock: Arc<dyn Clock>,
    visibility: Duration,
    leased: Mutex<Leased>,
}

/// What a receipt names of each event message this hub leased and has not
/// seen acknowledged, by recipient: an acknowledgement of those needs no
/// read from the store (on PostgreSQL that read was a fifth of the
/// database's time per delivered event). What an entry is never changes,
/// so a stale memo cannot name the wrong one, and whether the message
/// still waits is settled where the receipt commits. Bounded: when full it
/// is emptied, and acknowledgements read from the store again until it
/// fills.
#[derive(Default)]
struct Leased {
    by_recipient: HashMap<Member, HashMap<ExchangeId, MessageEntry>>,
}

/// Most messages [`Leased`] remembers (a few MB).
const LEASED_MEMO_MAX: usize = 65_536;

impl Leased {
    /// Messages remembered, of every recipient (a handful of them).
    fn len(&self) -> usize {
        self.by_recipient.values().map(HashMap::len).sum()
    }

    fn remember(&mut self, recipient: &Member, messages: Vec<(ExchangeId, MessageEntry)>) {
        if self.len().saturating_add(messages.len()) > LEASED_MEMO_MAX {
            // Leased and never acknowledged, mostly (a subscriber gone).
            self.by_recipient.clear();
        }
        self.by_recipient
            .entry(recipient.clone())
            .or_default()
            .extend(messages);
    }

    /// The remembered of `ids` (forgotten now), and the rest.
    fn take(&mut self, recipient: &Member, ids: &[ExchangeId]) -> (Vec<Pending>, Vec<ExchangeId>) {
        let Some(of_recipient) = self.by_recipient.get_mut(recipient) else {
            return (Vec::new(), ids.to_vec());
        };
        let mut known = Vec::new();
        let mut rest = Vec::new();
        for id in ids {
            match of_recipient.remove(id) {
                Some(entry) => known.push(Pending {
                    exchange_id: *id,
                    entry: Some(entry),
                }),
                None => rest.push(*id),
            }
        }
        if of_recipient.is_empty() {
            self.by_recipient.remove(recipient);
        }
        (known, rest)
    }
}

impl EmbeddedQueue {
    pub fn new(
        store: Arc<dyn Store>,
        data_key: Arc<DataKey>,
        clock: Arc<dyn Clock>,
        visibility: Duration,
    ) -> Self {
        Self {
            store,
            data_key,
            clock,
            visibility,
            leased: Mutex::default(),
        }
    }

    fn open(&self, d: Delivery) -> Result<Message, StoreError> {
        Ok(Message {
            text: d.message.open(&self.data_key, d.exchange_id)?,
            exchange_id: d.exchange_id,
            attempts: d.attempts,
        })
    }

    fn leased(&self) -> std::sync::MutexGuard<'_, Leased> {
        // The memo holds no invariant a panic could break halfway.
        self.leased
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn receive(&self, recipient: &Member, max: u32) -> Result<Vec<Message>, StoreError> {
        let visibility = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        let leased = self
            .store
            .lease(recipient, max, self.clock.unix_millis(), visibility)
            .await?;
        let mut messages = Vec::with_capacity(leased.len());
        let mut entries = Vec::with_capacity(leased.len());
        for delivery in leased {
            // An event's message (its row points at the entry): only an
            // acknowledgement removes it. A queued request is removed by
            // its answer, and so never looked up here again.
            match delivery
                .message
                .open_entry(&self.data_key, delivery.exchange_id)?
            {
                Some((text, entry)) => {
                    entries.push((delivery.exchange_id, entry));
                    messages.push(Message {
                        text,
                        exchange_id: delivery.exchange_id,
                        attempts: delivery.attempts,
                    });
                }
                None => messages.push(self.open(delivery)?),
            }
        }
        self.leased().remember(recipient, entries);
        Ok(messages)
    }

    async fn pending(
        &self,
        recipient: &Member,
        ids: &[ExchangeId],
    ) -> Result<Vec<Pending>, StoreError> {
        let (mut pending, rest) = self.leased().take(recipient, ids);
        if rest.is_empty() {
            return Ok(pending);
        }
        for d in self.store.deliveries(recipient, &rest).await? {
            pending.push(Pending {
                entry: d.message.record_as(&self.data_key, d.exchange_id)?,
                exchange_id: d.exchange_id,
            });
        }
        Ok(pending)
    }

    async fn ack(&self, recipient: &Member, id: ExchangeId) -> Result<bool, StoreError> {
        self.store.remove_delivery(recipient, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ExchangeId {
        ExchangeId::from_parts(1, [n; 10])
    }

    fn entry(index: u64) -> MessageEntry {
        MessageEntry {
            index,
            service: None,
            version: None,
        }
    }

    #[test]
    fn a_leased_message_is_named_once_and_only_to_its_recipient() {
        let tax = "000.00.00.G08/tax".parse::<Member>().unwrap();
        let social = "000.00.00.G22/social-insurance".parse::<Member>().unwrap();
        let mut leased = Leased::default();
        leased.remember(&tax, vec![(id(1), entry(7)), (id(2), entry(8))]);
        let (known, rest) = leased.take(&social, &[id(1)]);
        assert!(known.is_empty(), "another recipient's lease");
        assert_eq!(rest, [id(1)]);
        let (known, rest) = leased.take(&tax, &[id(1), id(3)]);
        assert_eq!(
            known,
            [Pending {
                exchange_id: id(1),
                entry: Some(entry(7))
            }]
        );
        assert_eq!(rest, [id(3)], "never leased here: read from the store");
        let (known, rest) = leased.take(&tax, &[id(1)]);
        assert!(known.is_empty(), "taken by the first acknowledgement");
        assert_eq!(rest, [id(1)]);
        assert_eq!(leased.len(), 1);
    }

    #[test]
    fn a_full_memo_is_emptied_rather_than_grown() {
        let tax = "000.00.00.G08/tax".parse::<Member>().unwrap();
        let mut leased = Leased::default();
        let many = |from: u32| {
            (from..from + 1000)
                .map(|n| {
                    (
                        ExchangeId::from_parts(u64::from(n), [0; 10]),
                        entry(u64::from(n)),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut from = 0;
        while leased.len() + 1000 <= LEASED_MEMO_MAX {
            leased.remember(&tax, many(from));
            from += 1000;
        }
        let full = leased.len();
        leased.remember(&tax, many(from));
        assert_eq!(leased.len(), 1000, "emptied, then the new lease kept");
        assert!(full > LEASED_MEMO_MAX - 1000);
        let (known, _) = leased.take(&tax, &[ExchangeId::from_parts(0, [0; 10])]);
        assert!(known.is_empty(), "the forgotten are read from the store");
    }
}
