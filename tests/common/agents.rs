//! Running the agent and the exchange in process for tests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pod_identity_webhook::agent::backend::{self, CceAuth, CceBackend, LocalBackend, TokenFile};
use pod_identity_webhook::agent::cache::Cache;
use pod_identity_webhook::agent::credentials::Backend;
use pod_identity_webhook::agent::metrics::AgentMetrics;
use pod_identity_webhook::agent::{Agent, AgentConfig};
use pod_identity_webhook::association::{Store, file};
use pod_identity_webhook::exchange::iam::{Domain, Iam};
use pod_identity_webhook::exchange::{Exchange, ExchangeConfig, KubeReviewer};
use pod_identity_webhook::mutation::Provider;
use tokio::sync::oneshot;

use super::fixtures_dir;
use super::standin::StandIn;

pub const PROJECT: &str = "proj-1";
pub const CLUSTER: &str = "46db1d50-b49f-48e5-a312-27645af73405";

pub struct RunningAgent {
    pub url: String,
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

pub fn fixture_store() -> Arc<Store> {
    Arc::new(Store::new(
        file::load(&fixtures_dir().join("associations.yaml")).unwrap(),
    ))
}

pub fn local_backend(provider: Provider) -> Arc<dyn Backend> {
    Arc::new(LocalBackend {
        store: fixture_store(),
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
    let token_file = dir.join("agent-auth-token");
    std::fs::write(&token_file, "agent-iam-token\n").unwrap();
    let client = backend::http_client(ca, timeout).unwrap();
    Arc::new(
        CceBackend::new(
            client,
            endpoint,
            PROJECT,
            CLUSTER,
            CceAuth::TokenFile(TokenFile::new(token_file)),
        )
        .unwrap(),
    )
}

pub async fn start_agent(
    provider: Provider,
    backend: Arc<dyn Backend>,
    tweak: impl FnOnce(&mut AgentConfig),
) -> RunningAgent {
    // reqwest clients in the tests use the process-wide provider.
    pod_identity_webhook::server::tls::install_crypto_provider();
    let mut config = AgentConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        provider,
    );
    tweak(&mut config);
    let agent = Agent::bind(config, backend, Arc::new(AtomicBool::new(true)))
        .await
        .unwrap();
    let url = format!("http://{}/v1/credentials", agent.local_addr());
    let admin = format!("http://{}", agent.admin_addr());
    let (metrics, cache) = (agent.metrics(), agent.cache());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    RunningAgent {
        url,
        admin,
        metrics,
        cache,
        stop: Some(tx),
    }
}

pub struct RunningExchange {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for RunningExchange {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The exchange with TokenReview on the stand-in API server and IAM at `iam_url`
/// (operator token `operator-iam-token` from a file in `dir`).
pub async fn start_exchange(api: &StandIn, iam_url: &str, dir: &Path) -> RunningExchange {
    start_exchange_with(api, iam_url, dir, None).await
}

/// The same; with `cert_dir`, over HTTPS.
pub async fn start_exchange_with(
    api: &StandIn,
    iam_url: &str,
    dir: &Path,
    cert_dir: Option<&Path>,
) -> RunningExchange {
    pod_identity_webhook::server::tls::install_crypto_provider();
    let token_file = dir.join("operator-token");
    std::fs::write(&token_file, "operator-iam-token").unwrap();
    let client = backend::http_client(None, Duration::from_secs(4)).unwrap();
    let auth = CceAuth::TokenFile(TokenFile::new(token_file));
    let iam = Iam::new(client, iam_url, auth, Domain::Id("domain-1".into()), 3600).unwrap();
    let config = ExchangeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        project_id: PROJECT.into(),
        cluster_id: CLUSTER.into(),
        cert_dir: cert_dir.map(Path::to_path_buf),
    };
    let reviewer = Arc::new(KubeReviewer(api.client().await));
    let exchange = Exchange::bind(
        config,
        reviewer,
        fixture_store(),
        Arc::new(AtomicBool::new(true)),
        iam,
    )
    .await
    .unwrap();
    let scheme = if cert_dir.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}", exchange.local_addr().port());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(exchange.run(async {
        let _ = rx.await;
    }));
    RunningExchange { url, stop: Some(tx) }
}

/// A token for `namespace/sa` in pod `pod`, valid for an hour, with `audience`.
pub fn pod_token(namespace: &str, sa: &str, pod: &str, audience: &str) -> String {
    pod_identity_webhook::agent::token::unsigned(
        namespace,
        sa,
        pod,
        audience,
        jiff::Timestamp::now().as_second() + 3600,
    )
}
