//! Tokens checked against the real API server's service-account signing keys before any
//! upstream call: its real tokens verify, forged ones cost no upstream call and no TokenReview,
//! a flood of unknown key ids reads the keys at a bounded rate, and a rotated-in signing key is
//! picked up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::TokenReview;
use pod_identity_webhook::exchange::metrics::ExchangeMetrics;
use pod_identity_webhook::exchange::review::{KubeReviewer, LocallyVerified, ReviewError, TokenReviewer};
use pod_identity_webhook::exchange::{Exchange, ExchangeConfig};
use pod_identity_webhook::testing::{IssuerKeys, IssuerMetrics, Unverified, Verdict};
use serde_json::json;

use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::doubles;
use crate::common::tokens::{AUD, ISSUER, foreign, keys_of};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tokens_verify_locally_and_forged_ones_do_not() {
    let Some(api) = ApiServer::shared() else { return };
    let (keys, metrics) = keys_of(api, Duration::from_secs(10)).await;
    let ns = api.namespace("issuer-pods", &[]).await;
    let token = api.pod_token(&ns, "app", "p", NODE, AUD).await;
    let now = jiff::Timestamp::now().as_second();
    assert_eq!(keys.verify(&token, Some(AUD), now).await, Verdict::Valid);
    assert_eq!(
        keys.verify(&token, Some("other"), now).await,
        Verdict::Refused(Unverified::Audience)
    );
    assert_eq!(
        keys.verify(&token, Some(AUD), now + 7200).await,
        Verdict::Refused(Unverified::Expired)
    );
    // The API server's own audience, as kubectl's tokens have.
    let api_token = api.token(&ns, "app", None, ISSUER, 600).await;
    assert_eq!(keys.verify(&api_token, None, now).await, Verdict::Valid);
    // A static token is not a JWT: the API server's other authenticators judge it.
    assert_eq!(keys.verify("alice-token", None, now).await, Verdict::NotChecked);
    // The real token's claims with another signature; the tests' unsigned tokens.
    let (signed, _) = token.rsplit_once('.').unwrap();
    let resigned = format!("{signed}.{}", foreign("x", AUD).rsplit_once('.').unwrap().1);
    assert_eq!(
        keys.verify(&resigned, Some(AUD), now).await,
        Verdict::Refused(Unverified::Signature)
    );
    let unsigned = pod_token("pi-demo", "app", "p", AUD);
    assert!(matches!(
        keys.verify(&unsigned, Some(AUD), now).await,
        Verdict::Refused(_)
    ));
    assert!(metrics.refused("signature") >= 1);
}

/// Counts the reviews that reach the API server.
struct Counting {
    inner: KubeReviewer,
    reviews: Arc<AtomicU64>,
}

impl TokenReviewer for Counting {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        self.reviews.fetch_add(1, Ordering::Relaxed);
        self.inner.review(token, audience)
    }
}

/// An exchange in process on `api`, with its TokenReviews counted (behind the local check
/// with `keys` when given); its base URL and the count.
async fn counted_exchange(
    api: &ApiServer,
    keys: Option<Arc<IssuerKeys>>,
) -> (String, Arc<AtomicU64>, impl Drop) {
    crypto();
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let reviews = Arc::new(AtomicU64::new(0));
    let counting: Arc<dyn TokenReviewer> = Arc::new(Counting {
        inner: KubeReviewer::new(api.config(), Duration::from_secs(2)).unwrap(),
        reviews: reviews.clone(),
    });
    let reviewer: Arc<dyn TokenReviewer> = match keys {
        Some(keys) => Arc::new(LocallyVerified::new(keys, counting)),
        None => counting,
    };
    let token_file = dir.path().join("operator-token");
    std::fs::write(&token_file, "operator-iam-token").unwrap();
    let auth = pod_identity_webhook::testing::CloudAuth::TokenFile(
        pod_identity_webhook::testing::TokenFile::new(token_file),
    );
    let client = pod_identity_webhook::testing::http_client(None, Duration::from_secs(4)).unwrap();
    let iam_client = pod_identity_webhook::exchange::iam::Iam::new(
        client,
        &iam.url,
        auth,
        pod_identity_webhook::exchange::iam::Domain::Id("domain-1".into()),
        3600,
    )
    .unwrap();
    let exchange = Exchange::bind(
        ExchangeConfig::new("127.0.0.1:0".parse().unwrap(), PROJECT, CLUSTER),
        reviewer,
        api.config(),
        fixture_store(),
        Some(iam_client),
        None,
        Arc::new(ExchangeMetrics::default()),
    )
    .await
    .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}",
        exchange.local_addr().port()
    );
    let (stop, shutdown) = stop_signal();
    tokio::spawn(exchange.run(shutdown));
    (url, reviews, Guard(Some(stop), iam, dir))
}

