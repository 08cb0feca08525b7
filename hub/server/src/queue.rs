//! Delivery to recipients (provider adapters, subscribers' inboxes) behind
//! one trait. Messages enter through the store's transactional outbox (an
//! [`crate::store::Effect::Enqueue`] in the same transaction as their log
//! entry); a recipient receives them at least once, and acknowledges each
//! by exchange id after its own work is durable.
//!
//! The embedded queue is the outbox table itself: receiving leases rows for
//! a visibility timeout, after which an unacknowledged message comes back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hub_core::ids::{ExchangeId, Member, ServiceName};

use crate::clock::Clock;
use hub_core::body::DataKey;

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

/// What a receipt names of the entry a message carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct MessageEntry {
    pub index: u64,
    pub service: Option<ServiceName>,
    pub version: Option<u32>,
}

/// A recipient's messages.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Up to `max` messages for `recipient`, hidden from other receivers
    /// until acknowledged or until the visibility timeout passes.
    async fn receive(&self, recipient: &Member, max: u32) -> Result<Vec<Message>, StoreError>;
    /// Those of messages `ids` that wait unacknowledged for `recipient`,
    /// in no particular order.
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
        }
    }

    fn open(&self, d: Delivery) -> Result<Message, StoreError> {
        Ok(Message {
            text: d.message.open(&self.data_key, d.exchange_id)?,
            exchange_id: d.exchange_id,
            attempts: d.attempts,
        })
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn receive(&self, recipient: &Member, max: u32) -> Result<Vec<Message>, StoreError> {
        let visibility = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        self.store
            .lease(recipient, max, self.clock.unix_millis(), visibility)
            .await?
            .into_iter()
            .map(|d| self.open(d))
            .collect()
    }

    async fn pending(
        &self,
        recipient: &Member,
        ids: &[ExchangeId],
    ) -> Result<Vec<Pending>, StoreError> {
        self.store
            .deliveries(recipient, ids)
            .await?
            .into_iter()
            .map(|d| {
                Ok(Pending {
                    entry: d.message.record_as(&self.data_key, d.exchange_id)?,
                    exchange_id: d.exchange_id,
                })
            })
            .collect()
    }

    async fn ack(&self, recipient: &Member, id: ExchangeId) -> Result<bool, StoreError> {
        self.store.remove_delivery(recipient, id).await
    }
}
