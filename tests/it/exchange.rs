//! The exchange on loopback: TokenReview on the stand-in API server, IAM on its double. Who may
//! call (the agent's token), which pod tokens it redeems (same node as the caller), the budget
//! per service account, the short cache, and what refusals tell the caller and the log.
//!
//! Tests that read the log run on a current-thread runtime: every server they start runs on
//! the test's thread, whose log events [`Logs`] captures.

use std::time::Duration;

use crate::common::agents::*;
use crate::common::doubles::{self, Double, Mode};
use crate::common::standin::StandIn;
use crate::common::{Logs, NODE, token_hash, unsigned, unsigned_on};
use serde_json::{Value, json};

const AUD: &str = "service.cce.pods";
const CALLER_AUD: &str = "pod-identity-exchange";

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

async fn redeem(exchange: &RunningExchange, caller: &str, pod: &str) -> (u16, Value) {
    let (status, body, _) = post(exchange, Some(caller), json!({ "token": pod })).await;
    (status, body)
}

/// The exchange's own `/metrics` line for `series`, as a number.
async fn metric(exchange: &RunningExchange, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", exchange.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

async fn setup(
    tweak: impl FnOnce(&mut pod_identity_webhook::exchange::ExchangeConfig),
) -> (StandIn, Double, RunningExchange, tempfile::TempDir) {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_exchange_tweaked(&api, &iam.url, dir.path(), tweak).await;
    (api, iam, exchange, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_token_and_a_pod_token_of_its_node_get_the_agencys_credentials() {
    let (api, iam, exchange, _dir) = setup(|_| {}).await;
    let agent = agent_token(NODE);
    let token = pod_token("pi-demo", "app", "app-7f9c", AUD);
    let (status, body) = redeem(&exchange, &agent, &token).await;
    assert_eq!(status, 200, "{body}");
    let session = format!("cce-{CLUSTER}-app-7f9c");
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
    assert_eq!(api.reviews_for(CALLER_AUD), 1);
    assert_eq!(api.reviews_for(AUD), 1);

    // Pod tokens the API server refuses or that name no association.
    let now = jiff::Timestamp::now().as_second();
    let unbound = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"aud": [AUD], "exp": now + 600, "sub": "system:serviceaccount:pi-demo:app"});
        format!("e30.{}.c2ln", b64.encode(claims.to_string()))
    };
    for (what, body, want, needle) in [
        ("no token", json!({}), 400, "non-empty \"token\""),
        (
            "garbage",
            json!({"token": "abc"}),
            401,
            "invalid service account token",
        ),
        (
            "expired",
            json!({"token": unsigned("pi-demo", "app", "p", AUD, now - 5)}),
            401,
            "unexpired",
        ),
        (
            "other audience",
            json!({"token": pod_token("pi-demo", "app", "p", "sts.amazonaws.com")}),
            401,
            AUD,
        ),
        ("unbound", json!({"token": unbound}), 401, "not bound to a pod"),
        (
            "no association",
            json!({"token": pod_token("pi-other", "app", "p", AUD)}),
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
    let (logs, _guard) = Logs::capture();
    let (api, iam, exchange, _dir) = setup(|_| {}).await;
    let pod = pod_token("pi-demo", "app", "app-1", AUD);
    let agent = agent_token(NODE);

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

    // A valid token for the exchange's audience, but of another service account.
    let intruder = pod_token("pi-demo", "app", "app-1", CALLER_AUD);
    let (status, body) = redeem(&exchange, &intruder, &pod).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(api.reviews_for(CALLER_AUD), 1);
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
    let elsewhere = pod_token_on("node-b", "pi-demo", "app", "app-2", AUD);
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

    // Tokens without the node claim (Kubernetes before 1.30) are not redeemed either.
    let nodeless = unsigned_on(
        None,
        "pi-demo",
        "app",
        "app-3",
        AUD,
        jiff::Timestamp::now().as_second() + 600,
    );
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
        api.reviews_for(AUD),
        3,
        "the pod tokens of the last three requests"
    );

    // A pod calling the exchange directly with its own token, 300 times: every call refused,
    // its token reviewed once, IAM never asked, and the log keeps to 20 refusals a minute.
    let reviews = api.reviews_for(CALLER_AUD);
    for _ in 0..300 {
        let (status, body) = redeem(&exchange, &pod, &pod).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(
        api.reviews_for(CALLER_AUD),
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

#[tokio::test]
async fn internal_errors_stay_in_the_log() {
    let (logs, _guard) = Logs::capture();
    let (api, iam, exchange, _dir) = setup(|_| {}).await;
    let agent = agent_token(NODE);
    let pod = pod_token("pi-demo", "app", "app-1", AUD);

    // IAM refuses: the caller learns which agency and where to look, not IAM's words.
    iam.set_mode(Mode::Fail(403, "operator lacks the agent operator role"));
    let (status, body) = redeem(&exchange, &agent, &pod).await;
    assert_eq!(status, 502, "{body}");
    let msg = body["error_msg"].as_str().unwrap();
    assert!(
        msg.contains("agency demo-agency") && msg.contains("log"),
        "{body}"
    );
    assert!(!msg.contains("operator lacks"), "{body}");
    let line = logs.lines_with(&["exchange refused", "reason=\"iam\""]);
    assert!(
        line[0].contains("operator lacks the agent operator role"),
        "{}",
        line[0]
    );

    // The API server unreachable: retry later, and the transport error only in the log.
    api.set_down(true);
    let fresh = pod_token("pi-demo", "app", "app-2", AUD);
    let (status, body) = redeem(&exchange, &agent_token("node-z"), &fresh).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error_msg"].as_str().unwrap();
    assert!(msg.contains("retry"), "{body}");
    assert!(
        !msg.contains("TokenReview failed") && !msg.contains("Error"),
        "{body}"
    );
    let line = logs.lines_with(&["exchange refused", "reason=\"review_unavailable\""]);
    assert!(line[0].contains("TokenReview failed"), "{}", line[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_accounts_budget_bounds_its_iam_calls() {
    let (api, iam, exchange, _dir) = setup(|c| {
        c.rate_per_service_account = 0.01;
        c.burst_per_service_account = 2.0;
    })
    .await;
    let agent = agent_token(NODE);
    let mut statuses = Vec::new();
    let mut retry = None;
    for i in 0..5 {
        let (status, body, r) = post(
            &exchange,
            Some(&agent),
            json!({"token": pod_token("pi-demo", "app", &format!("app-{i}"), AUD)}),
        )
        .await;
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
    assert_eq!(api.reviews_for(AUD), 5);
    assert_eq!(api.reviews_for(CALLER_AUD), 1);
    // Another service account has its own budget.
    let (status, body) = redeem(&exchange, &agent, &pod_token("pi-demo", "worker", "w-1", AUD)).await;
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
    let (api, iam, exchange, _dir) = setup(|c| c.cache_ttl = Duration::from_secs(3)).await;
    let agent = agent_token(NODE);
    let pod = pod_token("pi-demo", "app", "app-1", AUD);
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (status, body) = redeem(&exchange, &agent, &pod).await;
        assert_eq!(status, 200, "{body}");
        keys.push(body["credentials"]["accessKeyId"].clone());
    }
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(iam.calls().len(), 1);
    assert_eq!((api.reviews_for(CALLER_AUD), api.reviews_for(AUD)), (1, 1));
    assert_eq!(
        metric(&exchange, "podidentity_exchange_cache_hits_total{token=\"pod\"}").await,
        2
    );
    // Another node's agent presenting the same (stolen) token gets no cached answer, and
    // cannot evict it either.
    let (status, body) = redeem(&exchange, &agent_token("node-b"), &pod).await;
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
        api.reviews_for(CALLER_AUD),
        3,
        "node-b's agent, then node-a's again"
    );

    // Without a cache every request costs two reviews and an IAM call.
    let (api, iam, exchange, _dir) = setup(|c| c.cache_ttl = Duration::ZERO).await;
    for _ in 0..3 {
        assert_eq!(redeem(&exchange, &agent, &pod).await.0, 200);
    }
    assert_eq!(iam.calls().len(), 3);
    assert_eq!((api.reviews_for(CALLER_AUD), api.reviews_for(AUD)), (3, 3));
}

/// Two pods of one ReplicaSet with a long Deployment name, under a UUID cluster id: IAM sees
/// two distinct session names, each naming its pod within seed 003's 64 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_named_pods_of_one_replicaset_get_distinct_sessions() {
    let (_api, iam, exchange, _dir) = setup(|_| {}).await;
    let agent = agent_token(NODE);
    let pods = [
        "payments-reconciliation-worker-7f9c8d6b5c-x2x9z",
        "payments-reconciliation-worker-7f9c8d6b5c-q8w4m",
    ];
    for pod in pods {
        let (status, body) = redeem(&exchange, &agent, &pod_token("pi-demo", "app", pod, AUD)).await;
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
    for (session, pod) in sessions.iter().zip(pods) {
        assert!(session.len() <= 64, "{session}");
        assert!(session.starts_with("cce-46db1d50-"), "{session}");
        assert!(session.ends_with(&pod[pod.len() - 16..]), "{session} names {pod}");
    }
}
