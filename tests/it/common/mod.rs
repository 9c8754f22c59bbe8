//! Test harness: the real server on 127.0.0.1:0 with generated certificates, and real HTTPS
//! clients (reqwest over rustls) speaking HTTP/1.1 or HTTP/2.

pub mod agents;
pub mod apiserver;
pub mod attacks;
pub mod aws;
pub mod deploy;
pub mod doubles;
pub mod pod_security;
pub mod python;
pub mod standin;
pub mod tokens;

pub use tokens::{unsigned, unsigned_on};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{AssociationSource, install_crypto_provider};
use pod_identity_webhook::webhook::mutation::{DEFAULT_TOKEN_EXPIRATION, Injection, Settings};
use pod_identity_webhook::webhook::{AppState, Webhook, WebhookConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Installs the process's crypto provider once, as `main` does.
pub fn crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_crypto_provider);
}

/// An API server the programs under test talk to: the real one ([`apiserver::ApiServer`]), or
/// the stand-in where a test injects a fault.
pub trait KubeApi {
    /// A client configuration with the rights the programs need.
    fn kube_config(&self) -> kube::Config;
}

impl KubeApi for standin::StandIn {
    fn kube_config(&self) -> kube::Config {
        self.config()
    }
}

impl KubeApi for apiserver::ApiServer {
    fn kube_config(&self) -> kube::Config {
        self.config()
    }
}

/// The node the tests' pods and agent run on, unless a test says otherwise.
pub const NODE: &str = "node-a";

/// Every captured AdmissionReview, by file name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures_dir().join("admission"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 18, "fixtures missing");
    out
}

