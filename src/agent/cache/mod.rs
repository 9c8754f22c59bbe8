//! The credential cache: keyed by (a hash of) the token, bounded LRU, one upstream call per
//! token at a time, refreshed ahead of expiry in the background.
//!
//! Upstream calls are budgeted so that no pod can starve the others: a cache miss needs a
//! slot from its client's own bucket (pods are told apart by source address) and from the
//! node's; refreshes of cached credentials draw on a budget of their own, so a flood of misses
//! never lets cached credentials run out; and a refused token is remembered for a short while,
//! so repeating it costs no upstream call.
//!
//! Entries follow what they were issued under: with an association source, an entry (or a
//! remembered refusal) whose service account's association is gone or names another
//! uid/agency/role is dropped, at the next request for it and at the next refresher tick
//! after the index changes; an entry whose pod the pod watch saw go is dropped at once.

mod budgets;
mod follow;
mod refresh;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::backend::Backend;
use super::metrics::AgentMetrics;
use crate::association::{Index, Reader};
use crate::cloud::{Credentials, UpstreamError};
use crate::expiring::Expiring;
use crate::rate_limit::TokenHash;
use budgets::Budgets;
use follow::{Grant, Owner};

type Key = TokenHash;

/// Cache policy.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most tokens remembered; the least recently used goes first.
    pub capacity: usize,
    /// Credentials with less than this left are never handed out.
    pub min_remaining: Duration,
    /// Refresh this long before expiry (at most half the credentials' lifetime).
    pub refresh_before: Duration,
    /// Upstream calls per second for cache misses, all clients together.
    pub upstream_rate: f64,
    /// Cache-miss calls allowed in a burst, all clients together.
    pub upstream_burst: f64,
    /// Cache-miss calls per second for one client address.
    pub client_rate: f64,
    /// Cache-miss calls in a burst for one client address.
    pub client_burst: f64,
    /// Refresh calls per second (a budget of their own).
    pub refresh_rate: f64,
    /// Refresh calls in a burst.
    pub refresh_burst: f64,
    /// How long a token the upstream refused (400, 401, 403, 404) is answered from memory.
    pub negative_ttl: Duration,
    /// Wait between a failed refresh and the next, before jitter (0–100 % added).
    pub retry_after: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 10_000,
            min_remaining: Duration::from_secs(15),
            refresh_before: Duration::from_secs(300),
            upstream_rate: 50.0,
            upstream_burst: 100.0,
            client_rate: 5.0,
            client_burst: 20.0,
            refresh_rate: 20.0,
            refresh_burst: 50.0,
            negative_ttl: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Why a request got no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("too many credential requests to the upstream from this node; retry shortly")]
    RateLimited,
    #[error("too many credential requests from this pod's address; retry shortly")]
    ClientRateLimited,
    #[error("the upstream returned credentials that expire in under {0} s")]
    ExpiringTooSoon(u64),
}

struct Entry {
    /// Kept to refresh ahead of time, as the pod would present it again anyway.
    token: Arc<str>,
    creds: Credentials,
    fetched: jiff::Timestamp,
    next_refresh: Instant,
    owner: Owner,
    grant: Grant,
}

/// A refusal the upstream gave, remembered for `negative_ttl` while the association stands.
#[derive(Clone)]
struct Refused {
    error: UpstreamError,
    owner: Owner,
    grant: Grant,
}

type Flight = Shared<BoxFuture<'static, Result<Credentials, UpstreamError>>>;

/// Refused tokens remembered at once.
const REFUSED: usize = 4096;

/// Shared by every request of the agent.
pub struct Cache {
    config: CacheConfig,
    backend: Arc<dyn Backend>,
    metrics: Arc<AgentMetrics>,
    entries: Mutex<lru::LruCache<Key, Entry>>,
    inflight: Mutex<HashMap<Key, Flight>>,
    budgets: Budgets,
    /// Tokens the upstream refused, with the refusal, until `negative_ttl` has passed.
    refused: Expiring<Refused>,
    /// The associations answers are checked against, when the agent follows them.
    associations: Option<Reader>,
    /// The index the last sweep saw, to sweep again only when it changed.
    swept: Mutex<Option<Arc<Index>>>,
}

fn key(token: &str) -> Key {
    TokenHash::of(token)
}