/// Stops the exchange, and keeps its doubles, until dropped.
struct Guard(
    Option<tokio::sync::oneshot::Sender<()>>,
    #[allow(dead_code, reason = "held for its Drop")] doubles::Double,
    #[allow(dead_code, reason = "held for its Drop")] tempfile::TempDir,
);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_cost_the_exchange_no_token_review() {
    let Some(api) = ApiServer::shared() else { return };
    let (keys, verified) = keys_of(api, Duration::from_secs(10)).await;
    let (base, reviews, _guard) = counted_exchange(api, Some(keys)).await;
    let url = format!("{base}/assume-agency-for-pod-identity");
    let c = reqwest::Client::new();
    let post = async |caller: &str, pod: &str| {
        let r = c
            .post(&url)
            .header("X-Auth-Token", caller)
            .json(&json!({"token": pod}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    for i in 0..20 {
        let (status, body) = post(
            &foreign(&format!("a{i}"), "pod-identity-exchange"),
            &foreign("p", AUD),
        )
        .await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(
        reviews.load(Ordering::Relaxed),
        0,
        "no TokenReview for a forged caller token"
    );
    assert_eq!(verified.refused("unknown_key"), 20);
    // The real agent's token (reviewed once, then cached) with forged pod tokens.
    let agent = api.agent_token(NODE).await;
    for i in 0..20 {
        let (status, body) = post(&agent, &foreign(&format!("p{i}"), AUD)).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(
        reviews.load(Ordering::Relaxed),
        1,
        "only the agent's token was reviewed"
    );
    assert_eq!(verified.refused("unknown_key"), 40);
    // A real pod's token: reviewed, and credentials issued.
    let pod = api
        .pod_token(
            "pi-demo",
            "app",
            &format!("issuer-{:08x}", fastrand::u32(..)),
            NODE,
            AUD,
        )
        .await;
    let (status, body) = post(&agent, &pod).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reviews.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_at_a_thousand_a_second_read_the_keys_at_the_bounded_rate() {
    let Some(api) = ApiServer::shared() else { return };
    let interval = Duration::from_secs(1);
    let (keys, metrics) = keys_of(api, interval).await;
    let before = metrics.fetches();
    let tokens: Vec<String> = (0..100).map(|i| foreign(&format!("rotated-{i}"), AUD)).collect();
    let start = Instant::now();
    let mut sent = 0;
    // 1 000 a second for 3 s, each naming a key id the cluster does not have.
    while start.elapsed() < Duration::from_secs(3) {
        let batch: Vec<_> = (0..100)
            .map(|i| {
                let keys = keys.clone();
                let t = tokens[i].clone();
                tokio::spawn(async move {
                    keys.verify(&t, Some(AUD), jiff::Timestamp::now().as_second())
                        .await
                })
            })
            .collect();
        for b in batch {
            assert_eq!(b.await.unwrap(), Verdict::Refused(Unverified::UnknownKey));
        }
        sent += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads = metrics.fetches() - before;
    let bound = (start.elapsed().as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        reads <= bound,
        "{reads} reads of the keys for {sent} unknown key ids in {:?} (bound {bound})",
        start.elapsed()
    );
    assert!(reads >= 1, "an unknown key id reads the keys again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotated_in_is_picked_up() {
    let Some(mut api) = ApiServer::start_own("rotation", &[]) else {
        return;
    };
    let (keys, metrics) = keys_of(&api, Duration::from_secs(1)).await;
    let ns = api.namespace("rotation", &[]).await;
    let old = api.pod_token(&ns, "app", "p", NODE, AUD).await;
    let now = || jiff::Timestamp::now().as_second();
    assert_eq!(keys.verify(&old, Some(AUD), now()).await, Verdict::Valid);

    // A second key: the API server signs with it and still accepts the first.
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output();
    let Ok(out) = out
        .map_err(|e| e.to_string())
        .and_then(|o| o.status.success().then_some(o).ok_or_else(String::new))
    else {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        return rotate(&mut api, key.into_bytes(), &keys, &metrics, &ns, &old).await;
    };
    rotate(&mut api, out.stdout, &keys, &metrics, &ns, &old).await;
}

async fn rotate(
    api: &mut ApiServer,
    key: Vec<u8>,
    keys: &IssuerKeys,
    metrics: &IssuerMetrics,
    ns: &str,
    old: &str,
) {
    let now = || jiff::Timestamp::now().as_second();
    let file = api.dir.join("second-sa.key");
    std::fs::write(&file, key).unwrap();
    api.restart(&[
        format!("--service-account-key-file={}", file.display()),
        format!("--service-account-signing-key-file={}", file.display()),
    ]);
    let pod = api.pod(ns, "p2", "app", NODE).await;
    let new = api.token(ns, "app", Some(&pod), AUD, 3600).await;
    let kid = |t: &str| {
        let h = t.split('.').next().unwrap();
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&h).unwrap()["kid"].clone()
    };
    assert_ne!(kid(&new), kid(old), "the new token is signed with the new key");
    let reads = metrics.fetches();
    // The interval since the last read has passed: the unknown key id reads the keys again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(keys.verify(&new, Some(AUD), now()).await, Verdict::Valid);
    assert!(metrics.fetches() > reads);
    assert_eq!(
        keys.verify(old, Some(AUD), now()).await,
        Verdict::Valid,
        "the first key still verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_association_api_reviews_a_token_once_and_new_tokens_within_a_budget_per_address() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    // Without the local check: tokens it cannot judge (static ones, other issuers) are the
    // API server's, so the budget is what stands between a flood and TokenReview.
    let (base, reviews, _guard) = counted_exchange(api, None).await;
    let url = format!("{base}/pod-identity-associations");
    let list = async |token: &str, from: u8| {
        let c = reqwest::Client::builder()
            .local_address(Some([127, 0, 0, from].into()))
            .build()
            .unwrap();
        let r = c.get(&url).header("X-Auth-Token", token).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // The same (static) token 30 times: one review.
    for _ in 0..30 {
        let (status, body) = list("alice-token", 2).await;
        assert!(status == 403 || status == 200, "{status} {body}");
    }
    assert_eq!(
        reviews.load(Ordering::Relaxed),
        1,
        "a token is reviewed once while cached"
    );
    // 60 new tokens from one address: reviewed up to the address's burst, then 429.
    let mut limited = 0;
    for i in 0..60 {
        let (status, body) = list(&format!("forged-{i}"), 3).await;
        match status {
            401 => {}
            429 => {
                assert!(body.contains("too many new tokens from this address"), "{body}");
                limited += 1;
            }
            s => panic!("{s} {body}"),
        }
    }
    let reviewed = reviews.load(Ordering::Relaxed) - 1;
    assert!(
        reviewed <= 22,
        "{reviewed} reviews for 60 new tokens from one address"
    );
    assert!(limited >= 38, "{limited} refused over the budget");
    // Another address is not held to that one's budget, and a repeated refusal is cached.
    assert_eq!(list("forged-0", 4).await.0, 401);
    let (status, _) = list("alice-token", 4).await;
    assert!(status == 403 || status == 200);
}
