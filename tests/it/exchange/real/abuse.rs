//! The listeners' bounds with a real API server behind the exchange: stalled bodies, idle
//! and silent connections, one address's flood of connections (the rest of the abuse tests,
//! which need no API server, are in `abuse`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::apiserver::{ApiServer, association_yaml};
use crate::common::attacks::{closed_within, idle_tls, keep_asking, peak_rss_mib, stalled_body};
use crate::common::doubles;
use crate::common::*;

/// The exchange over TLS: stalled bodies are cut and idle connections closed while it keeps
/// issuing credentials, under 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_bounds_stalled_bodies_and_idle_connections() {
    let Some(api) = ApiServer::shared() else { return };
    crypto();
    api.install_crd();
    let ns = api.namespace("abuse", &[]).await;
    api.apply(&association_yaml(&ns, "app", "demo-agency"));
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kubeconfig = api.kubeconfig(d, "admin-token");
    std::fs::write(d.join("operator-token"), "operator-iam-token").unwrap();
    let certs = d.join("certs");
    pod_identity_webhook::certs::write(&certs, &pod_identity_webhook::certs::generate_local(1).unwrap())
        .unwrap();
    let port = free_port();
    let _proc = spawn(
        &[
            "exchange",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cert-dir",
            certs.to_str().unwrap(),
            "--project-id",
            PROJECT,
            "--cluster-id",
            CLUSTER,
            "--iam-endpoint",
            &iam.url,
            "--domain-id",
            "domain-1",
            // Its misbehaving clients share one address.
            "--max-connections-per-client",
            "1024",
            "--source",
            "kubernetes",
            "--auth-token-file",
            d.join("operator-token").to_str().unwrap(),
            "--header-read-timeout",
            "2",
            "--request-timeout",
            "3",
            "--idle-timeout",
            "3",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        &d.join("log"),
    );
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let base = format!("https://localhost:{port}");
    until_ready(
        &client(&[&ca], Http::H1),
        &format!("{base}/readyz"),
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    let assume =
        format!("{base}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity");
    let stop = Arc::new(AtomicBool::new(false));
    let token = api.pod_token(&ns, "app", "app-1", NODE, "service.cce.pods").await;
    let legit = keep_asking(
        client_from(&[&ca], Http::H2, Some([127, 0, 0, 2].into())),
        assume.clone(),
        Some(api.agent_token(NODE).await),
        serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap(),
        stop.clone(),
        |status, body| status == 200 && String::from_utf8_lossy(body).contains("accessKeyId"),
    );
    let declared = 64 * 1024 - 16;
    let stalled: Vec<_> = (0..60)
        .map(|i| {
            let http = if i % 2 == 0 { Http::H1 } else { Http::H2 };
            tokio::spawn(stalled_body(
                client(&[&ca], http),
                assume.clone(),
                declared,
                declared - 16,
            ))
        })
        .collect();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut idle = Vec::new();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for _ in 0..200 {
            let mut s = idle_tls(addr, &ca, alpn).await;
            idle.push(tokio::spawn(async move {
                closed_within(&mut s, Duration::from_secs(8)).await
            }));
        }
    }
    for t in stalled {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 408);
        assert!(took < Duration::from_secs(6), "{took:?}");
    }
    for t in idle {
        assert!(
            t.await.unwrap().is_some(),
            "an idle connection stayed open past 8 s"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = legit.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the abuse ({ok} answered)"
    );
    assert!(ok >= 20, "{ok}");
    let peak = peak_rss_mib(_proc.id());
    assert!(peak < 64.0, "peak RSS {peak:.1} MiB");
    eprintln!(
        "exchange: 60 stalled bodies cut, 400 idle connections closed, {ok} credentials issued meanwhile, peak RSS {peak:.1} MiB"
    );
}
