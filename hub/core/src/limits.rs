//! Per-agency admission: a token bucket for the request rate and a count
//! of requests in flight. Pure: the caller passes the time (milliseconds on
//! a monotonic clock), so the arithmetic is exact in tests.

/// Why a request was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Over the rate: retry after this many milliseconds.
    Rate { retry_after_ms: u64 },
    /// Already `limit` requests in flight.
    InFlight { limit: u32 },
}

/// How much one agency may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: u32,
    /// Requests being handled at the same time.
    pub in_flight: u32,
}

/// One agency's state.
#[derive(Debug, Clone)]
pub struct Admission {
    tokens: f64,
    last_ms: u64,
    in_flight: u32,
}

impl Admission {
    /// A full bucket at `now_ms`.
    pub fn new(quota: &Quota, now_ms: u64) -> Self {
        Self {
            tokens: f64::from(quota.burst),
            last_ms: now_ms,
            in_flight: 0,
        }
    }

    /// Admit one request at `now_ms`, or say why not. An admitted request
    /// counts as in flight until [`Admission::finish`].
    pub fn admit(&mut self, quota: &Quota, now_ms: u64) -> Result<(), Throttled> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * quota.per_second).min(f64::from(quota.burst));
        self.last_ms = self.last_ms.max(now_ms);
        if self.in_flight >= quota.in_flight {
            return Err(Throttled::InFlight {
                limit: quota.in_flight,
            });
        }
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            let retry_after_ms = if quota.per_second > 0.0 {
                (missing / quota.per_second * 1000.0).ceil() as u64
            } else {
                u64::MAX
            };
            return Err(Throttled::Rate { retry_after_ms });
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        Ok(())
    }

    /// An admitted request is done.
    pub fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Nothing in flight and the bucket full again at `now_ms`: the state
    /// can be forgotten.
    pub fn idle(&self, quota: &Quota, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.in_flight == 0 && self.tokens + elapsed * quota.per_second >= f64::from(quota.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        per_second: 10.0,
        burst: 3,
        in_flight: 2,
    };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut a = Admission::new(&Q, 0);
        for _ in 0..3 {
            a.admit(&Q, 0).unwrap();
            a.finish();
        }
        // Empty: one token comes back every 100 ms.
        assert_eq!(
            a.admit(&Q, 0),
            Err(Throttled::Rate {
                retry_after_ms: 100
            })
        );
        assert_eq!(a.admit(&Q, 40), Err(Throttled::Rate { retry_after_ms: 60 }));
        a.admit(&Q, 100).unwrap();
        a.finish();
        assert!(matches!(a.admit(&Q, 100), Err(Throttled::Rate { .. })));
        // A long quiet spell refills only up to the burst.
        for _ in 0..3 {
            a.admit(&Q, 60_000).unwrap();
            a.finish();
        }
        assert!(a.admit(&Q, 60_000).is_err());
    }

    #[test]
    fn in_flight_requests_are_capped_until_one_finishes() {
        let q = Quota { burst: 100, ..Q };
        let mut a = Admission::new(&q, 0);
        a.admit(&q, 0).unwrap();
        a.admit(&q, 0).unwrap();
        assert_eq!(a.admit(&q, 0), Err(Throttled::InFlight { limit: 2 }));
        a.finish();
        a.admit(&q, 0).unwrap();
    }

    #[test]
    fn a_clock_going_backwards_neither_refills_nor_panics() {
        let mut a = Admission::new(&Q, 1_000);
        for _ in 0..3 {
            a.admit(&Q, 1_000).unwrap();
            a.finish();
        }
        assert!(a.admit(&Q, 500).is_err());
        assert!(!a.idle(&Q, 500));
        assert!(a.idle(&Q, 1_300));
    }
}
