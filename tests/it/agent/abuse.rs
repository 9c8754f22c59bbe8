//! Abuse of the agent, tried as an attacker would on loopback: its listeners are bounded, one
//! pod cannot starve a node, foreign tokens cost no upstream call, redirects are not followed.

use std::io::Read;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pod_identity_webhook::agent::metrics::Refusal;
use pod_identity_webhook::profile::Provider;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::agents::*;
use crate::common::attacks::*;
use crate::common::doubles;
use crate::common::tokens::forged;
use crate::common::*;

/// The agent's two ports: 400 connections each with half-sent headers are closed within the
/// header deadline while a pod still gets credentials; with requests in flight that never
/// finish, SIGTERM still ends the process within its shutdown deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_bounds_slow_clients_and_shuts_down_in_time() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let proc = agent_binary(
        port,
        admin,
        &[
            "--backend",
            "local",
            "--associations",
            "tests/fixtures/associations.yaml",
            "--header-read-timeout",
            "2",
            "--max-connections-per-client",
            "1024",
        ],
        &dir.path().join("log"),
    );
    let plain = reqwest::Client::new();
    until_ready(
        &plain,
        &format!("http://127.0.0.1:{admin}/readyz"),
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    let mut slow = Vec::new();
    for p in [port, admin] {
        for _ in 0..400 {
            let mut s = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
            s.write_all(b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ")
                .await
                .unwrap();
            slow.push(tokio::spawn(async move {
                closed_within(&mut s, Duration::from_secs(6)).await
            }));
        }
    }
    let token = pod_token("pi-demo", "app", "app-1", "service.cce.pods");
    let r = plain
        .get(format!("http://127.0.0.1:{port}/v1/credentials"))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a pod is served while 800 slow clients wait");
    for t in slow {
        let took = t.await.unwrap();
        assert!(took.is_some_and(|t| t < Duration::from_secs(5)), "{took:?}");
    }
    let peak = peak_rss_mib(proc.id());
    assert!(peak < 64.0, "peak RSS {peak:.1} MiB");
    drop(proc);

    // Requests in flight that never finish (their upstream never answers): SIGTERM still ends
    // the process within its shutdown deadline.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hanging.accept().await {
            held.push(s);
        }
    });
    std::fs::write(dir.path().join("auth"), "agent-token").unwrap();
    let (port, admin) = (free_port(), free_port());
    let proc = agent_binary(
        port,
        admin,
        &[
            "--backend",
            "cce",
            "--cce-endpoint",
            &upstream,
            "--project-id",
            PROJECT,
            "--cluster-id",
            CLUSTER,
            "--auth-token-file",
            dir.path().join("auth").to_str().unwrap(),
            "--upstream-timeout",
            "60",
            "--request-timeout",
            "60",
            "--shutdown-timeout",
            "2",
            // 50 requests in flight from one address.
            "--max-connections-per-client",
            "1024",
        ],
        &dir.path().join("log2"),
    );
    until_ready(
        &plain,
        &format!("http://127.0.0.1:{admin}/readyz"),
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    let stuck: Vec<_> = (0..50)
        .map(|_| {
            let c = plain.clone();
            let url = format!("http://127.0.0.1:{port}/v1/credentials");
            let token = token.clone();
            tokio::spawn(async move { c.get(url).header("Authorization", token).send().await })
        })
        .collect();
    // Wait until they are in flight: connections open and the upstream call made.
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let m = plain.get(&metrics).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Every request waiting on the one upstream call counts as a miss.
        if value("podidentity_http_connections ") > 50 && value("podidentity_agent_cache_misses_total ") == 50
        {
            break;
        }
        assert!(Instant::now() < end, "the requests never got in flight: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child = proc.into_inner();
    let start = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the agent ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = start.elapsed();
    assert!(exited.success(), "{exited:?}");
    assert!(
        took >= Duration::from_secs(2),
        "it waited for the requests in flight: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} (deadline 2 s, slack for a loaded machine)"
    );
    let mut log = String::new();
    std::fs::File::open(dir.path().join("log2"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("shutdown deadline reached"), "{log}");
    for s in stuck {
        assert!(s.await.unwrap().is_err(), "a stuck request was answered");
    }
    eprintln!(
        "agent: 800 slow clients closed, peak RSS {peak:.1} MiB, SIGTERM with 50 stuck requests: exit in {took:?}"
    );
}

/// One client floods the agent with distinct forged tokens; another pod still gets
/// credentials, upstream calls stay within the flooding client's share, and a cached
/// credential keeps being refreshed on its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_flooding_the_agent_starves_no_other() {
    let cce = doubles::cce().await;
    cce.set_lifetime(3);
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
    )
    .tweak(|c| {
        c.cache.min_remaining = Duration::from_millis(200);
        c.cache.client_rate = 5.0;
        c.cache.client_burst = 20.0;
        c.refresh_interval = Duration::from_millis(100);
    })
    .start()
    .await;
    let ask =
        |c: &reqwest::Client, token: &str| c.get(&agent.url).header("Authorization", token.to_owned()).send();
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (attacker, pod, refresher) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]), from([127, 0, 0, 3]));

    // A pod with cached credentials that will need refreshing during the flood.
    let cached = pod_token("pi-demo", "app", "cached-1", "service.cce.pods");
    let first: serde_json::Value = ask(&refresher, &cached).await.unwrap().json().await.unwrap();
    let first_key = first["credentials"]["accessKeyId"].clone();

    // The same forged token 20 times: one upstream call, then the remembered refusal.
    let before = cce.calls().len();
    for _ in 0..20 {
        assert_eq!(ask(&attacker, &forged(0)).await.unwrap().status(), 401);
    }
    // (Counted by token: the cached credential's refresh may land meanwhile.)
    let forged_zero = forged(0);
    let asked = cce.calls()[before..]
        .iter()
        .filter(|c| c.body["token"] == forged_zero.as_str())
        .count();
    assert_eq!(asked, 1, "a repeated refused token is asked once");

    let flood_start = Instant::now();
    let before = cce.calls().len();
    let sent = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..16)
        .map(|w| {
            let (c, sent, url) = (attacker.clone(), sent.clone(), agent.url.clone());
            tokio::spawn(async move {
                let mut n = w * 100_000 + 1;
                while flood_start.elapsed() < Duration::from_secs(4) {
                    let _ = c.get(&url).header("Authorization", forged(n)).send().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = pod_token("pi-demo", "worker", "worker-1", "service.cce.pods");
    let r = ask(&pod, &fresh).await.unwrap();
    assert_eq!(r.status(), 200, "another pod's fresh token during the flood");
    for f in flood {
        f.await.unwrap();
    }
    let elapsed = flood_start.elapsed().as_secs_f64();
    let calls = cce.calls()[before..].to_vec();
    let forged_calls = calls
        .iter()
        .filter(|c| {
            c.body["token"]
                .as_str()
                .is_some_and(|t| t.ends_with("Zm9yZ2VkLXtufQ"))
        })
        .count();
    let sent = sent.load(Ordering::Relaxed);
    // The attacker's share: its burst plus its rate over the flood.
    let share = 20.0 + 5.0 * elapsed;
    assert!(
        (forged_calls as f64) <= share + 1.0,
        "{forged_calls} forged-token calls for {sent} requests (share {share:.0})"
    );
    assert!(sent > 200, "the flood was too small to mean anything: {sent}");
    // The cached credential was refreshed during the flood, on the refresh budget.
    let refreshed = calls
        .iter()
        .filter(|c| c.body["token"] == cached.as_str())
        .count();
    assert!(refreshed >= 2, "refreshes during the flood: {refreshed}");
    let now: serde_json::Value = ask(&refresher, &cached).await.unwrap().json().await.unwrap();
    assert_ne!(now["credentials"]["accessKeyId"], first_key);
    let m = agent.metrics.clone();
    assert!(m.refused(Refusal::ClientRate) > 0);
    eprintln!(
        "agent flood: {sent} forged tokens in {elapsed:.1} s made {forged_calls} upstream calls; the other pod was served; {refreshed} refreshes of the cached credential"
    );
}

/// Tokens of another audience (the pod's API server token, say) and malformed or oversized
/// ones are refused by the agent itself: none reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_foreign_tokens_without_an_upstream_call() {
    let cce = doubles::cce().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
    )
    .start()
    .await;
    let c = reqwest::Client::new();
    let cases = [
        (
            pod_token(
                "pi-demo",
                "app",
                "a",
                "https://kubernetes.default.svc.cluster.local",
            ),
            401,
            Refusal::Audience,
        ),
        (
            pod_token("pi-demo", "app", "a", "sts.amazonaws.com"),
            401,
            Refusal::Audience,
        ),
        ("not-a-jwt".to_owned(), 400, Refusal::Malformed),
        (format!("a.{}.c", "x".repeat(20_000)), 400, Refusal::TooLong),
        (
            unsigned(
                "pi-demo",
                "app",
                "a",
                "service.cce.pods",
                jiff::Timestamp::now().as_second() - 5,
            ),
            400,
            Refusal::Expired,
        ),
    ];
    for (token, status, reason) in cases {
        let before = agent.metrics.refused(reason);
        let r = c
            .get(&agent.url)
            .header("Authorization", token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{reason:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "InvalidToken", "{reason:?}");
        assert_eq!(agent.metrics.refused(reason), before + 1, "{reason:?}");
    }
    assert_eq!(cce.calls().len(), 0, "no token reached the upstream");
}

/// An upstream answering 307 to another listener: the agent does not follow it (the listener
/// receives nothing, so neither the pod's token nor the agent's credentials) and says 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_redirects_are_not_followed() {
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = elsewhere.local_addr().unwrap();
    let reached = Arc::new(AtomicU64::new(0));
    let r2 = reached.clone();
    tokio::spawn(async move {
        while elsewhere.accept().await.is_ok() {
            r2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_url = format!("http://{}", redirector.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("http://{target}/steal"))],
        )
    });
    tokio::spawn(async move { axum::serve(redirector, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend(&redirect_url, dir.path(), Duration::from_secs(2)),
    )
    .start()
    .await;
    let token = pod_token("pi-demo", "app", "a", "service.cce.pods");
    let r = credentials_request(&agent.url, &token).await;
    assert_eq!(r.status(), 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "the redirect target was contacted"
    );
}
