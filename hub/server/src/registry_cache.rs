//! The registry facts requests are decided on, kept in memory.
//!
//! Every request needs its sender's agency record, the service, the grant
//! and, for an event, the subscribers. Reading them from the store cost a
//! round trip (two for an event) per exchange. This cache keeps them, each
//! tagged with the registry version it was read at: a counter that the
//! store's triggers advance on every change to agencies, services, grants
//! and subscriptions, whichever hub or tool makes it.
//!
//! A cached fact can be stale, so the log writer checks: under the writers'
//! lock it reads the store's version, and a decision made at another
//! version - or after a registry change earlier in the same batch - is not
//! written but sent back ([`crate::log_writer::AppendError::RegistryChanged`])
//! to be made again on fresh facts. So every entry is decided on the
//! registry as it stood at its place in the log, on every hub, which is
//! what an auditor's replay checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use hub_core::envelope::ServiceKind;
use hub_core::ids::{Member, PurposeCode, ServiceName};

use crate::store::{Facts, Store, StoreError};

/// Past this many cached facts the cache starts again: the keys come from
/// requests, and a sender naming ever new services must not grow it.
const MAX_ENTRIES: usize = 4096;

/// The facts of one (sender, service, version, purpose).
#[derive(Debug)]
pub struct Snapshot {
    pub facts: Facts,
    /// Who receives the service's events (empty for a query service).
    pub subscribers: Vec<Member>,
    /// The registry version read before the facts.
    pub registry_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    who: Member,
    service: ServiceName,
    version: u32,
    purpose: PurposeCode,
}

#[derive(Debug, Default)]
struct State {
    /// No fact read at an older version is kept.
    version: u64,
    facts: HashMap<Key, Arc<Snapshot>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RegistryCache {
    state: Mutex<State>,
}

impl RegistryCache {
    /// The facts for a request, from memory or else from `store`.
    pub async fn facts(
        &self,
        store: &dyn Store,
        who: &Member,
        service: &ServiceName,
        version: u32,
        purpose: &PurposeCode,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let key = Key {
            who: who.clone(),
            service: service.clone(),
            version,
            purpose: purpose.clone(),
        };
        if let Some(found) = self.lock().facts.get(&key) {
            return Ok(found.clone());
        }
        // The version first: facts newer than their tag only cost a retry,
        // facts older than their tag would be wrong.
        let registry_version = store.registry_version().await?;
        let facts = store.facts(who, service, version, purpose).await?;
        let subscribers = match &facts.service {
            Some(s) if s.kind == ServiceKind::Event => store.subscribers(service, version).await?,
            _ => Vec::new(),
        };
        let snapshot = Arc::new(Snapshot {
            facts,
            subscribers,
            registry_version,
        });
        let mut state = self.lock();
        if registry_version > state.version {
            state.version = registry_version;
            state.facts.clear();
        }
        if registry_version == state.version {
            if state.facts.len() >= MAX_ENTRIES {
                state.facts.clear();
            }
            state.facts.insert(key, snapshot.clone());
        }
        Ok(snapshot)
    }

    /// The registry is at `version` or later: forget every fact read before.
    pub fn outdated(&self, version: u64) {
        let mut state = self.lock();
        if version > state.version {
            state.version = version;
            state.facts.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
