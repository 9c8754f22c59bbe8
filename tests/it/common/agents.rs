//! Running the agent and the exchange in process for tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::TokenReview;
use pod_identity_webhook::agent::backend::{Backend, CceBackend, LocalBackend};
use pod_identity_webhook::agent::cache::Cache;
use pod_identity_webhook::agent::metrics::AgentMetrics;
use pod_identity_webhook::agent::{Agent, AgentConfig};
use pod_identity_webhook::exchange::eks::Eks;
use pod_identity_webhook::exchange::iam::{Domain, Iam};
use pod_identity_webhook::exchange::metrics::ExchangeMetrics;
use pod_identity_webhook::exchange::review::{KubeReviewer, ReviewError, TokenReviewer};
use pod_identity_webhook::exchange::sts::Sts;
use pod_identity_webhook::exchange::{Exchange, ExchangeConfig};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{AccessKey, CloudAuth, Reader, TokenFile, file, http_client};
use tokio::sync::oneshot;

use super::{KubeApi, fixtures_dir, stop_signal};

pub const PROJECT: &str = "proj-1";
pub const CLUSTER: &str = "46db1d50-b49f-48e5-a312-27645af73405";

pub struct RunningAgent {
    /// The credential endpoint on the first listen address.
    pub url: String,
    /// The same on every listen address.
    pub urls: Vec<String>,
    pub admin: String,
    pub metrics: Arc<AgentMetrics>,
    pub cache: Arc<Cache>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn fixture_store() -> Reader {
    Reader::fixed(file::load(&fixtures_dir().join("associations.yaml")).unwrap())
}

pub fn local_backend(provider: Provider) -> Arc<dyn Backend> {
    Arc::new(LocalBackend {
        associations: fixture_store(),
        audience: provider.profile().audience,
        lifetime: Duration::from_secs(3600),
    })
}

/// A `cce` backend calling `endpoint` with an `X-Auth-Token` from a file in `dir`.
pub fn cce_backend(endpoint: &str, dir: &Path, timeout: Duration) -> Arc<dyn Backend> {
    cce_backend_trusting(endpoint, dir, timeout, None)
}

/// The same, trusting `ca` for HTTPS besides the public roots.
pub fn cce_backend_trusting(
    endpoint: &str,
    dir: &Path,
    timeout: Duration,
    ca: Option<&Path>,
) -> Arc<dyn Backend> {
    cce_backend_as(endpoint, dir, timeout, ca, &agent_token(super::NODE))
}

/// The same, authenticating with `agent_token` (e.g. a real one from the API server).
pub fn cce_backend_as(
    endpoint: &str,
    dir: &Path,
    timeout: Duration,
    ca: Option<&Path>,
    agent_token: &str,
) -> Arc<dyn Backend> {
    let token_file = dir.join("agent-auth-token");
    std::fs::write(&token_file, format!("{agent_token}\n")).unwrap();
    let client = http_client(ca, timeout).unwrap();
    Arc::new(
        CceBackend::new(
            client,
            endpoint,
            PROJECT,
            CLUSTER,
            CloudAuth::TokenFile(TokenFile::new(token_file)),
        )
        .unwrap(),
    )
}

/// The agent under test, built step by step and started by [`start`](Self::start): `provider`'s
/// answers from `backend`, on loopback, the default settings.
pub struct AgentUnderTest {
    config: AgentConfig,
    backend: Arc<dyn Backend>,
    associations: Option<Reader>,
}

impl AgentUnderTest {
    pub fn new(provider: Provider, backend: Arc<dyn Backend>) -> Self {
        // reqwest clients in the tests use the process-wide provider.
        crate::common::crypto();
        let config = AgentConfig::new(
            vec!["127.0.0.1:0".parse().unwrap()],
            "127.0.0.1:0".parse().unwrap(),
            provider,
        );
        AgentUnderTest {
            config,
            backend,
            associations: None,
        }
    }

    /// Its cached credentials following `associations`.
    pub fn following(mut self, associations: Option<Reader>) -> Self {
        self.associations = associations;
        self
    }

    /// Its settings changed by `tweak`.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        tweak(&mut self.config);
        self
    }

