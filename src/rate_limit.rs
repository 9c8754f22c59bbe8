//! Budgets for calls a program makes on others' behalf: token buckets (a rate with a burst),
//! one shared or one per key, and the hash a token is known by in caches and logs.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket's state: starts full, refills at `rate` per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        } else {
            Err(Duration::MAX)
        }
    }
}

/// One token bucket shared by every caller.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` (at least 1) saved up.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            bucket: Mutex::new(Bucket::full(burst, Instant::now())),
        }
    }

    /// Takes a token; without one, how long until the next.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.take(self.rate, self.burst, Instant::now())
    }
}

/// A token bucket per key (e.g. per service account), each with the same rate and burst.
#[derive(Debug)]
pub(crate) struct KeyedBuckets<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// Keys kept before full (idle) buckets are forgotten: a full bucket is the same as none.
const KEPT_KEYS: usize = 10_000;

impl<K: Eq + Hash> KeyedBuckets<K> {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        KeyedBuckets {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket; without one, how long until the next.
    pub(crate) fn take(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= KEPT_KEYS {
            let refilled =
                |b: &Bucket| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate >= burst;
            buckets.retain(|_, b| !refilled(b));
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(rate, burst, now)
    }
}

/// The SHA-256 of a token: what caches are keyed by and logs name a token by, so neither holds
/// the token itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash([u8; 32]);

impl TokenHash {
    pub(crate) fn of(token: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        TokenHash(k)
    }
}

impl fmt::Display for TokenHash {
    /// The first 8 bytes in hex: enough to match log lines, too little to matter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        assert!(b.take(10.0, 2.0, t0).is_ok());
        assert!(b.take(10.0, 2.0, t0).is_ok());
        let wait = b.take(10.0, 2.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // 100 ms later exactly one token is back, and the burst caps any longer idle time.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(10.0, 2.0, t1).is_ok());
        assert!(b.take(10.0, 2.0, t1).is_err());
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.take(10.0, 2.0, t2).is_ok() && b.take(10.0, 2.0, t2).is_ok());
        assert!(b.take(10.0, 2.0, t2).is_err());
        assert_eq!(Bucket::full(1.0, t0).take(0.0, 1.0, t0), Ok(()));
    }

    #[test]
    fn keyed_buckets_are_independent() {
        let k = KeyedBuckets::new(0.001, 1.0);
        assert!(k.take("a").is_ok());
        assert!(k.take("a").is_err());
        assert!(k.take("b").is_ok(), "another key has its own budget");
        let shared = TokenBucket::new(0.001, 1.0);
        assert!(shared.take().is_ok());
        assert!(shared.take().is_err());
    }

    #[test]
    fn a_token_hash_is_sha256_and_shows_a_short_prefix() {
        let h = TokenHash::of("abc");
        assert_eq!(h.to_string(), "ba7816bf8f01cfea");
        assert_eq!(h, TokenHash::of("abc"));
        assert_ne!(h, TokenHash::of("abd"));
    }
}
