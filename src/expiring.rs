//! A bounded LRU of what was learnt about a token, keyed by the token's hash (never the
//! token), each entry forgotten `ttl` after it was put: the exchange's memory of reviews and
//! issued credentials, and the agent's of the upstream's refusals.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rate_limit::TokenHash;

/// Entries expire `ttl` after they were put; a zero TTL remembers nothing.
pub(crate) struct Expiring<V> {
    ttl: Duration,
    entries: Mutex<lru::LruCache<TokenHash, (Instant, V)>>,
}

impl<V: Clone> Expiring<V> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Expiring {
            ttl,
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, lru::LruCache<TokenHash, (Instant, V)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: &TokenHash) -> Option<V> {
        self.get_if(key, |_| true)
    }

    /// The value while it is fresh and `keep` holds for it; else it is forgotten.
    pub(crate) fn get_if(&self, key: &TokenHash, keep: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl && keep(v) => Some(v.clone()),
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
        self.lock().put(key, (Instant::now(), value));
    }

    pub(crate) fn forget(&self, key: &TokenHash) {
        self.lock().pop(key);
    }

    /// Keeps the entries for which `keep` holds.
    pub(crate) fn retain(&self, keep: impl Fn(&V) -> bool) {
        let mut entries = self.lock();
        let gone: Vec<TokenHash> = entries
            .iter()
            .filter(|(_, (_, v))| !keep(v))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            entries.pop(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl_and_a_zero_ttl_keeps_nothing() {
        let r = Expiring::new(Duration::from_millis(50), 2);
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
        let none = Expiring::new(Duration::ZERO, 2);
        none.put(a, 1);
        assert_eq!(none.get(&a), None);
    }

    #[test]
    fn an_entry_that_no_longer_holds_is_forgotten() {
        let r = Expiring::new(Duration::from_secs(60), 4);
        let (a, b) = (TokenHash::of("a"), TokenHash::of("b"));
        r.put(a, 1);
        r.put(b, 2);
        assert_eq!(r.get_if(&a, |v| *v > 1), None);
        assert_eq!(r.get(&a), None, "dropped when it did not hold");
        r.retain(|v| *v != 2);
        assert_eq!(r.get(&b), None);
    }
}