    /// Binds it and runs it until the returned handle is dropped.
    pub async fn start(self) -> RunningAgent {
        let agent = Agent::bind(self.config, self.backend, self.associations, Arc::default())
            .await
            .unwrap();
        let urls: Vec<String> = agent
            .local_addrs()
            .iter()
            .map(|a| format!("http://{a}/v1/credentials"))
            .collect();
        let url = urls[0].clone();
        let admin = format!("http://{}", agent.admin_addr());
        let (metrics, cache) = (agent.metrics(), agent.cache());
        let (tx, shutdown) = stop_signal();
        tokio::spawn(agent.run(shutdown));
        RunningAgent {
            url,
            urls,
            admin,
            metrics,
            cache,
            stop: Some(tx),
        }
    }
}

pub struct RunningExchange {
    pub url: String,
    pub metrics: Arc<ExchangeMetrics>,
    /// The TokenReviews it asked, by audience: counted where its reviewer hands them to the
    /// API server.
    pub reviews: Arc<Reviews>,
    stop: Option<oneshot::Sender<()>>,
}

/// TokenReviews asked, by audience (`""`: the API server's own), as they leave the exchange.
#[derive(Default)]
pub struct Reviews(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl Reviews {
    pub fn of(&self, audience: &str) -> u64 {
        self.0.lock().unwrap().get(audience).copied().unwrap_or(0)
    }
}

/// The exchange's reviewer, counting each TokenReview it sends.
struct Counted {
    inner: Arc<dyn TokenReviewer>,
    reviews: Arc<Reviews>,
}

impl TokenReviewer for Counted {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        *self
            .reviews
            .0
            .lock()
            .unwrap()
            .entry(audience.unwrap_or_default().to_owned())
            .or_default() += 1;
        self.inner.review(token, audience)
    }
}

impl RunningExchange {
    /// The URL of the assume-agency API for this exchange's cluster.
    pub fn api(&self) -> String {
        format!(
            "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity",
            self.url
        )
    }
}

impl Drop for RunningExchange {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl RunningExchange {
    /// The TokenReviews it asked for `audience`.
    pub fn reviews_for(&self, audience: &str) -> u64 {
        self.reviews.of(audience)
    }
}

/// The exchange under test, built step by step and started by [`start`](Self::start): TokenReview
/// at `api` (counted), the fixture associations, plain HTTP, the default settings; the CCE front
/// with [`iam`](Self::iam), the EKS front with [`eks`](Self::eks).
pub struct ExchangeUnderTest<'a, A: KubeApi> {
    api: &'a A,
    config: ExchangeConfig,
    iam: Option<Iam>,
    eks: Option<Eks>,
    associations: Reader,
    reviewer: Option<Arc<dyn TokenReviewer>>,
}

impl<'a, A: KubeApi> ExchangeUnderTest<'a, A> {
    pub fn new(api: &'a A) -> Self {
        crate::common::crypto();
        ExchangeUnderTest {
            api,
            config: ExchangeConfig::new("127.0.0.1:0".parse().unwrap(), PROJECT, CLUSTER),
            iam: None,
            eks: None,
            associations: fixture_store(),
            reviewer: None,
        }
    }

    /// The CCE front, with IAM at `url` and the operator's token (`operator-iam-token`) from a
    /// file in `dir`.
    pub fn iam(self, url: &str, dir: &Path) -> Self {
        let token_file = dir.join("operator-token");
        std::fs::write(&token_file, "operator-iam-token").unwrap();
        self.iam_with(url, CloudAuth::TokenFile(TokenFile::new(token_file)))
    }

    /// The CCE front, signing its IAM calls with `key`.
    pub fn iam_signed(self, url: &str, key: AccessKey) -> Self {
        self.iam_with(url, CloudAuth::AkSk(key))
    }

    fn iam_with(mut self, url: &str, auth: CloudAuth) -> Self {
        let client = http_client(None, Duration::from_secs(4)).unwrap();
        self.iam = Some(Iam::new(client, url, auth, Domain::Id("domain-1".into()), 3600).unwrap());
        self
    }

