//! Abuse, tried as an attacker would on loopback: every listener of every program is bounded
//! in time and memory, every upstream call is bounded, and one pod cannot starve a node.
//! Listener bounds are checked against the real binaries (memory is a process's); budgets and
//! upstream behaviour in process, where the doubles count every call.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pod_identity_webhook::agent::metrics::Refusal;
use pod_identity_webhook::profile::Provider;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::agents::*;
use crate::common::doubles;
use crate::common::standin::{ReviewAnswer, StandIn};
use crate::common::*;

/// The agent binary answering on `port` and `admin`, plus `extra` flags; its log in `log`.
fn agent_binary(port: u16, admin: u16, extra: &[&str], log: &Path) -> Reaped {
    let (listen, admin) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let mut args = vec!["agent", "--listen", &listen, "--admin-listen", &admin];
    args.extend_from_slice(extra);
    spawn(&args, &[], log)
}

/// The webhook on `port` with the fixture associations and certificates in `certs`, plus
/// `extra` flags; its log in `log`.
pub(crate) fn serve(port: u16, certs: &Path, extra: &[&str], log: &Path) -> Reaped {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--cert-dir",
        certs.to_str().unwrap(),
        "--associations",
        "tests/fixtures/associations.yaml",
    ];
    args.extend_from_slice(extra);
    spawn(&args, &[], log)
}

/// Waits until the webhook started with [`serve`] has generated its certificates into `certs`
/// and answers `readyz`; returns its CA (PEM).
pub(crate) async fn ready(certs: &Path, readyz: &str) -> Vec<u8> {
    let wait = Instant::now() + Duration::from_secs(30);
    while !certs.join("ca.crt").exists() {
        assert!(Instant::now() < wait, "no certificate generated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    until_ready(&client(&[&ca], Http::H2), readyz, wait).await;
    ca
}

/// `VmHWM` (peak resident memory) of a process, in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Reads until the peer closes; the time it took, or `None` if it stayed open past `limit`.
pub(crate) async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(start + limit), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A TLS connection with `alpn`, handshake done, nothing sent.
pub(crate) async fn idle_tls(
    addr: SocketAddr,
    ca: &[u8],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = tls_client_config(&[ca]);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A request declaring `declared` body bytes that sends `sent` of them and then stalls; what
/// the server answered (a status, or 0 for a closed connection) and when.
pub(crate) async fn stalled_body(
    c: reqwest::Client,
    url: String,
    declared: usize,
    sent: usize,
) -> (u16, Duration) {
    let start = Instant::now();
    let chunks = (0..sent.div_ceil(65_536))
        .map(move |i| Ok::<_, std::io::Error>(vec![b' '; 65_536.min(sent - i * 65_536)]));
    let body = futures::stream::iter(chunks).chain(futures::stream::pending());
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .header("content-length", declared)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    (r.map_or(0, |r| r.status().as_u16()), start.elapsed())
}

/// Posts `body` to `url` until `stop`; counts answers that pass `good` and the others.
pub(crate) fn keep_asking(
    c: reqwest::Client,
    url: String,
    caller: Option<String>,
    body: Vec<u8>,
    stop: Arc<AtomicBool>,
    good: fn(u16, &[u8]) -> bool,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let mut req = c.post(&url).body(body.clone());
            if let Some(caller) = &caller {
                req = req.header("X-Auth-Token", caller);
            }
            let answered = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes().await.is_ok_and(|b| good(status, &b))
                }
                Err(_) => false,
            };
            if answered {
                ok += 1
            } else {
                failed += 1
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, failed)
    })
}

fn admitted(status: u16, body: &[u8]) -> bool {
    status == 200 && String::from_utf8_lossy(body).contains("\"patchType\":\"JSONPatch\"")
}

