//! Abuse of the webhook, tried as an attacker would on loopback against the real binary: its
//! listener is bounded in time and memory, and a certificate outside its validity is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::common::attacks::*;
use crate::common::*;

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
