//! Operations under load: while concurrent admissions run over HTTP/1.1 and HTTP/2 (keep-alive
//! connections and a fresh connection per request), the certificate is rotated several times,
//! the association file is rewritten (good and broken edits), and the real binary gets SIGTERM.
//! Every answer is checked, not just counted. All traffic stays on 127.0.0.1, and every loop is
//! bounded in count and time.
//!
//! A single rotation with a broken pair is in `reload.rs`; here the swaps come back to back.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use pod_identity_webhook::certs;
use pod_identity_webhook::testing::Source;
use pod_identity_webhook::{profile::Provider, webhook::mutation::ASSOCIATION_ANNOTATION};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::BIN;
/// The fixture association of pi-demo/app.
const APP_UID: &str = "81f143f5-f469-4fb6-b17c-8f52af73184c";
/// Upper bounds for every load task, whatever happens.
const MAX_REQUESTS_PER_TASK: u64 = 20_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(90);

// ---- load ------------------------------------------------------------------------------------

/// Checks one answer: the case index, the phase when the request started and when it ended,
/// and the AdmissionReview `response`.
type Check = dyn Fn(usize, u8, u8, &Value) -> Result<(), String> + Send + Sync;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the assertion message.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 5 {
            s.push(what);
        }
    }

    fn assert_clean(&self, what: &str, min_ok: u64) {
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        assert_eq!(
            failed,
            0,
            "{what}: {failed} requests failed ({ok} succeeded); first failures: {:#?}",
            self.samples.lock().unwrap()
        );
        assert!(ok >= min_ok, "{what}: too little load to mean anything: {ok}");
    }
}