pub fn fixture(prefix: &str) -> Vec<u8> {
    fixtures()
        .into_iter()
        .find(|(n, _)| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no fixture {prefix}"))
        .1
}

pub fn injection(p: Provider) -> Injection {
    Injection::new(
        p.profile(),
        Settings::new(p.profile(), None, DEFAULT_TOKEN_EXPIRATION),
    )
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(provider: Provider) -> Self {
        Self::start_with(provider, |_| {}).await
    }

    /// Starts a server with the fixture associations copied into a temp dir (so tests can
    /// edit them) and certificates generated into `<dir>/certs`.
    pub async fn start_with(provider: Provider, tweak: impl FnOnce(&mut WebhookConfig)) -> Self {
        Self::start_in(None, provider, tweak).await
    }

    /// The same, with `cluster` as the API server (for `AssociationSource::Kubernetes`).
    pub async fn start_in(
        cluster: Option<kube::Client>,
        provider: Provider,
        tweak: impl FnOnce(&mut WebhookConfig),
    ) -> Self {
        crypto();
        let dir = tempfile::tempdir().unwrap();
        let assoc = dir.path().join("associations.yaml");
        std::fs::copy(fixtures_dir().join("associations.yaml"), &assoc).unwrap();
        let mut config = WebhookConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("certs"),
            injection(provider),
        );
        config.source = AssociationSource::File(assoc);
        config.reload_interval = Duration::from_millis(50);
        config.limits.header_read = Duration::from_secs(2);
        config.limits.shutdown = Duration::from_secs(10);
        tweak(&mut config);
        let server = Webhook::bind(config, cluster).await.expect("server starts");
        let addr = server.local_addr();
        let state = server.state();
        let (tx, shutdown) = stop_signal();
        let done = tokio::spawn(server.run(shutdown));
        TestServer {
            addr,
            dir,
            state,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("certs/ca.crt")).unwrap()
    }

    pub fn associations_path(&self) -> PathBuf {
        self.dir.path().join("associations.yaml")
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(15), done)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    pub fn h1(&self) -> reqwest::Client {
        client(&[&self.ca_pem()], Http::H1)
    }

    pub fn h2(&self) -> reqwest::Client {
        client(&[&self.ca_pem()], Http::H2)
    }

    /// A raw TLS connection speaking HTTP/1.1, for requests a well-behaved client won't send.
    pub async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&self.ca_pem()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Posts a body to `/mutate`, returning the status, the version and the body.
    pub async fn post(&self, c: &reqwest::Client, body: Vec<u8>) -> (u16, reqwest::Version, Vec<u8>) {
        let r = c
            .post(self.url("/mutate?timeout=10s"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request succeeds");
        let status = r.status().as_u16();
        let version = r.version();
        (status, version, r.bytes().await.unwrap().to_vec())
    }

    /// Posts an AdmissionReview and returns its `response`.
    pub async fn review(&self, c: &reqwest::Client, body: Vec<u8>) -> Value {
        let (status, _, bytes) = self.post(c, body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        v["response"].clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Http {
    H1,
    H2,
}

/// The certificates of the PEM texts `cas`, as trust roots.
pub fn root_store(cas: &[&[u8]]) -> rustls::RootCertStore {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    roots
}

/// A rustls client configuration trusting `cas` (no ALPN set).
pub fn tls_client_config(cas: &[&[u8]]) -> rustls::ClientConfig {
    crypto();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(cas))
        .with_no_client_auth()
}

/// Polls `url` with `client` until it answers 200; fails the test at `end`.
pub async fn until_ready(client: &reqwest::Client, url: &str, end: std::time::Instant) {
    while !client.get(url).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(std::time::Instant::now() < end, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real HTTPS client trusting `cas`, pinned to one HTTP version through ALPN.
pub fn client(cas: &[&[u8]], http: Http) -> reqwest::Client {
    client_from(cas, http, None)
}

/// The same, connecting from `source` (another loopback address is another client).
pub fn client_from(cas: &[&[u8]], http: Http, source: Option<std::net::IpAddr>) -> reqwest::Client {
    let mut tls = tls_client_config(cas);
    tls.alpn_protocols = vec![if http == Http::H2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .tls_info(true)
        .local_address(source)
        .timeout(Duration::from_secs(20));
    let b = if http == Http::H2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

/// Decodes the response's patch and applies it to `object`.
pub fn apply(response: &Value, object: &Value) -> (Value, json_patch::Patch) {
    let mut out = object.clone();
    let Some(p) = response["patch"].as_str() else {
        return (out, json_patch::Patch(vec![]));
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    json_patch::patch(&mut out, &patch.0).expect("patch applies to the object");
    (out, patch)
}

/// Wraps a pod in a CREATE review as the API server would send it.
pub fn review_of(pod: &Value, namespace: &str, uid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    }))
    .unwrap()
}

/// Lays out a directory the way the kubelet projects a Secret: `..<version>/` holds the files,
/// `..data` points at it, each file is a symlink through `..data`, and an update is a new
/// symlink renamed over `..data`.
pub fn project_secret(dir: &Path, version: &str, m: &pod_identity_webhook::certs::Material) {
    use pod_identity_webhook::certs;
    certs::write(&dir.join(format!("..{version}")), m).unwrap();
    for f in [certs::CA_FILE, certs::CERT_FILE, certs::KEY_FILE] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// A shutdown signal for a program's `run`: it completes when the sender sends or is dropped.
pub fn stop_signal() -> (
    oneshot::Sender<()>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// Polls `f` every 20 ms until it holds; fails the test with `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let end = std::time::Instant::now() + within;
    while !f().await {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A generated CA and localhost serving pair written to `dir/certs`; returns the CA (PEM).
pub fn local_certs(dir: &Path) -> Vec<u8> {
    let certs = dir.join("certs");
    pod_identity_webhook::certs::write(&certs, &pod_identity_webhook::certs::generate_local(1).unwrap())
        .unwrap();
    std::fs::read(certs.join("ca.crt")).unwrap()
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pod-identity-webhook");

/// A loopback port free now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports: all held while they are picked, so none repeats.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// The binary with `args` and `env`, its log (stderr) in `log`.
pub fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> Reaped {
    let child = std::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Reaped::new(child)
}

/// A child process of a test, killed and reaped if the test ends (or panics) while it runs.
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    pub fn new(child: std::process::Child) -> Self {
        Reaped(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.child().id()
    }

    pub fn child(&self) -> &std::process::Child {
        self.0.as_ref().expect("child taken")
    }

    pub fn child_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child taken")
    }

    /// The process, no longer killed on drop: for a test that stops it itself.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("child taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the code under test logs on this thread, as text: for tests on a current-thread
/// runtime, where every task the test starts runs on its thread.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// Captures this thread's log events (debug and up) until the guard is dropped.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        // tracing-core asks only the registering thread's subscriber whether a callsite is
        // enabled while at most one dispatcher is registered: with this capture the only one,
        // another test's thread (no subscriber) registering a callsite first would disable
        // it here too. A second dispatcher, kept for good, makes it ask every subscriber.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// The `/metrics` page of the server at `base`.
pub async fn metrics_of(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// How a token is named in logs: the first 8 bytes of its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