impl Cache {
    pub(crate) fn new(
        config: CacheConfig,
        backend: Arc<dyn Backend>,
        metrics: Arc<AgentMetrics>,
        associations: Option<Reader>,
    ) -> Arc<Self> {
        let capacity = NonZeroUsize::new(config.capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Arc::new(Cache {
            budgets: Budgets::new(&config),
            refused: Expiring::new(config.negative_ttl, REFUSED),
            config,
            backend,
            metrics,
            entries: Mutex::new(lru::LruCache::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
            associations,
            swept: Mutex::new(None),
        })
    }

    /// Credentials for `token`, asked for by `client`: cached if they have enough life left,
    /// else from upstream (shared with every concurrent request for the same token) within the
    /// client's and the node's budgets.
    pub(crate) async fn get(
        self: &Arc<Self>,
        token: &str,
        client: IpAddr,
    ) -> Result<Credentials, CacheError> {
        let k = key(token);
        let now = jiff::Timestamp::now();
        let min = self.config.min_remaining.as_secs_f64();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = entries.get(&k) {
                if e.creds.remaining(now) > min && self.stands(&e.owner, &e.grant) {
                    self.metrics.cache_hit();
                    return Ok(e.creds.clone());
                }
                entries.pop(&k);
            }
        }
        if let Some(refusal) = self.refusal(&k) {
            self.metrics.refusal_repeated();
            return Err(CacheError::Upstream(refusal));
        }
        self.metrics.cache_miss();
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&k) {
                Some(f) => f.clone(),
                None => {
                    self.budgets.take_miss(client)?;
                    let this = self.clone();
                    let token: Arc<str> = token.into();
                    // Spawned, so the call completes (and is cached) even if every waiting
                    // client hangs up.
                    let task = tokio::spawn(async move { this.fetch_and_store(k, token).await });
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(UpstreamError::Invalid(format!("fetch task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(k, f.clone());
                    f
                }
            }
        };
        let creds = flight.await?;
        if creds.remaining(jiff::Timestamp::now()) <= min {
            return Err(CacheError::ExpiringTooSoon(self.config.min_remaining.as_secs()));
        }
        Ok(creds)
    }

    async fn fetch_and_store(&self, k: Key, token: Arc<str>) -> Result<Credentials, UpstreamError> {
        // Taken before the call: an association that changes during it makes the answer
        // stale, and the next request asks again.
        let owner = Owner::of(&token);
        let grant = self.grant_now(&owner);
        let result = self.call_upstream(&token).await;
        match &result {
            Ok(creds) => {
                let entry = self.entry(token, creds.clone(), owner, grant);
                self.entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(k, entry);
            }
            Err(e) if e.is_auth() || e.status() == 400 => {
                self.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(&k);
                let refused = Refused {
                    error: e.clone(),
                    owner,
                    grant,
                };
                self.refused.put(k, refused);
            }
            Err(_) => {}
        }
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
        result
    }

    /// The upstream's recent refusal of this token, if it is still remembered and the
    /// association it was given under stands.
    fn refusal(&self, k: &Key) -> Option<UpstreamError> {
        self.refused
            .get_if(k, |r| self.stands(&r.owner, &r.grant))
            .map(|r| r.error)
    }

    async fn call_upstream(&self, token: &str) -> Result<Credentials, UpstreamError> {
        let start = Instant::now();
        let result = self.backend.fetch(token).await;
        self.metrics.upstream(result.is_ok(), start.elapsed());
        result
    }

    fn entry(&self, token: Arc<str>, creds: Credentials, owner: Owner, grant: Grant) -> Entry {
        let now = jiff::Timestamp::now();
        let life = creds.remaining(now).max(0.0);
        let ahead = self.config.refresh_before.as_secs_f64().min(life / 2.0);
        let next_refresh = Instant::now() + Duration::from_secs_f64((life - ahead).max(0.0));
        Entry {
            token,
            creds,
            fetched: now,
            next_refresh,
            owner,
            grant,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the cached credentials for `token` were fetched (for tests and diagnostics).
    pub fn fetched_at(&self, token: &str) -> Option<jiff::Timestamp> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek(&key(token))
            .map(|e| e.fetched)
    }
}

/// Keeps the values of `cache` for which `keep` holds; returns how many it dropped.
fn retain<V>(cache: &Mutex<lru::LruCache<Key, V>>, keep: impl Fn(&V) -> bool) -> usize {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<Key> = cache.iter().filter(|(_, v)| !keep(v)).map(|(k, _)| *k).collect();
    for k in &gone {
        cache.pop(k);
    }
    gone.len()
}
