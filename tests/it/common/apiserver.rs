//! A real kube-apiserver (and its etcd) for the tests that need the Kubernetes API, the way
//! controller-runtime's envtest runs one: the binaries come from `KUBE_ASSETS` (a directory
//! holding `kube-apiserver` and `etcd`). One etcd and one API server are started on first use
//! and shared by the whole test binary; each test works in namespaces of its own
//! ([`ApiServer::namespace`]). A test that must own the cluster-scoped state (or restart the
//! server) starts its own API server on the same etcd under another key prefix
//! ([`ApiServer::start_own`]).
//!
//! Every process runs under a watchdog that ends it when the test binary exits, also when a
//! test panics or the binary is killed, and removes the temporary directory.
//!
//! Without `KUBE_ASSETS`, [`ApiServer::shared`] returns `None` and says once, on one line,
//! which tests were not run and how to run them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::free_ports;

/// The module path that holds every test needing the real API server.
const REAL_TESTS: &str = "real::";

/// Static users of the API server (`--token-auth-file`): name, token, groups.
pub const ADMIN: &str = "admin";
pub const USERS: [(&str, &str, &str); 4] = [
    (ADMIN, "admin-token", "system:masters"),
    ("alice", "alice-token", ""),
    ("bob", "bob-token", ""),
    ("carol", "carol-token", "team-c"),
];

/// One API server. The shared one lives as long as the test binary; an own one until dropped.
pub struct ApiServer {
    pub url: String,
    pub port: u16,
    /// The CA (PEM) that signed the serving certificate.
    pub ca: Vec<u8>,
    pub ca_file: PathBuf,
    /// Where its files are: kubeconfigs, certificates, keys, logs.
    pub dir: PathBuf,
    log: PathBuf,
    watchdog: Option<std::process::Child>,
}

/// The etcd every API server of this binary stores in, and the files they share.
struct Base {
    etcd: String,
    dir: PathBuf,
    assets: PathBuf,
}

static BASE: OnceLock<Result<Base, String>> = OnceLock::new();
static SHARED: OnceLock<Result<ApiServer, String>> = OnceLock::new();

