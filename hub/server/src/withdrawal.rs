//! Taking events out of an inbox once a registry change stops their
//! delivery: a consumer's last grant for the service revoked, or its
//! subscription to their version removed.
//!
//! The change writes a pending withdrawal in its own transaction
//! ([`RegistryChange::WithdrawUnfetchedEvents`]), which closes the
//! recipient's inbox at once. The messages, up to `inbox_max` of them, are
//! removed here, after the change and in batches, outside the writers' lock:
//! removed in the change's transaction, 160,000 of them held every hub's
//! writes for 2 s (docs/performance.md). The hub that made the change
//! works the withdrawal off before it answers the administrator; a
//! withdrawal left over (its hub stopped midway) is worked off by any hub
//! once it is a minute old.
//!
//! [`RegistryChange::WithdrawUnfetchedEvents`]: crate::store::RegistryChange::WithdrawUnfetchedEvents

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::store::{InboxPosition, Store, StoreError, Withdrawal};

/// Messages examined per statement: each batch is a short transaction of
/// its own, so that the hub's writes go on between them.
pub const BATCH: u32 = 5_000;

/// A withdrawal this old is taken for left over by the hub that wrote it.
const LEFT_OVER_AFTER_MILLIS: u64 = 60_000;

/// How often a hub looks for withdrawals left over.
const LEFT_OVER_INTERVAL: Duration = Duration::from_secs(10);

/// Work off the withdrawals written before `created_before_millis` that
/// `which` picks, each opening its inbox again once done: how many messages
/// were removed.
pub async fn work_off(
    store: &dyn Store,
    created_before_millis: u64,
    which: impl Fn(&Withdrawal) -> bool,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    let pending = store.pending_withdrawals(created_before_millis).await?;
    for withdrawal in pending.into_iter().filter(|w| which(w)) {
        let mut after = InboxPosition::START;
        let mut taken = 0;
        while let Some((last, n)) = store.withdraw_batch(&withdrawal, after, BATCH).await? {
            after = last;
            taken += n;
        }
        store.finish_withdrawal(withdrawal.id).await?;
        info!(recipient = %withdrawal.recipient, service = %withdrawal.service, removed = taken,
              "events withdrawn from an inbox");
        removed += taken;
    }
    Ok(removed)
}

/// Work off the withdrawals left over, at start and then every ten seconds.
pub async fn run_left_over(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let before = clock.unix_millis().saturating_sub(LEFT_OVER_AFTER_MILLIS);
        match work_off(store.as_ref(), before, |_| true).await {
            Ok(_) => failing = false,
            // Once per outage: the database's unavailability shows elsewhere.
            Err(e) if !failing => {
                warn!(error = %e, "working off the withdrawals left over failed");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(LEFT_OVER_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
}
