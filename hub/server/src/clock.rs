//! Time and randomness as parameters, so tests and replays are exact.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

/// Where the hub gets the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;

    /// Milliseconds since the Unix epoch.
    fn unix_millis(&self) -> u64 {
        u64::try_from(self.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told, for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(t: OffsetDateTime) -> Self {
        Self(Mutex::new(t))
    }
    pub fn advance(&self, d: time::Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Where the hub gets random bytes (exchange ids).
pub trait Random: Send + Sync {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) {
        use ring::rand::SecureRandom;
        // The OS generator does not fail on supported platforms; zeroes would
        // still give unique ids with the timestamp and counter below.
        let _ = self.0.fill(buf);
    }
}

/// A deterministic counter-based source, for tests.
#[derive(Debug, Default)]
pub struct CountingRandom(AtomicU64);

impl Random for CountingRandom {
    fn fill(&self, buf: &mut [u8]) {
        let n = self.0.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = n[i % 8];
        }
    }
}
