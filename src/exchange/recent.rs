//! A short memory of what the exchange verified or issued, keyed by a token's hash (never the
//! token): a caller presenting the same token again within the TTL costs no TokenReview and
//! no IAM call.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::budget::TokenHash;

/// A bounded LRU whose entries expire `ttl` after they were put; a zero TTL remembers nothing.
pub(crate) struct Recent<V> {
    ttl: Duration,
    entries: Mutex<lru::LruCache<TokenHash, (Instant, V)>>,
}

impl<V: Clone> Recent<V> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Recent {
            ttl,
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    pub(crate) fn get(&self, key: &TokenHash) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn put(&self, key: TokenHash, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, (Instant::now(), value));
    }

    pub(crate) fn forget(&self, key: &TokenHash) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl_and_a_zero_ttl_keeps_nothing() {
        let r = Recent::new(Duration::from_millis(50), 2);
        let (a, b, c) = (TokenHash::of("a"), TokenHash::of("b"), TokenHash::of("c"));
        r.put(a, 1);
        assert_eq!(r.get(&a), Some(1));
        r.put(b, 2);
        r.put(c, 3);
        assert_eq!(r.get(&a), None, "the least recently used went first");
        r.forget(&b);
        assert_eq!(r.get(&b), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.get(&c), None, "expired");
        let none = Recent::new(Duration::ZERO, 2);
        none.put(a, 1);
        assert_eq!(none.get(&a), None);
    }
}
