//! The backlog's last count: what waits in each recipient's inbox and in
//! each hub's outbox, counted in the background ([`count_backlog`]) for the
//! inbox cap and for `/metrics`.
//!
//! The cap: an event whose subscriber's inbox already holds `inbox_max`
//! messages is turned away (503 `inbox_full`) before anything is logged, so
//! a subscriber that stopped fetching cannot fill the database, and nothing
//! is dropped: the publisher keeps the event and sends it again (with the
//! same exchange id) once the inbox drains.
//!
//! Counting a recipient's inbox on every publication would cost a query per
//! event on the hot path; the hub counts the backlog about once a second
//! instead, so the cap can be passed by what is published between two
//! counts. Every hub of a shared database counts for itself, so the count
//! includes what the others queued and removed. A count reads the whole
//! backlog (~125 ms of PostgreSQL for a million waiting messages,
//! docs/performance.md): a count that took long is followed by a longer
//! pause, so that counting never takes more than a twentieth of the time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_core::ids::Member;
use tokio::sync::watch;
use tracing::warn;

use crate::store::{Backlog, Store};

/// How often the backlog is counted, at most.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// A count is followed by a pause of at least this many times what it took.
const PAUSE_PER_COUNT: u32 = 20;

/// The backlog at the last count, and the inbox cap.
#[derive(Debug)]
pub struct BacklogCount {
    inbox_max: u64,
    counted: Mutex<Counted>,
}

#[derive(Debug, Default)]
struct Counted {
    /// Inbox sizes by recipient; kept when a count fails, for the cap.
    inboxes: HashMap<Member, u64>,
    /// The last count as read, `None` when it failed.
    last: Option<Backlog>,
}

impl BacklogCount {
    /// No inbox holds more than `inbox_max` messages (give or take what is
    /// published between two counts).
    pub fn new(inbox_max: u64) -> Self {
        Self {
            inbox_max,
            counted: Mutex::default(),
        }
    }

    /// The most messages an inbox may hold.
    pub fn inbox_max(&self) -> u64 {
        self.inbox_max
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, Counted> {
        self.counted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a new count, as [`Store::backlog`] reads it. A recipient left
    /// out has an empty inbox.
    pub fn recount(&self, backlog: Backlog) {
        let inboxes = backlog
            .inboxes
            .iter()
            .filter_map(|(recipient, size)| Some((recipient.parse().ok()?, *size)))
            .collect();
        *self.counted() = Counted {
            inboxes,
            last: Some(backlog),
        };
    }

    /// The last count failed: the cap goes on with the sizes counted
    /// before, [`Self::last`] has none.
    pub fn count_failed(&self) {
        self.counted().last = None;
    }

    /// The backlog at the last count, if it succeeded.
    pub fn last(&self) -> Option<Backlog> {
        self.counted().last.clone()
    }

    /// The first of `recipients` whose inbox is full, with its size at the
    /// last count.
    pub fn first_full_inbox<'a>(&self, recipients: &'a [Member]) -> Option<(&'a Member, u64)> {
        let counted = self.counted();
        recipients.iter().find_map(|r| {
            let size = *counted.inboxes.get(r)?;
            (size >= self.inbox_max).then_some((r, size))
        })
    }
}

/// Count the backlog each [`COUNT_INTERVAL`] (or [`PAUSE_PER_COUNT`] times
/// the last count's duration, if longer) until shutdown.
pub async fn count_backlog(
    store: Arc<dyn Store>,
    count: Arc<BacklogCount>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let started = Instant::now();
        match store.backlog().await {
            Ok(backlog) => {
                count.recount(backlog);
                failing = false;
            }
            Err(e) => {
                count.count_failed();
                // Once per outage: the database's unavailability shows elsewhere.
                if !failing {
                    warn!(error = %e, "counting the backlog failed; the inbox cap keeps the last count");
                    failing = true;
                }
            }
        }
        let pause = COUNT_INTERVAL.max(started.elapsed() * PAUSE_PER_COUNT);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(s: &str) -> Member {
        s.parse().expect("a member")
    }

    fn inboxes(sizes: &[(&Member, u64)]) -> Backlog {
        Backlog {
            outbox: vec![],
            inboxes: sizes.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
            withdrawals: vec![],
        }
    }

    #[test]
    fn an_inbox_at_the_cap_is_full_and_one_below_is_not() {
        let count = BacklogCount::new(3);
        let tax = member("000.00.00.G08/tax");
        let social = member("000.00.00.G22/social-insurance");
        let both = [tax.clone(), social.clone()];
        assert_eq!(count.first_full_inbox(&both), None, "nothing counted yet");
        count.recount(inboxes(&[(&tax, 2), (&social, 3)]));
        assert_eq!(count.first_full_inbox(&both), Some((&social, 3)));
        assert_eq!(count.first_full_inbox(std::slice::from_ref(&tax)), None);
        // A recipient missing from the next count has an empty inbox.
        count.recount(inboxes(&[(&tax, 5)]));
        assert_eq!(count.first_full_inbox(&both), Some((&tax, 5)));
        // A failed count: the cap holds on the last one, the metrics have none.
        count.count_failed();
        assert_eq!(count.first_full_inbox(&both), Some((&tax, 5)));
        assert_eq!(count.last(), None);
        count.recount(inboxes(&[]));
        assert_eq!(count.first_full_inbox(&both), None);
        assert_eq!(count.last(), Some(inboxes(&[])));
    }
}