/// 24 stalled bodies (half over HTTP/1.1, half over HTTP/2) and 600 idle connections (TLS with
/// HTTP/1.1, TLS with HTTP/2 and no preface, plain TCP with no handshake) against the webhook:
/// the stalled requests are answered within the request deadline (408, or 503 beyond the body
/// budget), the idle connections closed within their deadlines, admissions keep being
/// answered, and the process stays under 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_bounds_stalled_bodies_and_idle_connections() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let certs = dir.path().join("certs");
    let proc = serve(
        port,
        &certs,
        &[
            "--header-read-timeout",
            "2",
            "--request-timeout",
            "3",
            "--idle-timeout",
            "3",
            // Every misbehaving client here shares one address; the per-client share has a
            // test of its own.
            "--max-connections-per-client",
            "1024",
        ],
        &dir.path().join("log"),
    );
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let ca = ready(&certs, &url("/readyz")).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The API server: another address than the clients that misbehave.
    let stop = Arc::new(AtomicBool::new(false));
    let legit = keep_asking(
        client_from(&[&ca], Http::H2, Some([127, 0, 0, 2].into())),
        url("/mutate"),
        None,
        fixture("01-"),
        stop.clone(),
        admitted,
    );

    let declared = 3 * 1024 * 1024 - 16;
    let stalled: Vec<_> = (0..24)
        .map(|i| {
            let http = if i % 2 == 0 { Http::H1 } else { Http::H2 };
            tokio::spawn(stalled_body(
                client(&[&ca], http),
                url("/mutate"),
                declared,
                declared - 16,
            ))
        })
        .collect();
    let mut idle = Vec::new();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for _ in 0..200 {
            let mut s = idle_tls(addr, &ca, alpn).await;
            idle.push(tokio::spawn(async move {
                closed_within(&mut s, Duration::from_secs(8)).await
            }));
        }
    }
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        idle.push(tokio::spawn(async move {
            closed_within(&mut s, Duration::from_secs(8)).await
        }));
    }

    let mut statuses = Vec::new();
    for t in stalled {
        let (status, took) = t.await.unwrap();
        assert!(took < Duration::from_secs(6), "a stalled body held for {took:?}");
        statuses.push(status);
    }
    let timed_out = statuses.iter().filter(|s| **s == 408).count();
    let over_budget = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(timed_out + over_budget, statuses.len(), "{statuses:?}");
    assert!(timed_out >= 1 && over_budget >= 1, "{statuses:?}");
    for t in idle {
        let took = t.await.unwrap();
        assert!(took.is_some(), "an idle connection stayed open past 8 s");
    }
    let peak = peak_rss_mib(proc.id());
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = legit.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} admissions failed during the abuse ({ok} answered)"
    );
    assert!(ok >= 20, "too few admissions to mean anything: {ok}");
    assert!(peak < 64.0, "peak RSS {peak:.1} MiB");
    eprintln!(
        "webhook: {timed_out} stalled bodies cut at the deadline, {over_budget} refused over the budget, \
         600 idle connections closed, {ok} admissions answered meanwhile, peak RSS {peak:.1} MiB"
    );
}

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

/// A token with the claims of `common::unsigned` but a forged signature.
fn forged(n: usize) -> String {
    let genuine = pod_token("pi-demo", "app", &format!("garbage-{n}"), "service.cce.pods");
    let (claims, _) = genuine.rsplit_once('.').unwrap();
    format!("{claims}.Zm9yZ2VkLXtufQ")
}

/// One client floods the agent with distinct forged tokens; another pod still gets
/// credentials, upstream calls stay within the flooding client's share, and a cached
/// credential keeps being refreshed on its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_flooding_the_agent_starves_no_other() {
    let cce = doubles::cce().await;
    cce.set_lifetime(3);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
        |c| {
            c.cache.min_remaining = Duration::from_millis(200);
            c.cache.client_rate = 5.0;
            c.cache.client_burst = 20.0;
            c.refresh_interval = Duration::from_millis(100);
        },
    )
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
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
        |_| {},
    )
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
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&redirect_url, dir.path(), Duration::from_secs(2)),
        |_| {},
    )
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

/// The exchange with an API server that hangs, answers 429, or is down: every request is
/// answered 503 with Retry-After within the review deadline (1 s), with at most two
/// TokenReviews each (one retry), never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_answers_in_time_whatever_the_api_server_does() {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_exchange(&api, &iam.url, dir.path()).await;
    let url = format!(
        "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity",
        exchange.url
    );
    let token = pod_token("pi-demo", "app", "app-1", "service.cce.pods");
    let c = reqwest::Client::new();
    // The agent's request for a pod's credentials.
    let ask = async || {
        c.post(&url)
            .header("X-Auth-Token", agent_token(NODE))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .unwrap()
    };
    for (answer, max_reviews) in [
        (ReviewAnswer::Hang, 1),
        (ReviewAnswer::Status(429), 2),
        (ReviewAnswer::Status(503), 2),
    ] {
        api.set_review_answer(answer);
        let before = api.reviews();
        let start = Instant::now();
        let r = ask().await;
        let took = start.elapsed();
        assert_eq!(r.status(), 503, "{answer:?}");
        assert_eq!(r.headers()["retry-after"], "1", "{answer:?}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("retry shortly") && !body.contains("TokenReview failed"),
            "{body}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{answer:?}: answered after {took:?}"
        );
        let reviews = api.reviews() - before;
        assert!(
            (1..=max_reviews).contains(&reviews),
            "{answer:?}: {reviews} TokenReviews"
        );
    }
    api.set_review_answer(ReviewAnswer::Normal);
    api.set_down(true);
    let start = Instant::now();
    let r = ask().await;
    assert_eq!(r.status(), 503);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    api.set_down(false);
    let r = ask().await;
    assert_eq!(r.status(), 200, "back once the API server is");
    assert_eq!(iam.calls().len(), 1);
}