impl ApiServer {
    /// The shared API server, started on first use; `None` (and one line on stderr naming the
    /// tests not run) without `KUBE_ASSETS`. A set `KUBE_ASSETS` that does not start is a
    /// failure, not a skip.
    pub fn shared() -> Option<&'static ApiServer> {
        let base = base()?;
        let api = SHARED.get_or_init(|| ApiServer::start(base, "shared", &[]));
        Some(api.as_ref().unwrap_or_else(|e| panic!("{e}")))
    }

    /// An API server of the caller's own on the shared etcd, with a fresh key prefix (an empty
    /// cluster) and `extra` flags; `None` as for [`shared`](Self::shared).
    pub fn start_own(name: &str, extra: &[String]) -> Option<ApiServer> {
        let base = base()?;
        Some(ApiServer::start(base, name, extra).unwrap_or_else(|e| panic!("{e}")))
    }

    fn start(base: &Base, name: &str, extra: &[String]) -> Result<ApiServer, String> {
        let dir = base.dir.join(format!("{name}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let [port] = free_ports::<1>();
        ApiServer::start_at(base, &dir, port, extra)
    }

    /// Starts one in `dir` (its etcd prefix too) on `port`.
    fn start_at(base: &Base, dir: &Path, port: u16, extra: &[String]) -> Result<ApiServer, String> {
        let mut args = vec![
            format!("--etcd-servers={}", base.etcd),
            format!("--etcd-prefix=/{}", dir.file_name().unwrap().to_string_lossy()),
            format!("--secure-port={port}"),
        ];
        args.extend(common_flags(base));
        args.extend(extra.iter().cloned());
        let log = dir.join("kube-apiserver.log");
        let watchdog = supervise(&base.assets.join("kube-apiserver"), &args, &log, None)?;
        let api = ApiServer {
            url: format!("https://127.0.0.1:{port}"),
            port,
            ca: std::fs::read(base.dir.join("ca.crt")).map_err(|e| e.to_string())?,
            ca_file: base.dir.join("ca.crt"),
            dir: dir.to_path_buf(),
            log,
            watchdog: Some(watchdog),
        };
        api.wait_ready(Duration::from_secs(90))?;
        Ok(api)
    }

    /// Polls `/readyz` (as the admin) until it answers `ok`.
    fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let end = Instant::now() + within;
        let (url, ca) = (format!("{}/readyz", self.url), self.ca.clone());
        // On a thread of its own: the caller may be inside a runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = super::client(&[&ca], super::Http::H1);
                loop {
                    let r = c.get(&url).bearer_auth("admin-token").send().await;
                    if let Ok(r) = r
                        && r.status() == 200
                    {
                        return true;
                    }
                    if Instant::now() > end {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .join()
        .unwrap()
        .then_some(())
        .ok_or_else(|| format!("kube-apiserver not ready within {within:?}:\n{}", self.log_tail()))
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops this (own) API server and starts it again with `extra` flags, on the same port,
    /// etcd prefix and files.
    pub fn restart(&mut self, extra: &[String]) {
        self.stop();
        let base = base().expect("an own API server implies KUBE_ASSETS");
        let again = ApiServer::start_at(base, &self.dir, self.port, extra).unwrap_or_else(|e| panic!("{e}"));
        *self = again;
    }

    fn stop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            // The watchdog ends the server on TERM and waits for it.
            let _ = Command::new("kill").arg(w.id().to_string()).status();
            let _ = w.wait();
        }
    }

    /// A client configuration acting with `token`.
    pub fn config_as(&self, token: &str) -> kube::Config {
        let mut c = kube::Config::new(self.url.parse().unwrap());
        use rustls_pki_types::pem::PemObject;
        let roots = rustls_pki_types::CertificateDer::pem_slice_iter(&self.ca)
            .map(|c| c.unwrap().to_vec())
            .collect();
        c.root_cert = Some(roots);
        c.auth_info.token = Some(token.to_owned().into());
        c
    }

    /// The admin's client configuration (`system:masters`).
    pub fn config(&self) -> kube::Config {
        self.config_as("admin-token")
    }

    /// The admin's client.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).unwrap()
    }

    /// A client acting with `token`.
    pub fn client_as(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.config_as(token)).unwrap()
    }

    /// A kubeconfig file in `dir` naming this API server with `token` as the user's bearer
    /// token (for the binaries, through `KUBECONFIG`, and for kubectl).
    pub fn kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{}", &super::token_hash(token)));
        // Written aside and renamed into place: tests running at once with the same token
        // share this file, and a kubectl reading it mid-write would fall back to localhost.
        let aside = dir.join(format!(
            "kubeconfig-{}.{:?}",
            &super::token_hash(token),
            std::thread::current().id()
        ));
        std::fs::write(
            &aside,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {{server: '{}', certificate-authority: '{}'}}\nusers:\n- name: u\n  user: {{token: '{token}'}}\ncontexts:\n- name: c\n  context: {{cluster: s, user: u}}\ncurrent-context: c\n",
                self.url,
                self.ca_file.display()
            ),
        )
        .unwrap();
        std::fs::rename(&aside, &path).unwrap();
        path
    }

    /// `pod-identity-webhook ARGS` with a kubeconfig acting with `token` (and no associations
    /// file from the environment): the exit status and stdout followed by stderr.
    pub fn run_as(&self, token: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(super::BIN)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(&self.dir, token))
            .env_remove("POD_IDENTITY_ASSOCIATIONS")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    }

    /// kubectl with the admin's kubeconfig: `(exit status ok, stdout, stderr)`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        self.kubectl_as("admin-token", args, stdin)
    }

    /// kubectl acting with `token`.
    pub fn kubectl_as(&self, token: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(super::python::kubectl())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(&self.dir, token))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply --server-side` of `yaml` as the admin, which must succeed.
    pub fn apply(&self, yaml: &str) {
        let (ok, out, err) = self.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(yaml),
        );
        assert!(ok, "kubectl apply failed:\n{out}{err}\n{yaml}");
    }

    /// A new namespace `<prefix>-<random>` with `labels`; returns its name.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let name = format!("{prefix}-{:08x}", fastrand::u32(..));
        self.create_namespace(&name, labels).await;
        name
    }

    /// Namespace `name` with `labels`, created unless it is there.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        create(&Api::<Namespace>::all(self.client()), &ns).await;
    }

    /// Service account `namespace/name`, created unless it is there.
    pub async fn service_account(&self, namespace: &str, name: &str) {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        create(&Api::<ServiceAccount>::namespaced(self.client(), namespace), &sa).await;
    }

    /// Node `name`, created unless it is there.
    pub async fn node(&self, name: &str) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        create(&Api::<Node>::all(self.client()), &node).await;
    }

    /// Pod `namespace/name` of service account `sa` (created with its node and service
    /// account unless they are there) scheduled on `node`; returns the pod as stored.
    pub async fn pod(&self, namespace: &str, name: &str, sa: &str, node: &str) -> Pod {
        self.pod_with(
            namespace,
            json!({"metadata": {"name": name}, "spec": {
            "nodeName": node, "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "registry.example/app:1"}]}}),
        )
        .await
    }

    /// `pod` (its `spec.nodeName` and `serviceAccountName` created first) in `namespace`.
    pub async fn pod_with(&self, namespace: &str, pod: Value) -> Pod {
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            self.node(node).await;
        }
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        self.service_account(namespace, sa).await;
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let pods = Api::<Pod>::namespaced(self.client(), namespace);
        create(&pods, &pod).await;
        pods.get(pod.metadata.name.as_deref().unwrap()).await.unwrap()
    }

    /// A token of `namespace/sa` from the TokenRequest API with `audience`, bound to pod `pod`
    /// when given (then it carries the pod's and its node's claims), valid `seconds`.
    pub async fn token(
        &self,
        namespace: &str,
        sa: &str,
        pod: Option<&Pod>,
        audience: &str,
        seconds: i64,
    ) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(seconds),
                bound_object_ref: pod.map(|p| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let sas = Api::<ServiceAccount>::namespaced(self.client(), namespace);
        let answer: TokenRequest = sas
            .create_subresource("token", sa, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{sa}: {e}"));
        answer.status.expect("a token").token
    }

    /// A pod `namespace/pod` of `sa` on `node` (made unless it is there) and its projected
    /// token for `audience`, valid an hour: what the kubelet would mount.
    pub async fn pod_token(
        &self,
        namespace: &str,
        sa: &str,
        pod: &str,
        node: &str,
        audience: &str,
    ) -> String {
        self.create_namespace(namespace, &[]).await;
        let p = self.pod(namespace, pod, sa, node).await;
        self.token(namespace, sa, Some(&p), audience, 3600).await
    }

    /// The token of the agent on `node` as the DaemonSet's pod there has it: service account
    /// `pod-identity-agent/pod-identity-agent`, bound to the running pod
    /// `pod-identity-agent-<node>` of DaemonSet `pod-identity-agent`, audience
    /// `pod-identity-exchange`.
    pub async fn agent_token(&self, node: &str) -> String {
        use super::agents::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT};
        let pod = self.agent_pod(node).await;
        self.token(
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            Some(&pod),
            "pod-identity-exchange",
            3600,
        )
        .await
    }

    /// The agent DaemonSet's running pod on `node` (DaemonSet, pod and its phase made as the
    /// controller and the kubelet would, unless they are there).
    pub async fn agent_pod(&self, node: &str) -> Pod {
        use super::agents::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT};
        use k8s_openapi::api::apps::v1::DaemonSet;
        self.create_namespace(AGENT_NAMESPACE, &[]).await;
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "pod-identity-agent"},
            "spec": {"selector": {"matchLabels": {"app": "pod-identity-agent"}},
                "template": {"metadata": {"labels": {"app": "pod-identity-agent"}},
                    "spec": {"serviceAccountName": AGENT_SERVICE_ACCOUNT,
                        "containers": [{"name": "agent", "image": "registry.example/agent:1"}]}}}}))
        .unwrap();
        let daemonsets = Api::<DaemonSet>::namespaced(self.client(), AGENT_NAMESPACE);
        create(&daemonsets, &ds).await;
        let ds = daemonsets.get("pod-identity-agent").await.unwrap();
        let name = format!("pod-identity-agent-{node}");
        let pod = self
            .pod_with(
                AGENT_NAMESPACE,
                json!({"metadata": {"name": name, "labels": {"app": "pod-identity-agent"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "pod-identity-agent",
                        "uid": ds.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
                    "spec": {"nodeName": node, "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                        "containers": [{"name": "agent", "image": "registry.example/agent:1"}]}}),
            )
            .await;
        self.set_running(&pod).await
    }

    /// `pod` with `status.phase: Running`, as its kubelet would report it.
    pub async fn set_running(&self, pod: &Pod) -> Pod {
        let pods = Api::<Pod>::namespaced(self.client(), pod.metadata.namespace.as_deref().unwrap());
        let status = json!({"status": {"phase": "Running"}});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .unwrap()
    }

    /// A token of `namespace/sa` bound to Node `node` (made unless it is there), as
    /// `kubectl create token --bound-object-kind Node` makes: it names the node but no pod.
    pub async fn node_token(&self, namespace: &str, sa: &str, node: &str, audience: &str) -> String {
        self.node(node).await;
        self.service_account(namespace, sa).await;
        let uid = Api::<Node>::all(self.client())
            .get(node)
            .await
            .unwrap()
            .metadata
            .uid;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(3600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.to_owned()),
                    uid,
                }),
            },
            ..Default::default()
        };
        let sas = Api::<ServiceAccount>::namespaced(self.client(), namespace);
        let answer: TokenRequest = sas
            .create_subresource("token", sa, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest bound to node {node}: {e}"));
        answer.status.expect("a token").token
    }

    /// Applies both `PodIdentityAssociation` CRDs (the binary's `crd` output) and waits until
    /// they are served.
    pub fn install_crd(&self) {
        let out = Command::new(super::BIN).arg("crd").output().unwrap();
        assert!(out.status.success());
        self.apply(&String::from_utf8(out.stdout).unwrap());
        let (ok, out, err) = self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/podidentityassociations.iam.podidentity.io",
                "crd/podidentityassociations.podidentity.io",
            ],
            None,
        );
        assert!(ok, "CRD not established: {out}{err}");
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `object`; one that is there already is fine.
async fn create<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating {:?}: {e}", object.meta().name),
    }
}

/// The flags every start of an API server shares (but the etcd prefix and the port).
fn common_flags(base: &Base) -> Vec<String> {
    let f = |name: &str| base.dir.join(name).display().to_string();
    vec![
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--tls-cert-file={}", f("tls.crt")),
        format!("--tls-private-key-file={}", f("tls.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", f("sa.key")),
        format!("--service-account-signing-key-file={}", f("sa.key")),
        "--authorization-mode=Node,RBAC".into(),
        format!("--token-auth-file={}", f("tokens.csv")),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--enable-priority-and-fairness=false".into(),
        "--profiling=false".into(),
    ]
}

/// The etcd and the shared files, started on first use; `None` without `KUBE_ASSETS`.
fn base() -> Option<&'static Base> {
    let Some(assets) = std::env::var_os("KUBE_ASSETS").filter(|a| !a.is_empty()) else {
        not_run();
        return None;
    };
    let base = BASE.get_or_init(|| start_base(PathBuf::from(assets)));
    Some(base.as_ref().unwrap_or_else(|e| panic!("{e}")))
}

fn start_base(assets: PathBuf) -> Result<Base, String> {
    for b in ["kube-apiserver", "etcd"] {
        if !assets.join(b).is_file() {
            return Err(format!(
                "KUBE_ASSETS={} holds no {b}: point it at the directory ../shared/k8s/unpack.sh prints",
                assets.display()
            ));
        }
    }
    // Memory-backed where there is one: etcd syncs every write.
    let root = [Path::new("/dev/shm"), &std::env::temp_dir()]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap()
        .join(format!("pod-identity-it-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let m = pod_identity_webhook::certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1)
        .map_err(|e| e.to_string())?;
    pod_identity_webhook::certs::write(&root, &m).map_err(|e| e.to_string())?;
    std::fs::write(root.join("sa.key"), signing_key()).map_err(|e| e.to_string())?;
    let tokens: String = USERS
        .iter()
        .map(|(user, token, groups)| {
            if groups.is_empty() {
                format!("{token},{user},{user}-uid\n")
            } else {
                format!("{token},{user},{user}-uid,\"{groups}\"\n")
            }
        })
        .collect();
    std::fs::write(root.join("tokens.csv"), tokens).map_err(|e| e.to_string())?;

    let [client, peer] = free_ports::<2>();
    let etcd = format!("http://127.0.0.1:{client}");
    let args = [
        format!("--data-dir={}", root.join("etcd").display()),
        format!("--listen-client-urls={etcd}"),
        format!("--advertise-client-urls={etcd}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        "--log-level=warn".into(),
    ];
    // The last process to go removes the directory.
    supervise(&assets.join("etcd"), &args, &root.join("etcd.log"), Some(&root))?;
    Ok(Base {
        etcd,
        dir: root,
        assets,
    })
}

/// A service-account signing key as clusters make them (RSA, with openssl where there is
/// one), else an ECDSA P-256 key (the API server signs ES256 with it).
fn signing_key() -> Vec<u8> {
    if let Ok(out) = Command::new("openssl")
        .args(["genrsa", "2048"])
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        return out.stdout;
    }
    rcgen::KeyPair::generate().unwrap().serialize_pem().into_bytes()
}

/// Runs `program` under a watchdog (`bash`) that ends it when this test binary exits or the
/// watchdog gets TERM, then removes `remove` if given. Returns the watchdog.
fn supervise(
    program: &Path,
    args: &[String],
    log: &Path,
    remove: Option<&Path>,
) -> Result<std::process::Child, String> {
    const WATCHDOG: &str = r#"
parent=$1; remove=$2; shift 2
"$@" & child=$!
trap 'kill -9 $child 2>/dev/null; wait $child; [ -n "$remove" ] && rm -rf "$remove"; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
kill -9 $child 2>/dev/null; wait $child
[ -n "$remove" ] && rm -rf "$remove"
exit 0
"#;
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new("bash")
        .args(["-c", WATCHDOG, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(remove.map(|p| p.display().to_string()).unwrap_or_default())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))
}

/// Says once, on one line straight to the terminal (past the harness's capture), which tests
/// were not run for want of `KUBE_ASSETS` and how to run them.
fn not_run() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let names: Vec<String> = Command::new(std::env::current_exe().unwrap())
            .args(["--list", "--format", "terse"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|n| n.starts_with(REAL_TESTS))
            .map(str::to_owned)
            .collect();
        let line = format!(
            "NOT RUN: {} tests need a real kube-apiserver and KUBE_ASSETS is not set; run them with `KUBE_ASSETS=<a directory holding kube-apiserver and etcd> cargo test` (README, Tests): {}\n",
            names.len(),
            names.join(", ")
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    });
}

/// A `PodIdentityAssociation` for `namespace/service_account` → `agency`, as a YAML document.
pub fn association_yaml(namespace: &str, service_account: &str, agency: &str) -> String {
    format!(
        "apiVersion: iam.podidentity.io/v1beta1\nkind: PodIdentityAssociation\nmetadata:\n  name: {service_account}\n  namespace: {namespace}\nspec:\n  serviceAccount: {service_account}\n  agencyName: {agency}\n"
    )
}

/// The same as an old cluster-scoped `PodIdentityAssociation` (podidentity.io/v1alpha1).
pub fn legacy_association_yaml(namespace: &str, service_account: &str, agency: &str) -> String {
    format!(
        "apiVersion: podidentity.io/v1alpha1\nkind: PodIdentityAssociation\nmetadata:\n  name: {namespace}.{service_account}\nspec:\n  namespace: {namespace}\n  serviceAccount: {service_account}\n  agencyName: {agency}\n"
    )
}

/// The API server's own audience (its service-account issuer): what `kubectl create token`
/// gives by default.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The rules of ClusterRole `name` in the manifest `path` (relative to the crate), as JSON.
pub fn manifest_rules(path: &str, name: &str) -> Value {
    use serde::Deserialize;
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name} in {path}"))["rules"]
        .clone()
}

/// The API server as the holder of `token` sees it: for programs run with their own RBAC.
pub struct Acting<'a> {
    pub api: &'a ApiServer,
    pub token: String,
}

impl super::KubeApi for Acting<'_> {
    fn kube_config(&self) -> kube::Config {
        self.api.config_as(&self.token)
    }
}

impl ApiServer {
    /// Service account `namespace/name` (made unless it is there) bound by a
    /// ClusterRoleBinding to a ClusterRole `<namespace>-<name>` of its own holding `rules`
    /// (RBAC rules, JSON). Returns once the authorizer decides by them, with a token of the
    /// service account for the API server, valid an hour.
    pub async fn service_account_with(&self, namespace: &str, name: &str, rules: Value) -> String {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        self.service_account(namespace, name).await;
        let role_name = format!("{namespace}-{name}");
        let role: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": role_name}, "rules": rules})).unwrap();
        create(&Api::<ClusterRole>::all(self.client()), &role).await;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }))
        .unwrap();
        create(&Api::<ClusterRoleBinding>::all(self.client()), &binding).await;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let groups = [
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{namespace}"),
            "system:authenticated",
        ];
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let end = Instant::now() + Duration::from_secs(20);
        for rule in rules.as_array().into_iter().flatten() {
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        while !self.may(&user, &groups, &verb, &group, &resource).await {
                            assert!(Instant::now() < end, "RBAC never let {user} {verb} {resource}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
        self.token(namespace, name, None, API_AUDIENCE, 3600).await
    }

    /// Whether the authorizer lets `user` (in `groups`) `verb` `resource` of API group
    /// `group`, cluster-wide: a SubjectAccessReview by the admin.
    pub async fn may(&self, user: &str, groups: &[&str], verb: &str, group: &str, resource: &str) -> bool {
        use k8s_openapi::api::authorization::v1::SubjectAccessReview;
        let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
            "user": user, "groups": groups,
            "resourceAttributes": {"group": group, "resource": resource, "verb": verb},
        }}))
        .unwrap();
        let answer = Api::<SubjectAccessReview>::all(self.client())
            .create(&PostParams::default(), &review)
            .await
            .unwrap();
        answer.status.is_some_and(|s| s.allowed)
    }
}