    /// The EKS front alone, for cluster `cluster_name` in `us-west-2`, with STS at `sts_url`
    /// (signing with the access key `AKIDEXCHANGE`).
    pub fn eks(mut self, sts_url: &str, cluster_name: &str) -> Self {
        let client = http_client(None, Duration::from_secs(4)).unwrap();
        let sts = Sts::new(client, sts_url, "us-west-2", 3600)
            .unwrap()
            .with_key("AKIDEXCHANGE", "exchange-secret");
        self.eks = Some(Eks {
            cluster_name: cluster_name.to_owned(),
            cluster_arn: None,
            region: "us-west-2".into(),
            sts,
        });
        self.config.project_id.clear();
        self.config.cluster_id.clear();
        self
    }

    /// Its associations from `associations` (e.g. a watch) instead of the fixtures.
    pub fn associations(mut self, associations: Reader) -> Self {
        self.associations = associations;
        self
    }

    /// Its reviews made by `reviewer` (e.g. a double answering what the stand-in cannot,
    /// around [`kube_reviewer`]) instead of TokenReview at `api`.
    pub fn reviewer(mut self, reviewer: Arc<dyn TokenReviewer>) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    /// Its settings changed by `tweak`.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut ExchangeConfig)) -> Self {
        tweak(&mut self.config);
        self
    }

    /// Binds it and runs it until the returned handle is dropped.
    pub async fn start(self) -> RunningExchange {
        let tls = self.config.cert_dir.is_some();
        let metrics = Arc::new(ExchangeMetrics::default());
        let reviews = Arc::new(Reviews::default());
        let reviewer = Arc::new(Counted {
            inner: self.reviewer.unwrap_or_else(|| Arc::new(kube_reviewer(self.api))),
            reviews: reviews.clone(),
        });
        let exchange = Exchange::bind(
            self.config,
            reviewer,
            self.api.kube_config(),
            self.associations,
            self.iam,
            self.eks,
            metrics.clone(),
        )
        .await
        .unwrap();
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}", exchange.local_addr().port());
        let (tx, shutdown) = stop_signal();
        tokio::spawn(exchange.run(shutdown));
        RunningExchange {
            url,
            metrics,
            reviews,
            stop: Some(tx),
        }
    }
}

/// TokenReview at `api`, with a 1 s deadline.
pub fn kube_reviewer(api: &impl KubeApi) -> KubeReviewer {
    KubeReviewer::new(api.kube_config(), Duration::from_secs(1)).unwrap()
}

/// A token for `namespace/sa` in pod `pod` on the tests' node, valid for an hour, with `audience`.
pub fn pod_token(namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    pod_token_on(super::NODE, namespace, sa, pod, audience)
}

/// The same for a pod on `node`.
pub fn pod_token_on(node: &str, namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    super::unsigned_on(
        Some(node),
        namespace,
        sa,
        pod,
        audience,
        jiff::Timestamp::now().as_second() + 3600,
    )
}

/// The agents' service account, as the manifests create it and the exchange expects it.
pub const AGENT_NAMESPACE: &str = "pod-identity-agent";
pub const AGENT_SERVICE_ACCOUNT: &str = "pod-identity-agent";

/// The token of the agent on `node` (the DaemonSet's projected token, audience
/// `pod-identity-exchange`).
pub fn agent_token(node: &str) -> String {
    pod_token_on(
        node,
        AGENT_NAMESPACE,
        AGENT_SERVICE_ACCOUNT,
        &format!("pod-identity-agent-{node}"),
        "pod-identity-exchange",
    )
}

/// An SDK's credential request to the agent at `url`: a GET with the pod's token as it is in
/// `Authorization` (as botocore sends it, and as the agent takes it for both profiles).
pub async fn credentials_request(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("Authorization", token)
        .send()
        .await
        .unwrap()
}

/// POSTs `{"token": pod}` to `exchange`'s assume-agency API with `caller` as `X-Auth-Token`;
/// the status and the body.
pub async fn redeem(exchange: &RunningExchange, caller: &str, pod: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(exchange.api())
        .header("X-Auth-Token", caller)
        .json(&serde_json::json!({ "token": pod }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}