/// A serving certificate outside its validity: at start it is served (there is no other) but
/// readiness says it has expired and the log says so loudly; swapped in later, it is refused,
/// the previous certificate keeps serving, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused_and_reported() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let now = time::OffsetDateTime::now_utc();
    let expired = pod_identity_webhook::certs::generate_valid(
        &["localhost".into()],
        &[],
        now - time::Duration::days(400),
        now - time::Duration::days(35),
    )
    .unwrap();
    pod_identity_webhook::certs::write(&certs_dir, &expired).unwrap();
    let port = free_port();
    let log = dir.path().join("log");
    let proc = serve(port, &certs_dir, &["--reload-interval", "0.1"], &log);
    // Only a client that ignores validity can ask; it is told the server is not ready.
    let lenient = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let readyz = format!("https://localhost:{port}/readyz");
    let end = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok(r) = lenient.get(&readyz).send().await {
            assert_eq!(r.status(), 503);
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < end, "the webhook did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("the serving certificate has expired"), "{body}");

    // A valid pair makes it ready; an expired one swapped in after it is refused.
    let good = pod_identity_webhook::certs::generate_local(1).unwrap();
    pod_identity_webhook::certs::write(&certs_dir, &good).unwrap();
    let strict = client(&[good.ca_pem.as_bytes()], Http::H1);
    until_ready(&strict, &readyz, Instant::now() + Duration::from_secs(10)).await;
    pod_identity_webhook::certs::write(&certs_dir, &expired).unwrap();
    let metrics_url = format!("https://localhost:{port}/metrics");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let m = strict
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("podidentity_reload_failures_total{source=\"tls\"} 1\n") {
            assert!(m.contains("podidentity_tls_not_after_seconds "), "{m}");
            break;
        }
        assert!(Instant::now() < end, "the expired pair was not refused: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        strict.get(&readyz).send().await.unwrap().status(),
        200,
        "still serving the good pair"
    );
    drop(proc);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("SERVING A CERTIFICATE OUTSIDE ITS VALIDITY"),
        "{log}"
    );
    assert!(log.contains("is not valid now"), "{log}");
    assert!(log.contains("new serving certificate refused"), "{log}");
}

/// Opens `n` connections to `addr` from 127.0.0.1 that send nothing (with `ca`, each completes
/// a TLS handshake offering `alpn`, none if empty); returns a task per connection the server
/// accepted, each ending with how long until the server closed it (`None`: open past `limit`).
/// Over TLS a refused connection is one whose handshake the server cut; plain TCP connections
/// are all returned (the server refuses them by closing at once).
pub(crate) async fn silent_connections(
    addr: SocketAddr,
    ca: Option<&[u8]>,
    alpn: &[u8],
    n: usize,
    limit: Duration,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut config = tls_client_config(&[ca.unwrap_or_default()]);
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut open = Vec::new();
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.unwrap();
        if ca.is_none() {
            let mut tcp = tcp;
            open.push(tokio::spawn(async move { closed_within(&mut tcp, limit).await }));
            continue;
        }
        // Generous: a slow machine must not turn an accepted handshake into a "refusal".
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect("localhost".try_into().unwrap(), tcp),
        );
        if let Ok(Ok(mut tls)) = handshake.await {
            open.push(tokio::spawn(async move { closed_within(&mut tls, limit).await }));
        }
    }
    open
}

/// One listener under a flood of silent connections from one address, once per ALPN: the
/// first `share` connections are accepted, the address never holds more than its share, a
/// client from another address is served meanwhile, and every silent connection is closed at
/// the 2 s header deadline (+ slack), not at the idle one. Returns how many connections the
/// server refused in all, as the client saw it.
///
/// Nothing here depends on how fast the flood is opened: on a slow machine the first share is
/// closed at its header deadline while the flood is still being opened, and the server then
/// accepts more, which is right.
pub(crate) async fn flood(
    what: &str,
    addr: SocketAddr,
    ca: Option<&[u8]>,
    other: &reqwest::Client,
    url: &str,
    share: usize,
) -> usize {
    const FLOOD: usize = 1100;
    let limit = Duration::from_secs(6);
    let mut refused = 0;
    for alpn in [&b"h2"[..], b"http/1.1", b""] {
        if ca.is_none() && !alpn.is_empty() {
            continue;
        }
        let first = silent_connections(addr, ca, alpn, share, limit).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let accepted = first.iter().filter(|t| !t.is_finished()).count();
        assert!(
            accepted >= share / 2,
            "{what} ({alpn:?}): only {accepted} of the first {share} connections accepted"
        );
        let mut silent = first;
        silent.extend(silent_connections(addr, ca, alpn, FLOOD - share, limit).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = silent.iter().filter(|t| !t.is_finished()).count();
        assert!(
            held <= share,
            "{what} ({alpn:?}): one address holds {held} connections, its share is {share}"
        );
        let r = other.get(url).send().await;
        assert!(
            r.is_ok(),
            "{what}: another client was not served during the flood: {r:?}"
        );
        let tls = ca.is_some();
        refused += FLOOD - silent.len();
        for t in silent {
            let took = t.await.unwrap();
            let took = took.unwrap_or_else(|| {
                panic!("{what} ({alpn:?}): a connection that sent nothing stayed open past 6 s")
            });
            // Plain TCP: the server refuses by closing at once, long before the 2 s deadline.
            if !tls && took < Duration::from_secs(1) {
                refused += 1;
            }
        }
        assert!(refused > 0, "{what} ({alpn:?}): the flood was never refused");
    }
    refused
}
