//! The listeners' bounds with a real API server behind the exchange: stalled bodies, idle
//! and silent connections, one address's flood of connections (the rest of the abuse tests,
//! which need no API server, are in `abuse`).

use std::net::SocketAddr;
use std::time::Duration;

use pod_identity_webhook::profile::Provider;

use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::attacks::{flood, ready, serve};
use crate::common::doubles;
use crate::common::*;

/// Every listener: 1 100 silent connections from one address (TLS with h2 and no preface,
/// http/1.1, no ALPN; plain TCP for the agent) hold at most that address's share while another
/// address is served, and are closed at the header deadline, not the idle one; both refusals
/// are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_starve_no_other_client() {
    let Some(api) = ApiServer::shared() else { return };
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let other =
        |ca: Option<&[u8]>| client_from(&[ca.unwrap_or_default()], Http::H1, Some([127, 0, 0, 2].into()));

    // The webhook binary, idle deadline at its default (60 s), 64 connections per client.
    let port = free_port();
    let certs = dir.path().join("certs");
    let _proc = serve(
        port,
        &certs,
        &["--header-read-timeout", "2", "--max-connections-per-client", "64"],
        &dir.path().join("log"),
    );
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let ca = ready(&certs, &url("/readyz")).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let refused = flood(
        "webhook",
        addr,
        Some(&ca),
        &other(Some(&ca)),
        &url("/healthz"),
        64,
    )
    .await;
    let metrics = other(Some(&ca))
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(counter("podidentity_http_silent_connections_closed_total") >= 3 * 32);
    // The server counts at least what the client saw cut (a handshake the server finished is
    // never counted as cut: the client waits long for it).
    assert!(counter("podidentity_http_connections_refused_total{reason=\"per_client\"}") >= refused as u64);

    // The exchange over HTTPS, in process, with the same bounds.
    let iam = doubles::iam().await;
    let exchange_certs = dir.path().join("exchange");
    let exchange_ca = local_certs(&exchange_certs);
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .tweak(|c| {
            c.cert_dir = Some(exchange_certs.join("certs"));
            c.limits.header_read = Duration::from_secs(2);
            c.limits.handshake = Duration::from_secs(2);
            c.limits.max_connections_per_client = 64;
        })
        .start()
        .await;
    let port = exchange.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let healthz = format!("{}/healthz", exchange.url);
    let refused = flood(
        "exchange",
        addr,
        Some(&exchange_ca),
        &other(Some(&exchange_ca)),
        &healthz,
        64,
    )
    .await;
    assert!(exchange.metrics.serve.refused("client_connections") >= refused as u64);

    // The agent's credential port (plain HTTP: pods connect to a link-local address).
    let agent = AgentUnderTest::new(Provider::Cce, local_backend(Provider::Cce))
        .tweak(|c| {
            c.limits.header_read = Duration::from_secs(2);
            c.limits.max_connections_per_client = 32;
        })
        .start()
        .await;
    let addr: SocketAddr = agent
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let plain = reqwest::Client::builder()
        .local_address(Some([127, 0, 0, 2].into()))
        .build()
        .unwrap();
    let refused = flood("agent", addr, None, &plain, &agent.url, 32).await;
    assert!(agent.metrics.serve.refused("client_connections") >= refused as u64);
}
