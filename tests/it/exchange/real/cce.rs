//! The exchange on loopback with TokenReview on the real API server, of real bound tokens from
//! the TokenRequest API (a pod-bound token carries its pod and node in `user.extra`), and IAM
//! on its double. Who may call (the agent's token), which pod tokens it redeems (same node as
//! the caller), the budget per service account, the short cache, and what refusals tell the
//! caller and the log. (A TokenReview that fails to be asked is `exchange`'s, on the stand-in.)
//!
//! Pods are in the fixture associations' namespaces (pi-demo, pi-other), named uniquely per
//! test: the API server is shared.
//!
//! Tests that read the log run on a current-thread runtime: every server they start runs on
//! the test's thread, whose log events [`Logs`] captures.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::doubles::{self, Double};
use crate::common::{Logs, NODE, token_hash};

const AUD: &str = "service.cce.pods";
const CALLER_AUD: &str = "pod-identity-exchange";

/// A random suffix for the names of one test's pods.
pub(crate) fn suffix() -> String {
    format!("{:06x}", fastrand::u32(..0x100_0000))
}

/// POSTs `{"token": pod}` with `caller` as `X-Auth-Token`; the status, the body and the
/// `Retry-After` header.
async fn post(exchange: &RunningExchange, caller: Option<&str>, body: Value) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().post(exchange.api()).json(&body);
    if let Some(c) = caller {
        req = req.header("X-Auth-Token", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

/// The exchange's own `/metrics` line for `series`, as a number.
async fn metric(exchange: &RunningExchange, series: &str) -> u64 {
    let text = crate::common::metrics_of(&exchange.url).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

async fn setup(
    api: &ApiServer,
    tweak: impl FnOnce(&mut pod_identity_webhook::exchange::ExchangeConfig),
) -> (Double, RunningExchange, tempfile::TempDir) {
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .tweak(tweak)
        .start()
        .await;
    (iam, exchange, dir)
}

/// The projected token of pod `namespace/pod` of `sa` on [`NODE`] for `audience`.
async fn pod_token(api: &ApiServer, namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    api.pod_token(namespace, sa, pod, NODE, audience).await
}

/// A token of `namespace/sa` from the TokenRequest API bound to no pod (no pod, no node claim).
pub(crate) async fn unbound_token(api: &ApiServer, namespace: &str, sa: &str, audience: &str) -> String {
    api.create_namespace(namespace, &[]).await;
    api.service_account(namespace, sa).await;
    api.token(namespace, sa, None, audience, 3600).await
}

/// A token bound to pod `namespace/pod` that no node runs (no `spec.nodeName`): the API server
/// gives it the pod's claims and no node's.
async fn nodeless_token(api: &ApiServer, namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    api.create_namespace(namespace, &[]).await;
    let p = api
        .pod_with(
            namespace,
            json!({"metadata": {"name": pod}, "spec": {"serviceAccountName": sa,
                "containers": [{"name": "app", "image": "registry.example/app:1"}]}}),
        )
        .await;
    assert!(p.spec.as_ref().unwrap().node_name.is_none());
    api.token(namespace, sa, Some(&p), audience, 3600).await
}

/// Whether the API server authenticates `token` for `audience` (a TokenReview as the admin).
async fn authenticated(api: &ApiServer, token: &str, audience: &str) -> bool {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(api.client())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.and_then(|s| s.authenticated) == Some(true)
}

/// A pod token the API server issued and then let expire: the TokenRequest API issues none
/// shorter than 10 minutes, so this is a real token of pod `namespace/pod` re-signed with the
/// API server's own service-account key, its `exp` an hour past (beyond the validator's
/// leeway). The same claims re-signed unexpired are authenticated: only the expiry differs.
async fn expired_token(api: &ApiServer, namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    let real = pod_token(api, namespace, sa, pod, audience).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = real.split('.');
    let header: Value = serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let pem = std::fs::read(api.ca_file.parent().unwrap().join("sa.key")).unwrap();
    let sign = |claims: &Value| -> String {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let signature = match header["alg"].as_str().unwrap() {
            "RS256" => {
                let pair = match &key {
                    PrivateKeyDer::Pkcs1(k) => ring::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
                    PrivateKeyDer::Pkcs8(k) => ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
                    other => panic!("an RSA key: {other:?}"),
                }
                .unwrap();
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            "ES256" => {
                let PrivateKeyDer::Pkcs8(k) = &key else {
                    panic!("a PKCS#8 EC key")
                };
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    k.secret_pkcs8_der(),
                    &rng,
                )
                .unwrap();
                pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            alg => panic!("signing algorithm {alg}"),
        };
        format!("{input}.{}", b64.encode(signature))
    };
    assert!(
        authenticated(api, &sign(&claims), audience).await,
        "the re-signed, unexpired token is the API server's"
    );
    let now = jiff::Timestamp::now().as_second();
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    sign(&expired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_token_and_a_pod_token_of_its_node_get_the_agencys_credentials() {
    let Some(api) = ApiServer::shared() else { return };
    let (iam, exchange, _dir) = setup(api, |_| {}).await;
    let s = suffix();
    let agent = api.agent_token(NODE).await;
    let pod = format!("app-7f9c-{s}");
    let token = pod_token(api, "pi-demo", "app", &pod, AUD).await;
    let (status, body) = redeem(&exchange, &agent, &token).await;
    assert_eq!(status, 200, "{body}");
    let session = format!("cce-{CLUSTER}-{pod}");
    assert_eq!(body["audience"], AUD);
    assert_eq!(
        body["podIdentityAssociationId"],
        "81f143f5-f469-4fb6-b17c-8f52af73184c"
    );
    assert_eq!(
        body["subject"],
        json!({"namespace": "pi-demo", "serviceAccount": "app"})
    );
    assert_eq!(
        body["assumedAgency"]["urn"],
        format!("sts::domain-1::assumed-agency:demo-agency/{session}")
    );
    assert_eq!(body["assumedAgency"]["id"], format!("domain-1:{session}"));
    assert_eq!(body["credentials"]["accessKeyId"], "IAMAK00001");
    assert_eq!(body["credentials"]["secretAccessKey"], "iam-secret-1-demo-agency");
    let exp = body["credentials"]["expiration"].as_str().unwrap();
    assert_eq!(exp.len(), "2026-11-23T15:00:00.000Z".len(), "{exp}");
    // What IAM was asked, exactly as the IAM page says.
    let calls = iam.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("X-Auth-Token"), Some("operator-iam-token"));
    assert_eq!(
        calls[0].header("Content-Type"),
        Some("application/json;charset=utf8")
    );
    assert_eq!(
        calls[0].body,
        json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": {
            "agency_name": "demo-agency", "domain_id": "domain-1", "duration_seconds": 3600,
            "session_user": {"name": session}}}}})
    );
    // One review of each token, each for its own audience.
    assert_eq!(exchange.reviews_for(CALLER_AUD), 1);
    assert_eq!(exchange.reviews_for(AUD), 1);

    // Pod tokens the API server refuses or that name no association.
    let expired = expired_token(api, "pi-demo", "app", &format!("p-exp-{s}"), AUD).await;
    let other_audience = pod_token(api, "pi-demo", "app", &format!("p-aud-{s}"), "sts.amazonaws.com").await;
    let unbound = unbound_token(api, "pi-demo", "app", AUD).await;
    let no_association = pod_token(api, "pi-other", "app", &format!("p-{s}"), AUD).await;
    for (what, body, want, needle) in [
        ("no token", json!({}), 400, "non-empty \"token\""),
        (
            "garbage",
            json!({"token": "abc"}),
            401,
            "invalid service account token",
        ),
        ("expired", json!({ "token": expired }), 401, "unexpired"),
        ("other audience", json!({ "token": other_audience }), 401, AUD),
        ("unbound", json!({ "token": unbound }), 401, "not bound to a pod"),
        (
            "no association",
            json!({ "token": no_association }),
            404,
            "no pod identity association for pi-other/app",
        ),
    ] {
        let (status, body, _) = post(&exchange, Some(&agent), body).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["error_msg"].as_str().unwrap().contains(needle),
            "{what}: {body}"
        );
        assert!(body["error_code"].is_string());
    }
    // Another cluster's path.
    let other = exchange.api().replace(CLUSTER, "other");
    let r = reqwest::Client::new()
        .post(&other)
        .header("X-Auth-Token", &agent)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(iam.calls().len(), 1, "no refusal reached IAM");
}

