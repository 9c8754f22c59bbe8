use std::collections::HashSet;
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
