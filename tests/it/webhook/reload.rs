//! Certificate rotation and association edits while the server runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use pod_identity_webhook::certs;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::{testing::Source, webhook::metrics::Outcome};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

async fn served_cert(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = c.get(url).send().await.unwrap();
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .unwrap()
        .peer_certificate()
        .unwrap()
        .to_vec()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_through_a_data_symlink_swap_under_load() {
    let a = certs::generate_local(1).unwrap();
    let b = certs::generate_local(1).unwrap();
    let bad = certs::generate_local(1).unwrap();
    let pre = tempfile::tempdir().unwrap();
    project_secret(pre.path(), "v1", &a);
    let cert_dir = pre.path().to_path_buf();
    let server = TestServer::start_with(Provider::Cce, |c| c.cert_dir = cert_dir).await;
    let cas: [&[u8]; 2] = [a.ca_pem.as_bytes(), b.ca_pem.as_bytes()];
    let probe = client(&cas, Http::H1);
    let url = server.url("/healthz");
    assert_eq!(served_cert(&probe, &url).await, der(&a.cert_pem));

    // Load: keep-alive clients over both protocols, and fresh connections, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let body = fixture("01-");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (stop, ok, failed, body) = (stop.clone(), ok.clone(), failed.clone(), body.clone());
        let url = server.url("/mutate");
        let cas: Vec<Vec<u8>> = cas.iter().map(|c| c.to_vec()).collect();
        tasks.push(tokio::spawn(async move {
            let roots: Vec<&[u8]> = cas.iter().map(Vec::as_slice).collect();
            let http = if i % 2 == 0 { Http::H1 } else { Http::H2 };
            let mut c = client(&roots, http);
            while !stop.load(Ordering::Relaxed) {
                if i >= 4 {
                    c = client(&roots, http); // a new TLS handshake every request
                }
                let good = match c.post(&url).body(body.clone()).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok_and(|b| b.len() > 100),
                    Err(_) => false,
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    project_secret(pre.path(), "v2", &b);
    wait_for("the new certificate", async || {
        served_cert(&client(&cas, Http::H1), &url).await == der(&b.cert_pem)
    })
    .await;
    let metrics = server.state.metrics.clone();
    assert_eq!(metrics.inputs.reloads(Source::Tls, true), 1);

    // A broken pair (certificate of one, key of another) is refused; B keeps serving.
    let v3 = pre.path().join("..v3");
    certs::write(&v3, &bad).unwrap();
    std::fs::write(v3.join(certs::KEY_FILE), &a.key_pem).unwrap();
    let tmp = pre.path().join("..data_tmp");
    std::os::unix::fs::symlink("..v3", &tmp).unwrap();
    std::fs::rename(&tmp, pre.path().join("..data")).unwrap();
    wait_for("the refused reload", async || {
        metrics.inputs.reloads(Source::Tls, false) == 1
    })
    .await;
    assert_eq!(served_cert(&client(&cas, Http::H2), &url).await, der(&b.cert_pem));

    // A pair outside its validity window (expired an hour ago) is refused the same way, and
    // the notAfter gauge keeps naming the certificate still served.
    let now = time::OffsetDateTime::now_utc();
    let expired = certs::generate_valid(
        &["localhost".into()],
        &[],
        now - time::Duration::days(30),
        now - time::Duration::hours(1),
    )
    .unwrap();
    let b_not_after = metrics.inputs.tls_not_after().unwrap();
    project_secret(pre.path(), "v4", &expired);
    wait_for("the refused expired pair", async || {
        metrics.inputs.reloads(Source::Tls, false) == 2
    })
    .await;
    assert_eq!(served_cert(&client(&cas, Http::H2), &url).await, der(&b.cert_pem));
    assert_eq!(metrics.inputs.tls_not_after(), Some(b_not_after));
    assert!(b_not_after > now.unix_timestamp());
    assert!(
        metrics
            .render()
            .contains(&format!("podidentity_tls_not_after_seconds {b_not_after}\n"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests failed during rotation ({ok} succeeded)"
    );
    assert!(ok > 50, "too little load to mean anything: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_association_edit_keeps_the_last_good_set() {
    let server = TestServer::start(Provider::Cce).await;
    let c = server.h2();
    let m = server.state.metrics.clone();
    let path = server.associations_path();
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(server.review(&c, fixture("05-")).await.get("patch").is_none());

    let broken_edits = [
        "associations:\n- namespace: pi-demo\n  serviceAccount: app\n  agencyName: [unclosed\n".to_owned(),
        good.clone() + "- namespace: pi-demo\n  serviceAccount: app\n  agencyName: second\n",
        good.clone()
            + "- namespace: pi-demo\n  serviceAccount: default\n  agencyName: x\n  tags: [{key: _sys_bad}]\n",
        String::new(),
        // Truncated or half-written files that still parse: a null where the list belongs.
        "associations:\n".to_owned(),
        "associations: null\n".to_owned(),
        "~\n".to_owned(),
    ];
    for (i, edit) in broken_edits.iter().enumerate() {
        std::fs::write(&path, edit).unwrap();
        wait_for("the refused reload", async || {
            m.inputs.reloads(Source::Associations, false) == i as u64 + 1
        })
        .await;
        // Still the fixture set: app injected, default not.
        assert!(
            server.review(&c, fixture("01-")).await.get("patch").is_some(),
            "edit {i}"
        );
        assert!(
            server.review(&c, fixture("05-")).await.get("patch").is_none(),
            "edit {i}"
        );
    }
    assert_eq!(m.inputs.reloads(Source::Associations, true), 0);

    // A FIFO in the file's place is refused without blocking the reloader (it would wait for
    // a writer for ever), and later edits still load.
    let fifo = path.with_extension("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    std::fs::rename(&fifo, &path).unwrap();
    let refused = broken_edits.len() as u64 + 1;
    wait_for("the refused FIFO", async || {
        m.inputs.reloads(Source::Associations, false) == refused
    })
    .await;
    assert!(server.review(&c, fixture("01-")).await.get("patch").is_some());
    std::fs::remove_file(&path).unwrap();

    // A good edit (through rename, as editors and ConfigMap updates do) takes effect.
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        good + "- namespace: pi-demo\n  serviceAccount: default\n  agencyName: default-agency\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_for("the reload", async || {
        m.inputs.reloads(Source::Associations, true) == 1
    })
    .await;
    let r = server.review(&c, fixture("05-")).await;
    assert!(r.get("patch").is_some(), "{r}");
    assert!(m.render().contains("podidentity_associations 3\n"));
    assert!(m.admissions(Outcome::Mutated) >= 5);
}