#[tokio::test]
async fn callers_that_are_not_the_agent_and_pod_tokens_of_another_node_are_refused_and_logged() {
    let Some(api) = ApiServer::shared() else { return };
    let (logs, _guard) = Logs::capture();
    let (iam, exchange, _dir) = setup(api, |_| {}).await;
    let s = suffix();
    let pod = pod_token(api, "pi-demo", "app", &format!("app-1-{s}"), AUD).await;
    let agent = api.agent_token(NODE).await;

    // No caller token.
    let (status, body, _) = post(&exchange, None, json!({ "token": pod })).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("X-Auth-Token is missing"),
        "{body}"
    );
    assert_eq!(
        logs.lines_with(&["exchange refused", "reason=\"no_caller_token\""])
            .len(),
        1
    );

    // A valid token for the exchange's audience, but of another service account (an
    // application pod's, on the agent's node).
    let intruder = pod_token(api, "pi-demo", "app", &format!("app-1-{s}"), CALLER_AUD).await;
    let (status, body) = redeem(&exchange, &intruder, &pod).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(exchange.reviews_for(CALLER_AUD), 1);
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:pi-demo:app"),
        "{body}"
    );
    let line = logs.lines_with(&["exchange refused", "reason=\"caller_not_agent\""]);
    assert_eq!(line.len(), 1, "{}", logs.text());
    assert!(
        line[0].contains("caller=\"system:serviceaccount:pi-demo:app\""),
        "{}",
        line[0]
    );
    assert!(
        line[0].contains(&format!("caller_token=\"{}\"", token_hash(&intruder))),
        "{}",
        line[0]
    );

    // A pod token (the pods' audience) presented as the caller's.
    let (status, body) = redeem(&exchange, &pod, &pod).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error_msg"].as_str().unwrap().contains(CALLER_AUD), "{body}");
    assert_eq!(
        logs.lines_with(&["exchange refused", "reason=\"caller_invalid\""])
            .len(),
        1
    );

    // The agent of node-a with the token of a pod on node-b: a stolen token goes nowhere.
    let elsewhere = api
        .pod_token("pi-demo", "app", &format!("app-2-{s}"), "node-b", AUD)
        .await;
    let (status, body) = redeem(&exchange, &agent, &elsewhere).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("another node"),
        "{body}"
    );
    let line = logs.lines_with(&["exchange refused", "reason=\"other_node\""]);
    assert_eq!(line.len(), 1, "{}", logs.text());
    for field in [
        "subject=\"system:serviceaccount:pi-demo:app\"".to_owned(),
        format!("caller=\"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}\""),
        "caller_node=\"node-a\"".to_owned(),
        format!("pod_token=\"{}\"", token_hash(&elsewhere)),
        "pod on node-b, agent on node-a".to_owned(),
    ] {
        assert!(line[0].contains(&field), "{field} not in {}", line[0]);
    }

    // A token without the node claim (its pod on no node) is not redeemed either.
    let nodeless = nodeless_token(api, "pi-demo", "app", &format!("app-3-{s}"), AUD).await;
    let (status, body) = redeem(&exchange, &agent, &nodeless).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("names no node"),
        "{body}"
    );

    assert_eq!(iam.calls().len(), 0, "no refusal reached IAM");
    for (reason, n) in [
        ("no_caller_token", 1),
        ("caller_not_agent", 1),
        ("caller_invalid", 1),
        ("other_node", 1),
        ("no_node_binding", 1),
        ("rate_limited", 0),
    ] {
        let series = format!("podidentity_exchange_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&exchange, &series).await, n, "{series}");
    }

    // The agent's token and its own node's pod token: credentials.
    let (status, body) = redeem(&exchange, &agent, &pod).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"]["accessKeyId"], "IAMAK00001");
    assert!(
        !logs
            .lines_with(&["agency credentials issued", "node=\"node-a\""])
            .is_empty()
    );
    assert_eq!(
        exchange.reviews_for(AUD),
        3,
        "the pod tokens of the last three requests"
    );

    // A pod calling the exchange directly with its own token, 300 times: every call refused,
    // its token reviewed once, IAM never asked, and the log keeps to 20 refusals a minute.
    let reviews = exchange.reviews_for(CALLER_AUD);
    for _ in 0..300 {
        let (status, body) = redeem(&exchange, &pod, &pod).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(
        exchange.reviews_for(CALLER_AUD),
        reviews,
        "remembered from the first refusal"
    );
    assert_eq!(iam.calls().len(), 1, "only the agent's request reached IAM");
    assert_eq!(
        metric(
            &exchange,
            "podidentity_exchange_refusals_total{reason=\"caller_invalid\"}"
        )
        .await,
        301
    );
    assert_eq!(logs.lines_with(&["exchange refused"]).len(), 20);

    // No token reached the log, only their hashes.
    let text = logs.text();
    for t in [&pod, &agent, &intruder, &elsewhere, &nodeless] {
        let payload = t.split('.').nth(1).unwrap();
        assert!(!text.contains(payload), "a token reached the log");
    }
}

/// A pod's token outlives nothing of its pod: once the pod is deleted the API server's
/// TokenReview refuses the token, and so does the exchange, though the token has not expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_of_a_deleted_pod_is_refused() {
    let Some(api) = ApiServer::shared() else { return };
    let (iam, exchange, _dir) = setup(api, |_| {}).await;
    let s = suffix();
    let agent = api.agent_token(NODE).await;
    // Its sibling, made the same way, is redeemed.
    let sibling = pod_token(api, "pi-demo", "app", &format!("app-live-{s}"), AUD).await;
    assert_eq!(redeem(&exchange, &agent, &sibling).await.0, 200);

    let name = format!("app-gone-{s}");
    let pod = api.pod("pi-demo", &name, "app", NODE).await;
    let token = api.token("pi-demo", "app", Some(&pod), AUD, 3600).await;
    let pods = Api::<Pod>::namespaced(api.client(), "pi-demo");
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    // Gone from the store; then from what the API server's token validator reads (its pod
    // cache may lag the store a moment, and a success it gave stays cached some seconds).
    crate::common::eventually("the pod gone", Duration::from_secs(10), async || {
        pods.get_opt(&name).await.unwrap().is_none()
    })
    .await;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while authenticated(api, &token, AUD).await {
        assert!(
            std::time::Instant::now() < end,
            "the deleted pod's token still authenticates"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, body) = redeem(&exchange, &agent, &token).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("invalid service account token"),
        "{body}"
    );
    assert_eq!(
        metric(
            &exchange,
            "podidentity_exchange_refusals_total{reason=\"pod_token_invalid\"}"
        )
        .await,
        1
    );
    assert_eq!(iam.calls().len(), 1, "only the sibling's request reached IAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_accounts_budget_bounds_its_iam_calls() {
    let Some(api) = ApiServer::shared() else { return };
    let (iam, exchange, _dir) = setup(api, |c| {
        c.rate_per_service_account = 0.01;
        c.burst_per_service_account = 2.0;
    })
    .await;
    let s = suffix();
    let agent = api.agent_token(NODE).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(pod_token(api, "pi-demo", "app", &format!("app-{i}-{s}"), AUD).await);
    }
    let mut statuses = Vec::new();
    let mut retry = None;
    for token in &tokens {
        let (status, body, r) = post(&exchange, Some(&agent), json!({ "token": token })).await;
        if status == 429 {
            assert!(
                body["error_msg"].as_str().unwrap().contains("pi-demo/app"),
                "{body}"
            );
            retry = r;
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let retry: u64 = retry.expect("Retry-After on 429").parse().unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    assert_eq!(iam.calls().len(), 2, "the budget bounds IAM calls");
    // Each pod token was reviewed; the agent's once, then remembered.
    assert_eq!(exchange.reviews_for(AUD), 5);
    assert_eq!(exchange.reviews_for(CALLER_AUD), 1);
    // Another service account has its own budget.
    let worker = pod_token(api, "pi-demo", "worker", &format!("w-1-{s}"), AUD).await;
    let (status, body) = redeem(&exchange, &agent, &worker).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(iam.calls().len(), 3);
    assert_eq!(
        metric(
            &exchange,
            "podidentity_exchange_refusals_total{reason=\"rate_limited\"}"
        )
        .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_pod_token_is_answered_from_the_cache_on_its_node_only() {
    let Some(api) = ApiServer::shared() else { return };
    let (iam, exchange, _dir) = setup(api, |c| c.cache_ttl = Duration::from_secs(3)).await;
    let s = suffix();
    let agent = api.agent_token(NODE).await;
    let other_agent = api.agent_token("node-b").await;
    let pod = pod_token(api, "pi-demo", "app", &format!("app-1-{s}"), AUD).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (status, body) = redeem(&exchange, &agent, &pod).await;
        assert_eq!(status, 200, "{body}");
        keys.push(body["credentials"]["accessKeyId"].clone());
    }
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(iam.calls().len(), 1);
    assert_eq!(
        (exchange.reviews_for(CALLER_AUD), exchange.reviews_for(AUD)),
        (1, 1)
    );
    assert_eq!(
        metric(&exchange, "podidentity_exchange_cache_hits_total{token=\"pod\"}").await,
        2
    );
    // Another node's agent presenting the same (stolen) token gets no cached answer, and
    // cannot evict it either.
    let (status, body) = redeem(&exchange, &other_agent, &pod).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(redeem(&exchange, &agent, &pod).await.0, 200);
    assert_eq!(iam.calls().len(), 1);
    assert_eq!(
        metric(&exchange, "podidentity_exchange_cache_hits_total{token=\"pod\"}").await,
        3
    );
    // After the TTL the token is verified and redeemed again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, _) = redeem(&exchange, &agent, &pod).await;
    assert_eq!(status, 200);
    assert_eq!(iam.calls().len(), 2);
    assert_eq!(
        exchange.reviews_for(CALLER_AUD),
        3,
        "node-b's agent, then node-a's again"
    );

    // Without a cache every request costs two reviews and an IAM call.
    let (iam, exchange, _dir) = setup(api, |c| c.cache_ttl = Duration::ZERO).await;
    for _ in 0..3 {
        assert_eq!(redeem(&exchange, &agent, &pod).await.0, 200);
    }
    assert_eq!(iam.calls().len(), 3);
    assert_eq!(
        (exchange.reviews_for(CALLER_AUD), exchange.reviews_for(AUD)),
        (3, 3)
    );
}

/// Two pods of one ReplicaSet with a long Deployment name, under a UUID cluster id: IAM sees
/// two distinct session names, each naming its pod within seed 003's 64 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_named_pods_of_one_replicaset_get_distinct_sessions() {
    let Some(api) = ApiServer::shared() else { return };
    let (iam, exchange, _dir) = setup(api, |_| {}).await;
    let agent = api.agent_token(NODE).await;
    // The ReplicaSet controller's suffixes: five characters of its alphabet.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let rs = |_| -> String {
        let tail: String = (0..5)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        format!("payments-reconciliation-worker-7f9c8d6b5c-{tail}")
    };
    let mut pods: Vec<String> = (0..2).map(rs).collect();
    while pods[0] == pods[1] {
        pods[1] = rs(1);
    }
    for pod in &pods {
        let token = pod_token(api, "pi-demo", "app", pod, AUD).await;
        let (status, body) = redeem(&exchange, &agent, &token).await;
        assert_eq!(status, 200, "{body}");
    }
    let sessions: Vec<String> = iam
        .calls()
        .iter()
        .map(|c| {
            c.body["auth"]["identity"]["assume_role"]["session_user"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sessions.len(), 2);
    assert_ne!(sessions[0], sessions[1]);
    for (session, pod) in sessions.iter().zip(&pods) {
        assert!(session.len() <= 64, "{session}");
        assert!(session.starts_with("cce-46db1d50-"), "{session}");
        assert!(session.ends_with(&pod[pod.len() - 16..]), "{session} names {pod}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reaches_the_exchange_over_https() {
    let Some(api) = ApiServer::shared() else { return };
    use pod_identity_webhook::profile::Provider;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("exchange-tls");
    pod_identity_webhook::certs::write(&certs, &pod_identity_webhook::certs::generate_local(1).unwrap())
        .unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .tweak(|c| c.cert_dir = Some(certs.clone()))
        .start()
        .await;
    assert!(exchange.url.starts_with("https://"));
    let ca = certs.join("ca.crt");
    let agent_token = api.agent_token(NODE).await;
    let timeout = Duration::from_secs(4);
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend_as(&exchange.url, dir.path(), timeout, Some(&ca), &agent_token),
    )
    .start()
    .await;
    let s = suffix();
    let a = pod_token(api, "pi-demo", "app", &format!("a-{s}"), AUD).await;
    let r = credentials_request(&agent.url, &a).await;
    let (status, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap_or_default());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"]["accessKeyId"], "IAMAK00001");
    // An agent that does not trust the exchange's CA gets nothing from it.
    let untrusting = AgentUnderTest::new(
        Provider::Cce,
        cce_backend_as(&exchange.url, dir.path(), timeout, None, &agent_token),
    )
    .start()
    .await;
    let b = pod_token(api, "pi-demo", "app", &format!("b-{s}"), AUD).await;
    let r = credentials_request(&untrusting.url, &b).await;
    let (status, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap_or_default());
    assert_eq!(status, 502, "{body}");
    assert_eq!(iam.calls().len(), 1);
}
