//! The cap on each recipient's inbox: an event whose subscriber's inbox
//! already holds `inbox_max` messages is turned away (503 `inbox_full`)
//! before anything is logged, so a subscriber that stopped fetching cannot
//! fill the database, and nothing is dropped: the publisher keeps the event
//! and sends it again (with the same exchange id) once the inbox drains.
//!
//! Counting a recipient's inbox on every publication would cost a query per
//! event on the hot path; the hub counts every inbox once a second instead
//! ([`count_inboxes`]), so the cap can be passed by what is published
//! between two counts. Every hub of a shared database counts for itself,
//! so the count includes what the others queued and removed. A count reads
//! the whole backlog (~75 ms of PostgreSQL for a million waiting messages,
//! docs/performance.md): a count that took long is followed by a longer
//! pause, so that counting never takes more than a twentieth of the time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_core::ids::Member;
use tokio::sync::watch;
use tracing::warn;

use crate::store::Store;

/// How often the inboxes are counted, at most.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// A count is followed by a pause of at least this many times what it took.
const PAUSE_PER_COUNT: u32 = 20;

/// The inboxes' sizes at the last count, and the cap.
#[derive(Debug)]
pub struct InboxCap {
    max: u64,
    counted: Mutex<HashMap<Member, u64>>,
}

impl InboxCap {
    /// No inbox holds more than `max` messages (give or take a second's
    /// publications).
    pub fn new(max: u64) -> Self {
        Self {
            max,
            counted: Mutex::new(HashMap::new()),
        }
    }

    /// The most messages an inbox may hold.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Take a new count: recipient and messages in its inbox, as
    /// [`Store::backlog`] reads them. A recipient left out has an empty inbox.
    pub fn recount(&self, inboxes: Vec<(String, u64)>) {
        let counted = inboxes
            .into_iter()
            .filter_map(|(recipient, size)| Some((recipient.parse().ok()?, size)))
            .collect();
        *self.counted.lock().unwrap_or_else(PoisonError::into_inner) = counted;
    }

    /// The first of `recipients` whose inbox is full, with its size at the
    /// last count.
    pub fn first_full<'a>(&self, recipients: &'a [Member]) -> Option<(&'a Member, u64)> {
        let counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        recipients.iter().find_map(|r| {
            let size = *counted.get(r)?;
            (size >= self.max).then_some((r, size))
        })
    }
}

/// Count every inbox each [`COUNT_INTERVAL`] (or [`PAUSE_PER_COUNT`] times
/// the last count's duration, if longer) until shutdown. When the database
/// cannot be read the last count stands (publishing then fails on the
/// database anyway).
pub async fn count_inboxes(
    store: Arc<dyn Store>,
    cap: Arc<InboxCap>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let started = Instant::now();
        match store.backlog().await {
            Ok(backlog) => {
                cap.recount(backlog.inboxes);
                failing = false;
            }
            // Once per outage: the database's unavailability shows elsewhere.
            Err(e) if !failing => {
                warn!(error = %e, "counting the inboxes failed; keeping the last count");
                failing = true;
            }
            Err(_) => {}
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

    #[test]
    fn an_inbox_at_the_cap_is_full_and_one_below_is_not() {
        let cap = InboxCap::new(3);
        let tax = member("000.00.00.G08/tax");
        let social = member("000.00.00.G22/social-insurance");
        let both = [tax.clone(), social.clone()];
        assert_eq!(cap.first_full(&both), None, "nothing counted yet");
        cap.recount(vec![(tax.to_string(), 2), (social.to_string(), 3)]);
        assert_eq!(cap.first_full(&both), Some((&social, 3)));
        assert_eq!(cap.first_full(std::slice::from_ref(&tax)), None);
        // A recipient missing from the next count has an empty inbox.
        cap.recount(vec![(tax.to_string(), 5)]);
        assert_eq!(cap.first_full(&both), Some((&tax, 5)));
        cap.recount(vec![]);
        assert_eq!(cap.first_full(&both), None);
    }
}
