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

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::backend::Backend;
use super::metrics::AgentMetrics;
use super::token;
use crate::association::{Index, Reader};
use crate::budget::{KeyedBuckets, TokenBucket, TokenHash};
use crate::cloud::{Credentials, UpstreamError};

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

/// Whose token an entry holds, from its claims (unverified: the upstream verifies it; this
/// only decides what to forget).
#[derive(Debug, Clone, Default)]
struct Owner {
    /// (namespace, service account).
    subject: Option<(String, String)>,
    pod_uid: Option<String>,
}

impl Owner {
    fn of(token: &str) -> Self {
        // Expiry is the upstream's concern, not this bookkeeping's.
        match token::claims(token, i64::MIN) {
            Ok(c) => Owner {
                subject: Some((c.namespace, c.service_account)),
                pod_uid: c.pod_uid,
            },
            Err(_) => Owner::default(),
        }
    }
}

/// The association an answer was given under: its uid and target. `None` when the service
/// account had none in the agent's index.
type Grant = Option<(String, String)>;

fn grant(index: &Index, owner: &Owner) -> Grant {
    let (ns, sa) = owner.subject.as_ref()?;
    index.get(ns, sa).map(|a| (a.uid.clone(), a.target().to_owned()))
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

/// A refusal the upstream gave, remembered until `until` while the association stands.
struct Refused {
    error: UpstreamError,
    until: Instant,
    owner: Owner,
    grant: Grant,
}

type Flight = Shared<BoxFuture<'static, Result<Credentials, UpstreamError>>>;

/// Refused tokens remembered at once.
const REFUSED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// Shared by every request of the agent.
pub struct Cache {
    config: CacheConfig,
    backend: Arc<dyn Backend>,
    metrics: Arc<AgentMetrics>,
    entries: Mutex<lru::LruCache<Key, Entry>>,
    inflight: Mutex<HashMap<Key, Flight>>,
    /// Misses, all clients.
    bucket: TokenBucket,
    /// Misses, per client address.
    clients: KeyedBuckets<IpAddr>,
    /// Refreshes.
    refresh_bucket: TokenBucket,
    /// Tokens the upstream refused, with the refusal and when it stops being repeated.
    refused: Mutex<lru::LruCache<Key, Refused>>,
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
            bucket: TokenBucket::new(config.upstream_rate, config.upstream_burst),
            refresh_bucket: TokenBucket::new(config.refresh_rate, config.refresh_burst),
            clients: KeyedBuckets::new(config.client_rate, config.client_burst),
            refused: Mutex::new(lru::LruCache::new(REFUSED)),
            config,
            backend,
            metrics,
            entries: Mutex::new(lru::LruCache::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
            associations,
            swept: Mutex::new(None),
        })
    }

    /// Whether an answer given under `grant` still stands: always when the agent does not
    /// follow associations.
    fn stands(&self, owner: &Owner, given: &Grant) -> bool {
        match &self.associations {
            Some(r) => grant(&r.load(), owner) == *given,
            None => true,
        }
    }

    /// What an answer for `owner` is given under now.
    fn grant_now(&self, owner: &Owner) -> Grant {
        self.associations.as_ref().and_then(|r| grant(&r.load(), owner))
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
                    if !self.take_client_slot(client) {
                        return Err(CacheError::ClientRateLimited);
                    }
                    if !self.take_upstream_slot() {
                        return Err(CacheError::RateLimited);
                    }
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
                    until: Instant::now() + self.config.negative_ttl,
                    owner,
                    grant,
                };
                self.refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(k, refused);
            }
            Err(_) => {}
        }
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
        result
    }

    /// The upstream's recent refusal of this token, if it is still remembered and the
    /// association it was given under stands.
    fn refusal(&self, k: &Key) -> Option<UpstreamError> {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match refused.get(k) {
            Some(r) if Instant::now() < r.until && self.stands(&r.owner, &r.grant) => Some(r.error.clone()),
            Some(_) => {
                refused.pop(k);
                None
            }
            None => None,
        }
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

    fn take_upstream_slot(&self) -> bool {
        self.bucket.take().is_ok()
    }

    fn take_client_slot(&self, client: IpAddr) -> bool {
        self.clients.take(client).is_ok()
    }

    fn take_refresh_slot(&self) -> bool {
        self.refresh_bucket.take().is_ok()
    }

    /// Refreshes the entries that are due, as many as the rate allows; returns how many it
    /// started. A transient failure keeps the cached credentials and retries after a jittered
    /// wait; an auth failure evicts them.
    pub(crate) fn refresh_due(self: &Arc<Self>) -> usize {
        let now = Instant::now();
        self.follow_associations();
        let due: Vec<(Key, Arc<str>, Owner, Grant)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter(|(_, e)| e.next_refresh <= now)
                .map(|(k, e)| (*k, e.token.clone(), e.owner.clone(), e.grant.clone()))
                .collect()
        };
        let mut started = 0;
        for (k, token, owner, given) in due {
            // Stored stale (its association changed while it was fetched): not renewed.
            if !self.stands(&owner, &given) {
                self.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(&k);
                continue;
            }
            if self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&k)
            {
                continue;
            }
            if !self.take_refresh_slot() {
                break;
            }
            // Not retried before the jittered wait, whatever this attempt does.
            let jitter = self.config.retry_after.mul_f64(1.0 + fastrand::f64());
            if let Some(e) = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peek_mut(&k)
            {
                e.next_refresh = now + jitter;
            }
            started += 1;
            let this = self.clone();
            tokio::spawn(async move {
                let grant = this.grant_now(&owner);
                match this.call_upstream(&token).await {
                    Ok(creds) => {
                        let entry = this.entry(token, creds, owner, grant);
                        let mut entries = this.entries.lock().unwrap_or_else(|e| e.into_inner());
                        // Only if still cached: an eviction meanwhile wins.
                        if let Some(slot) = entries.peek_mut(&k) {
                            *slot = entry;
                        }
                        this.metrics.refresh(true);
                    }
                    Err(e) if e.is_auth() => {
                        tracing::info!(error = %e, "refresh refused; credentials evicted");
                        this.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(&k);
                        this.metrics.refresh(false);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?jitter, "refresh failed; cached credentials keep serving");
                        this.metrics.refresh(false);
                    }
                }
            });
        }
        started
    }

    /// When the association index changed since the last look, drops every entry and
    /// remembered refusal given under an association that is gone or names another
    /// uid/target, so they are neither served nor refreshed. Returns how many it dropped.
    pub(crate) fn follow_associations(&self) -> usize {
        let Some(reader) = &self.associations else {
            return 0;
        };
        let index = Arc::clone(&reader.load());
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.as_ref().is_some_and(|s| Arc::ptr_eq(s, &index)) {
                return 0;
            }
            *swept = Some(index.clone());
        }
        let stale = |owner: &Owner, given: &Grant| grant(&index, owner) != *given;
        let dropped = retain(&self.entries, |e| !stale(&e.owner, &e.grant));
        retain(&self.refused, |r| !stale(&r.owner, &r.grant));
        if dropped > 0 {
            tracing::info!(
                dropped,
                "associations changed: credentials issued under them dropped"
            );
        }
        dropped
    }

    /// Drops the entries of the pod with `uid` (it is gone); returns how many.
    pub(crate) fn forget_pod(&self, uid: &str) -> usize {
        retain(&self.entries, |e| e.owner.pod_uid.as_deref() != Some(uid))
    }

    /// After a full list of the node's pods (`live`, listed from `listed`): drops the entries
    /// fetched before that list for pods not in it; returns how many.
    pub(crate) fn keep_pods(&self, live: &HashSet<String>, listed: jiff::Timestamp) -> usize {
        retain(&self.entries, |e| match &e.owner.pod_uid {
            Some(uid) => live.contains(uid) || e.fetched >= listed,
            None => true,
        })
    }

    /// Runs [`refresh_due`](Self::refresh_due) every `every` until the cache is dropped elsewhere.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                cache.refresh_due();
            }
        })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A backend whose answers the test scripts.
    struct Scripted {
        calls: AtomicUsize,
        lifetime_ms: i64,
        fail: Mutex<Option<UpstreamError>>,
    }

    impl Backend for Scripted {
        fn fetch<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let fail = self.fail.lock().unwrap().clone();
            let lifetime = self.lifetime_ms;
            async move {
                if let Some(e) = fail {
                    return Err(e);
                }
                Ok(Credentials::new(
                    format!("AK{n}"),
                    "sk".into(),
                    "st".into(),
                    jiff::Timestamp::now() + jiff::SignedDuration::from_millis(lifetime),
                ))
            }
            .boxed()
        }
    }

    fn setup(lifetime_ms: i64, config: CacheConfig) -> (Arc<Cache>, Arc<Scripted>) {
        let backend = Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            lifetime_ms,
            fail: Mutex::new(None),
        });
        (
            Cache::new(config, backend.clone(), Arc::new(AgentMetrics::default()), None),
            backend,
        )
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn fast() -> CacheConfig {
        CacheConfig {
            min_remaining: Duration::from_millis(100),
            refresh_before: Duration::from_secs(300),
            retry_after: Duration::from_millis(200),
            ..CacheConfig::default()
        }
    }

    #[tokio::test]
    async fn never_hands_out_credentials_with_under_15_seconds_left() {
        let (cache, backend) = setup(10_000, CacheConfig::default());
        assert_eq!(cache.get("t", LOCAL).await, Err(CacheError::ExpiringTooSoon(15)));
        // And does not serve them from the cache either: the next request asks again.
        assert!(cache.get("t", LOCAL).await.is_err());
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
        let (cache, _) = setup(60_000, CacheConfig::default());
        assert_eq!(cache.get("t", LOCAL).await.unwrap().access_key_id, "AK1");
        assert_eq!(
            cache.get("t", LOCAL).await.unwrap().access_key_id,
            "AK1",
            "cached"
        );
    }

    #[tokio::test]
    async fn refreshes_ahead_of_expiry_in_the_background() {
        // 1 s lifetime: refresh due after half of it.
        let (cache, backend) = setup(1_000, fast());
        assert_eq!(cache.get("t", LOCAL).await.unwrap().access_key_id, "AK1");
        assert_eq!(cache.refresh_due(), 0, "not due yet");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(cache.refresh_due(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cache.get("t", LOCAL).await.unwrap().access_key_id,
            "AK2",
            "the refreshed credentials are served"
        );
    }

    #[tokio::test]
    async fn a_transient_refresh_failure_keeps_serving_and_retries_later() {
        let (cache, backend) = setup(1_000, fast());
        cache.get("t", LOCAL).await.unwrap();
        *backend.fail.lock().unwrap() = Some(UpstreamError::Unreachable("down".into()));
        tokio::time::sleep(Duration::from_millis(550)).await;
        assert_eq!(cache.refresh_due(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            cache.get("t", LOCAL).await.unwrap().access_key_id,
            "AK1",
            "still-valid credentials keep serving"
        );
        assert_eq!(cache.refresh_due(), 0, "no retry before the jittered wait");
        *backend.fail.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(420)).await;
        assert_eq!(cache.refresh_due(), 1, "retried after the wait");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.get("t", LOCAL).await.unwrap().access_key_id, "AK3");
    }

    #[tokio::test]
    async fn an_auth_failure_evicts() {
        let (cache, backend) = setup(1_000, fast());
        cache.get("t", LOCAL).await.unwrap();
        *backend.fail.lock().unwrap() = Some(UpstreamError::Refused {
            status: 403,
            message: "association deleted".into(),
        });
        tokio::time::sleep(Duration::from_millis(550)).await;
        cache.refresh_due();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(cache.is_empty());
        let e = cache.get("t", LOCAL).await.unwrap_err();
        assert_eq!(
            e,
            CacheError::Upstream(UpstreamError::Refused {
                status: 403,
                message: "association deleted".into()
            })
        );
    }

    /// An unsigned service-account token for `ns/sa` in pod `pod` (uid `<pod>-uid`).
    fn token(ns: &str, sa: &str, pod: &str) -> String {
        use base64::Engine;
        let claims = serde_json::json!({"sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}, "pod": {"name": pod, "uid": format!("{pod}-uid")}}});
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("e30.{}.c2ln", b64.encode(claims.to_string()))
    }

    fn index(agency_of_a: &str) -> Index {
        let assoc = |sa: &str, agency: &str| {
            crate::association::AssociationSpec {
                namespace: "ns".into(),
                service_account: sa.into(),
                agency_name: Some(agency.into()),
                ..Default::default()
            }
            .validate()
            .unwrap()
        };
        Index::build([assoc("a", agency_of_a), assoc("b", "agency-b")]).unwrap()
    }

    #[tokio::test]
    async fn answers_follow_the_association_they_were_given_under() {
        let (reader, writer) = crate::association::store();
        writer.replace(index("agency-1"));
        let backend = Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            lifetime_ms: 60_000,
            fail: Mutex::new(None),
        });
        let cache = Cache::new(fast(), backend.clone(), Arc::default(), Some(reader));
        let (a, b) = (token("ns", "a", "pa"), token("ns", "b", "pb"));
        assert_eq!(cache.get(&a, LOCAL).await.unwrap().access_key_id, "AK1");
        assert_eq!(cache.get(&b, LOCAL).await.unwrap().access_key_id, "AK2");
        assert_eq!(cache.follow_associations(), 0, "the index did not change");
        // The same association (same uid) pointed at another agency.
        writer.replace(index("agency-2"));
        assert_eq!(
            cache.get(&a, LOCAL).await.unwrap().access_key_id,
            "AK3",
            "asked again at once, before any sweep"
        );
        writer.replace(index("agency-3"));
        assert_eq!(cache.follow_associations(), 1, "only a's answer is dropped");
        assert!(cache.fetched_at(&a).is_none());
        assert_eq!(cache.get(&b, LOCAL).await.unwrap().access_key_id, "AK2");
        assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn answers_for_pods_that_are_gone_are_dropped() {
        let (cache, _) = setup(60_000, fast());
        let (p1, p2) = (token("ns", "a", "p1"), token("ns", "a", "p2"));
        cache.get(&p1, LOCAL).await.unwrap();
        cache.get(&p2, LOCAL).await.unwrap();
        assert_eq!(cache.forget_pod("p1-uid"), 1);
        assert!(cache.fetched_at(&p1).is_none());
        // A relist that misses p2 drops it, unless its answer is newer than the list.
        let live = HashSet::new();
        let before = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
        assert_eq!(cache.keep_pods(&live, before), 0, "fetched after the list began");
        assert_eq!(cache.keep_pods(&live, jiff::Timestamp::now()), 1);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn the_lru_bound_holds() {
        let (cache, _) = setup(
            60_000,
            CacheConfig {
                capacity: 3,
                ..fast()
            },
        );
        for t in ["a", "b", "c", "d"] {
            cache.get(t, LOCAL).await.unwrap();
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.fetched_at("a").is_none(), "least recently used went first");
        assert!(cache.fetched_at("d").is_some());
    }
}
