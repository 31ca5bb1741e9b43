//! Per-key request rate limits (GCRA, `governor`): each API key may send `RATE_LIMIT_BURST`
//! requests at once and `RATE_LIMIT_PER_SECOND` sustained; beyond that, 429 with `Retry-After`.
//!
//! The state is per process: with N replicas behind a balancer a key gets up to N times the
//! rate, which bounds abuse without a database round trip on every request.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Keys are the first 16 bytes of the API key's SHA-256 (the key itself is never held).
type KeyId = [u8; 16];

/// Forget idle keys when this many are tracked.
const RETAIN_THRESHOLD: usize = 10_000;

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<KeyId>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        })
    }

    /// `per_minute` requests a minute per key, all of them at once at most; `None` when it is 0.
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate)),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when the key is over its limit.
    pub fn check(&self, key_hash: &[u8]) -> Result<(), Duration> {
        let mut id = KeyId::default();
        let n = key_hash.len().min(id.len());
        id[..n].copy_from_slice(&key_hash[..n]);
        if self.limiter.len() > RETAIN_THRESHOLD {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&id)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_wait_per_key() {
        let rl = RateLimiter::new(1, 3).unwrap();
        for _ in 0..3 {
            assert!(rl.check(b"key-a").is_ok());
        }
        let wait = rl.check(b"key-a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own budget.
        assert!(rl.check(b"key-b").is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(RateLimiter::new(0, 10).is_none());
        assert!(RateLimiter::per_minute(0).is_none());
    }

    #[test]
    fn per_minute_allows_that_many_at_once_then_one_every_share_of_a_minute() {
        let rl = RateLimiter::per_minute(3).unwrap();
        for _ in 0..3 {
            assert!(rl.check(b"partner").is_ok());
        }
        let wait = rl.check(b"partner").unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
    }
}
