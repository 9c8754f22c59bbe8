//! The credential agent and the exchange on loopback, against test doubles of IAM and CCE
//! and the stand-in API server's TokenReview.

use std::time::Duration;

use crate::common::agents::*;
use crate::common::doubles::{self, Mode};
use crate::common::standin::StandIn;
use pod_identity_webhook::profile::Provider;
use serde_json::Value;

const AUD: &str = "service.cce.pods";

async fn call(url: &str, token: Option<&str>, host: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).body("{}");
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_serves_both_shapes_and_refuses_what_it_should() {
    let agent = start_agent(Provider::Cce, local_backend(Provider::Cce), |_| {}).await;
    let token = pod_token("pi-demo", "app", "app-1", AUD);
    let (status, body) = call(&agent.url, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    let c = &body["credentials"];
    assert!(c["accessKeyId"].as_str().unwrap().starts_with("LOCALFAKE"));
    assert!(
        c["expiration"].as_str().unwrap().ends_with('Z') && c["expiration"].as_str().unwrap().contains('.')
    );
    assert_eq!(
        body["podIdentityAssociationId"],
        "81f143f5-f469-4fb6-b17c-8f52af73184c"
    );
    assert_eq!(body["subject"]["serviceAccount"], "app");
    // GET works too, with a Bearer prefix and whitespace; the cache answers the same.
    let r = reqwest::Client::new()
        .get(&agent.url)
        .header("Authorization", format!("Bearer  {token} "))
        .send()
        .await
        .unwrap();
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["credentials"], body["credentials"]);
    assert_eq!(agent.metrics.upstream_calls(), 1);
    assert_eq!(agent.metrics.hits(), 1);

    let now = jiff::Timestamp::now().as_second();
    let expired = crate::common::unsigned("pi-demo", "app", "p", AUD, now - 10);
    for (what, token, host, want, needle) in [
        ("no header", None, None, 400, "missing Authorization"),
        ("not a JWT", Some("hello"), None, 400, "not a JWT"),
        ("expired", Some(expired.as_str()), None, 400, "expired"),
        (
            "foreign host",
            Some(token.as_str()),
            Some("evil.example"),
            403,
            "not an address of this agent",
        ),
    ] {
        let (status, body) = call(&agent.url, token, host).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{what}: {body}"
        );
    }
    // The link-local name is accepted.
    assert_eq!(
        call(&agent.url, Some(&token), Some("169.254.170.23")).await.0,
        200
    );
    // No association: a 4xx that says so.
    let (status, body) = call(&agent.url, Some(&pod_token("pi-other", "app", "x", AUD)), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no pod identity association for pi-other/app")
    );
    // Wrong audience for the profile.
    let (status, _) = call(
        &agent.url,
        Some(&pod_token("pi-demo", "app", "x", "pods.eks.amazonaws.com")),
        None,
    )
    .await;
    assert_eq!(status, 401);

    let eks = start_agent(Provider::Eks, local_backend(Provider::Eks), |_| {}).await;
    let (status, body) = call(
        &eks.url,
        Some(&pod_token("pi-demo", "worker", "w", "pods.eks.amazonaws.com")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for k in [
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "AccountId",
        "Expiration",
    ] {
        assert!(body[k].is_string(), "{k} missing: {body}");
    }

    let metrics = reqwest::get(format!("{}/metrics", agent.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("podidentity_agent_cache_hits_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("podidentity_agent_responses_total{code=\"400\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("podidentity_agent_responses_total{code=\"403\"} 2\n"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", agent.admin))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cold_token_and_a_thousand_requests_make_one_upstream_call() {
    let cce = doubles::cce().await;
    cce.set_mode(Mode::Slow(Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
        |_| {},
    )
    .await;
    let token = pod_token("pi-demo", "app", "app-1", AUD);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, url, token) = (client.clone(), agent.url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).header("Authorization", token).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap()["credentials"]["accessKeyId"].clone(),
            )
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        let (status, key) = t.await.unwrap();
        assert_eq!(status, 200);
        keys.insert(key.to_string());
    }
    assert_eq!(cce.calls().len(), 1, "exactly one upstream call");
    assert_eq!(keys.len(), 1, "everyone got the same credentials");
    let call = &cce.calls()[0];
    assert_eq!(
        call.path,
        format!("/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity")
    );
    assert_eq!(call.header("X-Auth-Token"), Some("agent-iam-token"));
    assert_eq!(call.body["token"], token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_clear_statuses() {
    let cce = doubles::cce().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_millis(500)),
        |c| {
            c.cache.upstream_rate = 0.001;
            c.cache.upstream_burst = 4.0;
        },
    )
    .await;
    let t = |pod: &str| pod_token("pi-demo", "app", pod, AUD);
    cce.set_mode(Mode::Fail(403, "the agency does not trust this cluster"));
    let (status, body) = call(&agent.url, Some(&t("a")), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the agency does not trust this cluster")
    );
    cce.set_mode(Mode::Slow(Duration::from_secs(2)));
    let (status, body) = call(&agent.url, Some(&t("b")), None).await;
    assert_eq!(status, 504, "{body}");
    cce.set_mode(Mode::Fail(500, "internal"));
    let (status, _) = call(&agent.url, Some(&t("c")), None).await;
    assert_eq!(status, 500);
    // The burst of 4 upstream calls is spent: the next cold token is rate limited.
    cce.set_mode(Mode::Ok);
    let (status, body) = call(&agent.url, Some(&t("d")), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&agent.url, Some(&t("e")), None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "RateLimited");
    // Cached credentials are still served while limited.
    assert_eq!(call(&agent.url, Some(&t("d")), None).await.0, 200);

    // Upstream unreachable.
    // Port 1 on loopback: nothing listens there, so the connection is refused. (A port freed
    // by dropping a listener could be taken by another test's server meanwhile.)
    let closed = "http://127.0.0.1:1".to_owned();
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&closed, dir.path(), Duration::from_secs(2)),
        |_| {},
    )
    .await;
    let (status, body) = call(&agent.url, Some(&t("f")), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
}

/// The exchange with the stand-in API server and an IAM double, and its seed 000 URL.
struct ExchangeRig {
    api: StandIn,
    iam: doubles::Double,
    url: String,
    _exchange: RunningExchange,
    _dir: tempfile::TempDir,
}

async fn exchange_rig() -> ExchangeRig {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_exchange(&api, &iam.url, dir.path()).await;
    let url = format!(
        "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity",
        exchange.url
    );
    ExchangeRig {
        api,
        iam,
        url,
        _exchange: exchange,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_answers_seed_000_from_token_review_and_iam() {
    let rig = exchange_rig().await;
    let ExchangeRig { api, iam, url, .. } = &rig;
    let post = |body: Value| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let token = pod_token("pi-demo", "app", "app-7f9c", AUD);
    let (status, body) = post(serde_json::json!({"token": token})).await;
    assert_eq!(status, 200, "{body}");
    let session = format!("cce-{CLUSTER}-app-7f9c");
    assert_eq!(body["audience"], AUD);
    assert_eq!(
        body["podIdentityAssociationId"],
        "81f143f5-f469-4fb6-b17c-8f52af73184c"
    );
    assert_eq!(
        body["subject"],
        serde_json::json!({"namespace": "pi-demo", "serviceAccount": "app"})
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
    // What IAM was asked, exactly as seed 003 says.
    let calls = iam.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("X-Auth-Token"), Some("operator-iam-token"));
    assert_eq!(
        calls[0].header("Content-Type"),
        Some("application/json;charset=utf8")
    );
    assert_eq!(
        calls[0].body,
        serde_json::json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": {
            "agency_name": "demo-agency", "domain_id": "domain-1", "duration_seconds": 3600,
            "session_user": {"name": session}}}}})
    );
    assert_eq!(api.reviews(), 1);

    let now = jiff::Timestamp::now().as_second();
    let unbound = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims =
            serde_json::json!({"aud": [AUD], "exp": now + 600, "sub": "system:serviceaccount:pi-demo:app"});
        format!("e30.{}.c2ln", b64.encode(claims.to_string()))
    };
    for (what, body, want, needle) in [
        ("no token", serde_json::json!({}), 400, "non-empty \"token\""),
        (
            "garbage",
            serde_json::json!({"token": "abc"}),
            401,
            "invalid service account token",
        ),
        (
            "expired",
            serde_json::json!({"token": crate::common::unsigned("pi-demo", "app", "p", AUD, now - 5)}),
            401,
            "expired",
        ),
        (
            "other audience",
            serde_json::json!({"token": pod_token("pi-demo", "app", "p", "sts.amazonaws.com")}),
            401,
            "audience",
        ),
        (
            "unbound",
            serde_json::json!({"token": unbound}),
            401,
            "not bound to a pod",
        ),
        (
            "no association",
            serde_json::json!({"token": pod_token("pi-other", "app", "p", AUD)}),
            404,
            "no pod identity association for pi-other/app",
        ),
    ] {
        let (status, body) = post(body).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["error_msg"].as_str().unwrap().contains(needle),
            "{what}: {body}"
        );
        assert!(body["error_code"].is_string());
    }
    // IAM refusing: a 502 that carries IAM's message.
    iam.set_mode(Mode::Fail(403, "operator lacks the agent operator role"));
    let (status, body) = post(serde_json::json!({"token": token})).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("operator lacks the agent operator role")
    );
    // Another cluster's path.
    let other = url.replace(CLUSTER, "other");
    let r = reqwest::Client::new()
        .post(&other)
        .json(&serde_json::json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reaches_the_exchange_over_https() {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("exchange-tls");
    pod_identity_webhook::certs::write(&certs, &pod_identity_webhook::certs::generate_local(1).unwrap())
        .unwrap();
    let exchange = start_exchange_with(&api, &iam.url, dir.path(), Some(&certs)).await;
    assert!(exchange.url.starts_with("https://"));
    let ca = certs.join("ca.crt");
    let agent = start_agent(
        Provider::Cce,
        cce_backend_trusting(&exchange.url, dir.path(), Duration::from_secs(4), Some(&ca)),
        |_| {},
    )
    .await;
    let (status, body) = call(&agent.url, Some(&pod_token("pi-demo", "app", "a", AUD)), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"]["accessKeyId"], "IAMAK00001");
    // An agent that does not trust the exchange's CA gets nothing from it.
    let untrusting = start_agent(
        Provider::Cce,
        cce_backend(&exchange.url, dir.path(), Duration::from_secs(4)),
        |_| {},
    )
    .await;
    let (status, body) = call(
        &untrusting.url,
        Some(&pod_token("pi-demo", "app", "b", AUD)),
        None,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(iam.calls().len(), 1);
}

/// Two pods of one ReplicaSet with a long Deployment name, under a UUID cluster id: IAM sees
/// two distinct session names, each naming its pod within seed 003's 64 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_gives_long_named_pods_of_one_replicaset_distinct_sessions() {
    let rig = exchange_rig().await;
    let ExchangeRig { iam, url, .. } = &rig;
    let pods = [
        "payments-reconciliation-worker-7f9c8d6b5c-x2x9z",
        "payments-reconciliation-worker-7f9c8d6b5c-q8w4m",
    ];
    for pod in pods {
        let token = pod_token("pi-demo", "app", pod, AUD);
        let r = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
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
    for (session, pod) in sessions.iter().zip(pods) {
        assert!(session.len() <= 64, "{session}");
        assert!(session.starts_with("cce-46db1d50-"), "{session}");
        assert!(session.ends_with(&pod[pod.len() - 16..]), "{session} names {pod}");
    }
}

/// The agent on IPv6 loopback as well as IPv4 (as on a node: 169.254.170.23 and
/// [fd00:ec2::23]): a real socket on [::1] and a real HTTP client, with the Host header of
/// each address accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_on_ipv6_and_ipv4_at_once() {
    let agent = start_agent(Provider::Cce, local_backend(Provider::Cce), |c| {
        c.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    })
    .await;
    assert_eq!(agent.urls.len(), 2);
    assert!(agent.urls[1].starts_with("http://[::1]:"), "{:?}", agent.urls);
    let token = pod_token("pi-demo", "app", "app-1", AUD);
    for url in &agent.urls {
        // reqwest sends `Host: [::1]:<port>` for the IPv6 URL.
        let (status, body) = call(url, Some(&token), None).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert!(body["credentials"]["accessKeyId"].is_string(), "{body}");
        for host in ["[fd00:ec2::23]", "169.254.170.23:80", "[::1]"] {
            assert_eq!(
                call(url, Some(&token), Some(host)).await.0,
                200,
                "{url} as {host}"
            );
        }
        let (status, _) = call(url, Some(&token), Some("[fd00:ec2::24]")).await;
        assert_eq!(status, 403, "{url}: another IPv6 address is not the agent's");
    }
    assert_eq!(
        agent.metrics.upstream_calls(),
        1,
        "one cache behind both addresses"
    );
}
