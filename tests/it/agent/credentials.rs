//! The credential agent on loopback, against test doubles of IAM and CCE (reaching the
//! exchange, on the real API server, is in `exchange::real::cce`).

use std::time::Duration;

use crate::common::agents::*;
use crate::common::doubles::{self, Mode};
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
    let agent = AgentUnderTest::new(Provider::Cce, local_backend(Provider::Cce))
        .start()
        .await;
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

    let eks = AgentUnderTest::new(Provider::Eks, local_backend(Provider::Eks))
        .start()
        .await;
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

    let metrics = crate::common::metrics_of(&agent.admin).await;
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
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
    )
    .tweak(
        // A thousand connections from one address: above any pod's share.
        |c| c.limits.max_connections_per_client = 1024,
    )
    .start()
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
    // The agent's own token from its file, as the DaemonSet projects it.
    let own = std::fs::read_to_string(dir.path().join("agent-auth-token")).unwrap();
    assert_eq!(call.header("X-Auth-Token"), Some(own.trim()));
    assert_eq!(call.body["token"], token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_clear_statuses() {
    let cce = doubles::cce().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_millis(500)),
    )
    .tweak(|c| {
        c.cache.upstream_rate = 0.001;
        c.cache.upstream_burst = 4.0;
    })
    .start()
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
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&closed, dir.path(), Duration::from_secs(2)),
    )
    .start()
    .await;
    let (status, body) = call(&agent.url, Some(&t("f")), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
}

/// The agent on IPv6 loopback as well as IPv4 (as on a node: 169.254.170.23 and
/// [fd00:ec2::23]): a real socket on [::1] and a real HTTP client, with the Host header of
/// each address accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_on_ipv6_and_ipv4_at_once() {
    let agent = AgentUnderTest::new(Provider::Cce, local_backend(Provider::Cce))
        .tweak(|c| {
            c.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        })
        .start()
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

/// `--listen-if-present`: an address the host has is answered on; one it has not (a node
/// without IPv6, here a documentation address no interface carries) is skipped, and the agent
/// serves on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_the_host_lacks_are_skipped_when_optional() {
    let agent = AgentUnderTest::new(Provider::Cce, local_backend(Provider::Cce))
        .tweak(|c| {
            c.listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.listen_if_present = vec!["[::1]:0".parse().unwrap(), "192.0.2.77:0".parse().unwrap()];
        })
        .start()
        .await;
    assert_eq!(agent.urls.len(), 2, "{:?}", agent.urls);
    assert!(agent.urls[1].starts_with("http://[::1]:"), "{:?}", agent.urls);
    let token = pod_token("pi-demo", "app", "app-1", AUD);
    for url in &agent.urls {
        assert_eq!(call(url, Some(&token), None).await.0, 200, "{url}");
    }
}