/// Concurrent admissions: tasks alternate HTTP/1.1 and HTTP/2; the last two open a new
/// connection (a new TLS handshake) for every request.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        url: String,
        cas: Vec<Vec<u8>>,
        tasks: usize,
        cases: Vec<Vec<u8>>,
        phase: Arc<AtomicU8>,
        check: Arc<Check>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let cases = Arc::new(cases);
        let handles = (0..tasks)
            .map(|i| {
                let (url, cas, cases) = (url.clone(), cas.clone(), cases.clone());
                let (stop, tally, phase, check) = (stop.clone(), tally.clone(), phase.clone(), check.clone());
                tokio::spawn(async move {
                    let roots: Vec<&[u8]> = cas.iter().map(Vec::as_slice).collect();
                    let http = if i % 2 == 0 { Http::H1 } else { Http::H2 };
                    let fresh = i + 2 >= tasks;
                    let mut c = client(&roots, http);
                    let end = Instant::now() + MAX_LOAD_TIME;
                    for n in 0..MAX_REQUESTS_PER_TASK {
                        if stop.load(Ordering::Relaxed) || Instant::now() > end {
                            break;
                        }
                        if fresh {
                            c = client(&roots, http);
                        }
                        let case = (n as usize + i) % cases.len();
                        let before = phase.load(Ordering::SeqCst);
                        let result = post_review(&c, &url, cases[case].clone()).await;
                        let after = phase.load(Ordering::SeqCst);
                        match result.and_then(|r| check(case, before, after, &r)) {
                            Ok(()) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tally.fail(format!(
                                "task {i} ({http:?}) case {case} phases {before}->{after}: {e}"
                            )),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            tasks: handles,
        }
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("load task stops")
                .unwrap();
        }
        self.tally
    }
}

/// Posts a review and returns its `response`, or why the exchange failed.
async fn post_review(c: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<Value, String> {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON ({e})"))?;
    if v["kind"] != "AdmissionReview" || v["response"]["allowed"] != true {
        return Err(format!("unexpected answer {v}"));
    }
    Ok(v["response"].clone())
}

/// The association uid the response's patch writes, or None when there is no patch.
fn patched_uid(response: &Value) -> Result<Option<String>, String> {
    let Some(p) = response["patch"].as_str() else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(p)
        .map_err(|e| e.to_string())?;
    let patch: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let ops = patch.as_array().ok_or("patch is not a list")?;
    if ops.iter().any(|op| op["op"] != "add") {
        return Err(format!("non-add operation in {patch}"));
    }
    let key = format!(
        "/metadata/annotations/{}",
        ASSOCIATION_ANNOTATION.replace('/', "~1")
    );
    ops.iter()
        .find(|op| op["path"] == key.as_str())
        .and_then(|op| op["value"].as_str())
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| format!("no association annotation in {patch}"))
}

fn expect_app(response: &Value) -> Result<(), String> {
    match patched_uid(response)? {
        Some(uid) if uid == APP_UID => Ok(()),
        other => Err(format!(
            "pi-demo/app: expected the patch for {APP_UID}, got {other:?}"
        )),
    }
}

fn cas_of(ms: &[&certs::Material]) -> Vec<Vec<u8>> {
    ms.iter().map(|m| m.ca_pem.clone().into_bytes()).collect()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- (a) certificate rotation ------------------------------------------------------------------

async fn served_cert(cas: &[Vec<u8>], url: &str) -> Option<Vec<u8>> {
    let roots: Vec<&[u8]> = cas.iter().map(Vec::as_slice).collect();
    let r = client(&roots, Http::H1).get(url).send().await.ok()?;
    Some(
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()?
            .peer_certificate()?
            .to_vec(),
    )
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_several_times_in_a_row_under_load() {
    let materials: Vec<certs::Material> = (0..4).map(|_| certs::generate_local(1).unwrap()).collect();
    let all: Vec<&certs::Material> = materials.iter().collect();
    let cas = cas_of(&all);
    let secret = tempfile::tempdir().unwrap();
    project_secret(secret.path(), "v0", &materials[0]);
    let cert_dir = secret.path().to_path_buf();
    let server = TestServer::start_with(Provider::Cce, |c| c.cert_dir = cert_dir).await;
    let health = server.url("/healthz");
    assert_eq!(
        served_cert(&cas, &health).await,
        Some(der(&materials[0].cert_pem))
    );

    let check: Arc<Check> = Arc::new(|_, _, _, r: &Value| expect_app(r));
    let load = Load::start(
        server.url("/mutate?timeout=10s"),
        cas.clone(),
        6,
        vec![fixture("01-")],
        Arc::new(AtomicU8::new(0)),
        check,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, m) in materials.iter().enumerate().skip(1) {
        project_secret(secret.path(), &format!("v{i}"), m);
        let want = der(&m.cert_pem);
        wait_for(&format!("certificate {i}"), async || {
            served_cert(&cas, &health).await.as_ref() == Some(&want)
        })
        .await;
        // Some traffic on each certificate before the next swap.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let tally = load.finish().await;
    tally.assert_clean("rotations", 50);
    assert_eq!(server.state.metrics.inputs.reloads(Source::Tls, true), 3);
    assert_eq!(server.state.metrics.inputs.reloads(Source::Tls, false), 0);
}

// ---- (b) association edits ---------------------------------------------------------------------

/// The association added for pi-demo/default (fixture 05) by the good edit.
const DEFAULT_UID: &str = "0f3c5a2e-1b7d-4c9e-8a6f-2d4e6b8c0a1f";

/// Writes `text` to `path` atomically (a rename, as editors and ConfigMap updates do), so the
/// watcher sees exactly one change per edit.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_edits_under_load_switch_atomically_and_bad_edits_keep_the_last_good_set() {
    let server = TestServer::start(Provider::Cce).await;
    let metrics = server.state.metrics.clone();
    let path = server.associations_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let extra = format!(
        "- namespace: pi-demo\n  serviceAccount: default\n  agencyName: default-agency\n  uid: {DEFAULT_UID}\n"
    );
    let with_default = original.clone() + &extra;

    // Phases: 0 before the good edit is written; 1 written; 2 seen in effect (broken edits
    // happen here); 3 the association removed again; 4 its removal seen in effect.
    let phase = Arc::new(AtomicU8::new(0));
    let check: Arc<Check> = Arc::new(|case, start, end, r: &Value| {
        if case == 0 {
            return expect_app(r); // pi-demo/app: in every set, always injected
        }
        let uid = patched_uid(r)?;
        match (&uid, start, end) {
            (Some(u), _, _) if u != DEFAULT_UID => Err(format!("pi-demo/default got {u}")),
            (Some(_), _, 0) => Err("pi-demo/default injected before the edit was written".into()),
            (Some(_), 4, _) => Err("pi-demo/default injected after its removal took effect".into()),
            (None, 2, 2) => Err("pi-demo/default not injected while its association is in effect".into()),
            _ => Ok(()),
        }
    });
    let load = Load::start(
        server.url("/mutate?timeout=10s"),
        vec![server.ca_pem()],
        6,
        vec![fixture("01-"), fixture("05-")],
        phase.clone(),
        check,
    );
    let probe = server.h2();
    let default_patched = async || {
        let r = server.review(&probe, fixture("05-")).await;
        patched_uid(&r).unwrap().is_some()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!default_patched().await);

    // A good edit: the new association becomes effective.
    phase.store(1, Ordering::SeqCst);
    replace_file(&path, &with_default);
    wait_for("the new association", async || default_patched().await).await;
    phase.store(2, Ordering::SeqCst);
    assert_eq!(metrics.inputs.reloads(Source::Associations, true), 1);

    // Broken edits: each refused, the last good set (with pi-demo/default) keeps serving.
    let broken = [
        "associations:\n- namespace: pi-demo\n  serviceAccount: app\n  agencyName: [unclosed\n".to_owned(),
        with_default.clone() + "- namespace: pi-demo\n  serviceAccount: app\n  agencyName: twice\n",
        with_default.clone()
            + "- namespace: pi-demo\n  serviceAccount: x\n  agencyName: y\n  tags: [{key: _sys_k}]\n",
        with_default.clone() + "- namespace: pi-demo\n  serviceaccount: typo\n  agencyName: y\n",
        String::new(),
        // A truncated write: the new entry cut after its first line.
        original.clone() + "- namespace: pi-demo\n",
    ];
    for (i, text) in broken.iter().enumerate() {
        replace_file(&path, text);
        wait_for(&format!("broken edit {i} to be refused"), async || {
            metrics.inputs.reloads(Source::Associations, false) == i as u64 + 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(default_patched().await, "broken edit {i} changed the served set");
    }
    assert_eq!(metrics.inputs.reloads(Source::Associations, true), 1);
    assert!(metrics.render().contains("podidentity_associations 3\n"));

    // A good edit back to the original set: the association goes away.
    phase.store(3, Ordering::SeqCst);
    replace_file(&path, &original);
    wait_for("the removal", async || !default_patched().await).await;
    phase.store(4, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let tally = load.finish().await;
    tally.assert_clean("association edits", 50);
    assert_eq!(metrics.inputs.reloads(Source::Associations, true), 2);
    assert!(metrics.render().contains("podidentity_associations 2\n"));
}

// ---- (c) SIGTERM to the real binary ------------------------------------------------------------

/// A request held in flight on its own HTTP/1.1 connection: the head is sent with
/// `Expect: 100-continue` and the server's `100 Continue` proves it accepted the connection and
/// is reading this request. The body follows later.
struct Held {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    body: Vec<u8>,
}

async fn hold(addr: std::net::SocketAddr, ca: &[u8], body: Vec<u8>) -> Held {
    let mut config = tls_client_config(&[ca]);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("100 Continue in time")
            .unwrap();
        assert!(n > 0, "connection closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    Held { tls, body }
}

impl Held {
    /// Sends the body and reads the whole answer (the server closes the connection, as it is
    /// shutting down). Returns the status line and the parsed body.
    async fn finish(mut self) -> (String, Value) {
        self.tls.write_all(&self.body).await.unwrap();
        self.tls.flush().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.tls.read(&mut buf))
                .await
                .expect("answer in time")
            {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A close without close_notify: completeness is checked below.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        let status = head.lines().next().unwrap().to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse().unwrap())
            })
            .expect("content-length");
        assert_eq!(body.len(), length, "truncated answer: {text}");
        (status, serde_json::from_str(body).expect("the answer is JSON"))
    }
}

#[test]
fn sigterm_under_load_answers_every_accepted_request_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let assoc = dir.path().join("associations.yaml");
    std::fs::copy(fixtures_dir().join("associations.yaml"), &assoc).unwrap();
    let certs_dir = dir.path().join("certs");
    let log = dir.path().join("server.log");
    let child = Command::new(BIN)
        // Port 0: the server picks a free port and logs it, so no other test can take it first.
        .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-timeout", "30"])
        .arg("--cert-dir")
        .arg(&certs_dir)
        .arg("--associations")
        .arg(&assoc)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Never left behind, whatever fails below.
    let mut child = Reaped::new(child);
    let end = Instant::now() + Duration::from_secs(30);
    while !certs_dir.join("ca.crt").exists() {
        assert!(
            child.child_mut().try_wait().unwrap().is_none(),
            "server exited early"
        );
        assert!(Instant::now() < end, "certificates not generated");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = std::fs::read(certs_dir.join("ca.crt")).unwrap();
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .find(|l| l.contains("webhook listening"))
            .and_then(|l| l.split("addr=").nth(1))
        {
            break a.trim().parse::<std::net::SocketAddr>().unwrap();
        }
        assert!(
            child.child_mut().try_wait().unwrap().is_none(),
            "server exited early:\n{text}"
        );
        assert!(Instant::now() < end, "server never logged its address");
        std::thread::sleep(Duration::from_millis(20));
    };
    let port = addr.port();
    let base = format!("https://localhost:{port}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (held_answers, counts) = rt.block_on(async {
        until_ready(&client(&[&ca], Http::H2), &format!("{base}/readyz"), end).await;

        // The load: every answer that arrives must be complete and right. Requests that fail
        // after the signal (connection refused or closed before any answer) are counted apart.
        let signalled = Arc::new(AtomicBool::new(false));
        let (ok_before, ok_after, refused_after) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let body = fixture("01-");
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (signalled, ok_before, ok_after, refused_after, failures) = (
                signalled.clone(),
                ok_before.clone(),
                ok_after.clone(),
                refused_after.clone(),
                failures.clone(),
            );
            let (url, ca, body) = (format!("{base}/mutate?timeout=10s"), ca.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let http = if i % 2 == 0 { Http::H1 } else { Http::H2 };
                let mut c = client(&[&ca], http);
                let end = Instant::now() + MAX_LOAD_TIME;
                let mut refused_in_a_row = 0;
                for _ in 0..MAX_REQUESTS_PER_TASK {
                    if Instant::now() > end || refused_in_a_row >= 20 {
                        break;
                    }
                    if i >= 4 {
                        c = client(&[&ca], http);
                    }
                    let sent_after = signalled.load(Ordering::SeqCst);
                    let send = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let r = match send {
                        Ok(r) => r,
                        Err(e) => {
                            // No answer at all. Before the signal that is a failure; after it,
                            // a refused or closed connection is what a stopping server does.
                            if signalled.load(Ordering::SeqCst) && (e.is_connect() || e.is_request()) {
                                refused_after.fetch_add(1, Ordering::Relaxed);
                                refused_in_a_row += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            } else {
                                failures.lock().unwrap().push(format!("task {i}: {e:?}"));
                            }
                            continue;
                        }
                    };
                    refused_in_a_row = 0;
                    // An answer was started: it must be complete and correct.
                    let status = r.status();
                    let outcome = match r.bytes().await {
                        Ok(b) if status == 200 => serde_json::from_slice::<Value>(&b)
                            .map_err(|e| format!("not JSON: {e}"))
                            .and_then(|v| expect_app(&v["response"])),
                        Ok(b) => Err(format!("status {status}: {}", String::from_utf8_lossy(&b))),
                        Err(e) => Err(format!("truncated answer: {e:?}")),
                    };
                    match outcome {
                        Ok(()) if sent_after || signalled.load(Ordering::SeqCst) => {
                            ok_after.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {
                            ok_before.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("task {i} ({http:?}): {e}")),
                    }
                }
            }));
        }

        // Let the load run, then hold some requests provably in flight.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(hold(addr, &ca, fixture(if i % 2 == 0 { "01-" } else { "17-" })).await);
        }

        signalled.store(true, Ordering::SeqCst);
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());

        // The server must wait for the held requests; finish them a little later.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut answers = Vec::new();
        for h in held {
            answers.push(h.finish().await);
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("load task ends")
                .unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "failed requests: {failures:#?}");
        (
            answers,
            (
                ok_before.load(Ordering::Relaxed),
                ok_after.load(Ordering::Relaxed),
                refused_after.load(Ordering::Relaxed),
            ),
        )
    });

    let end = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.child_mut().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit status {status:?}; logs:\n{logs}");
    for needle in ["SIGTERM received", "all connections drained"] {
        assert!(logs.contains(needle), "{needle} missing from logs:\n{logs}");
    }

    for (i, (status, v)) in held_answers.iter().enumerate() {
        assert_eq!(status, "HTTP/1.1 200 OK", "held request {i}");
        expect_app(&v["response"]).unwrap_or_else(|e| panic!("held request {i}: {e}"));
    }
    let (ok_before, ok_after, refused_after) = counts;
    eprintln!(
        "sigterm under load: {ok_before} answered before the signal, {ok_after} answered after it \
         (in flight or on open connections), {refused_after} refused after it, {} held requests answered",
        held_answers.len()
    );
    assert!(ok_before > 20, "too little load before the signal: {ok_before}");
}
