//! The credential agent (`agent`): the endpoint the injected env vars point at, on every
//! node. It takes the pod's token from `Authorization`, exchanges it through a backend, caches
//! the result and answers in the shape the provider's SDKs parse. This module is its
//! composition root; the request handling is in [`handlers`].

pub mod backend;
pub mod cache;
mod handlers;
pub mod metrics;
mod pods;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::association::source::{self, AssociationSource};
use crate::association::{Reader, store};
use crate::cli::{AgentArgs, ArgError, BackendKind, seconds};
use crate::cloud::auth::{CloudAuth, TokenFile};
use crate::error::StartError;
use crate::http::health::{self, Readiness};
use crate::http::{self, BindError, Limits, Listener, Shutdown};
use crate::issuer::{IssuerKeys, KEY_READ_INTERVAL};
use crate::kube_client;
use crate::log_throttle::Sampled;
use crate::profile::Provider;
use backend::{Backend, CceBackend, EksBackend, LocalBackend};
use cache::{Cache, CacheConfig};
use metrics::AgentMetrics;
pub use pods::NodePods;

/// The link-local address the injected endpoint uses, in both address families.
pub const LINK_LOCAL_HOSTS: [&str; 2] = ["169.254.170.23", "fd00:ec2::23"];

/// The agent's listener bounds: requests carry no body worth the name (`{}` at most).
fn default_limits() -> Limits {
    Limits {
        max_body: 16 * 1024,
        body_budget: 4 * 1024 * 1024,
        max_connections_per_client: 64,
        ..Limits::default()
    }
}

/// How the agent is set up.
pub struct AgentConfig {
    /// The credential endpoint's addresses (e.g. 169.254.170.23:80 and [fd00:ec2::23]:80).
    pub listen: Vec<SocketAddr>,
    /// Addresses answered on when the host has them, skipped with a warning when not.
    pub listen_if_present: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub provider: Provider,
    /// Host header values (without port) the credential endpoint answers to besides its own
    /// addresses ([`AgentConfig::hosts`]).
    pub allowed_hosts: Vec<String>,
    pub cache: CacheConfig,
    /// How often the background refresher looks for credentials due for refresh.
    pub refresh_interval: Duration,
    pub limits: Limits,
    /// The node whose pods are followed, so credentials of pods that are gone are dropped.
    pub pods: Option<NodePods>,
    /// The cluster's signing keys: tokens that do not verify against them are refused before
    /// they can spend an upstream budget.
    pub issuer: Option<Arc<IssuerKeys>>,
}

impl AgentConfig {
    pub fn new(listen: Vec<SocketAddr>, admin_listen: SocketAddr, provider: Provider) -> Self {
        AgentConfig {
            listen,
            listen_if_present: Vec::new(),
            admin_listen,
            provider,
            allowed_hosts: Vec::new(),
            cache: CacheConfig::default(),
            refresh_interval: Duration::from_secs(1),
            limits: default_limits(),
            pods: None,
            issuer: None,
        }
    }
}

impl AgentConfig {
    /// Every Host the credential endpoint answers to: the link-local addresses, localhost,
    /// each listen address and the extra `allowed_hosts`.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = LINK_LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
        let own = self
            .listen
            .iter()
            .chain(&self.listen_if_present)
            .map(|a| a.ip().to_string());
        for host in ["localhost".to_owned(), "127.0.0.1".to_owned()]
            .into_iter()
            .chain(own)
            .chain(self.allowed_hosts.iter().cloned())
        {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }
}

/// `agent`: builds the backend the flags name (and, for `local`, its association source),
/// then serves until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), StartError> {
    let mut config = AgentConfig::new(args.listen, args.admin_listen, args.provider);
    config.listen_if_present = args.listen_if_present;
    config.allowed_hosts.extend(args.allowed_hosts);
    config.limits = args.limits.limits(config.limits)?;
    config.cache = CacheConfig {
        capacity: args.cache_size,
        upstream_rate: args.upstream_rate,
        upstream_burst: args.upstream_burst,
        client_rate: args.client_rate,
        client_burst: args.client_burst,
        refresh_rate: args.refresh_rate,
        refresh_burst: args.refresh_burst,
        negative_ttl: seconds("negative-ttl", args.negative_ttl)?,
        refresh_before: seconds("refresh-before", args.refresh_before)?,
        ..CacheConfig::default()
    };
    let metrics = Arc::new(AgentMetrics::default());
    // Every backend's cached credentials follow the associations when a source is named;
    // the local backend also reads its answers from them.
    let source = args.source.source(args.cluster_id.clone())?;
    let kube_config = match source.needs_cluster() || args.node_name.is_some() {
        true => Some(kube_client::config().await?),
        false => None,
    };
    let cluster = kube_config.clone().map(kube_client::watch_client).transpose()?;
    if let Some(kube) = kube_config.filter(|_| args.verify_tokens) {
        let client = kube_client::request_client(kube, Duration::from_secs(2))?;
        config.issuer = Some(IssuerKeys::start(
            client,
            KEY_READ_INTERVAL,
            metrics.issuer.clone(),
        ));
    }
    let (associations, writer) = store();
    let _source = source::start(
        &source,
        writer,
        cluster.as_ref(),
        metrics.inputs.clone(),
        Duration::from_secs(2),
    )?;
    let follows = source != AssociationSource::None;
    if let (Some(client), Some(node)) = (cluster, args.node_name) {
        config.pods = Some(NodePods { client, node });
    }
    let backend: Arc<dyn Backend> = match args.backend {
        BackendKind::Local => {
            tracing::warn!(
                "DEVELOPMENT ONLY: --backend local trusts token claims without verifying signatures and hands out FAKE credentials"
            );
            Arc::new(LocalBackend {
                associations: associations.clone(),
                audience: args.provider.profile().audience,
                lifetime: seconds("local-lifetime", args.local_lifetime)?,
            })
        }
        BackendKind::Cce => {
            let need = |v: Option<String>, flag: &str| {
                v.ok_or_else(|| ArgError(format!("--backend cce needs {flag}")))
            };
            let endpoint = need(args.cce_endpoint, "--cce-endpoint")?;
            let project = need(args.project_id, "--project-id")?;
            let cluster = need(args.cluster_id, "--cluster-id")?;
            Arc::new(CceBackend::new(
                args.auth.client(4.0)?,
                &endpoint,
                &project,
                &cluster,
                args.auth.auth()?,
            )?)
        }
        BackendKind::Eks => {
            let need = |v: Option<String>, flag: &str| {
                v.ok_or_else(|| ArgError(format!("--backend eks needs {flag}")))
            };
            let cluster = need(args.cluster_name, "--cluster-name")?;
            let region = need(args.region, "--region (or AWS_REGION)")?;
            let endpoint = args
                .eks_endpoint
                .unwrap_or_else(|| backend::regional_endpoint(&region));
            let token = args
                .auth
                .auth_token_file
                .clone()
                .map(|path| CloudAuth::TokenFile(TokenFile::new(path)));
            Arc::new(EksBackend::new(
                args.auth.client(4.0)?,
                &endpoint,
                &cluster,
                &region,
                token,
            )?)
        }
    };
    let associations = (follows || args.backend == BackendKind::Local).then_some(associations);
    let agent = Agent::bind(config, backend, associations, metrics).await?;
    agent.run(http::termination()).await;
    Ok(())
}

/// A bound agent, ready to run.
pub struct Agent {
    /// The credential endpoint's listeners, one per address.
    listeners: Vec<Listener>,
    admin: Listener,
    state: Arc<handlers::AgentState>,
    readiness: Arc<Readiness>,
    refresh_interval: Duration,
    limits: Limits,
    pods: Option<NodePods>,
}

impl Agent {
    /// Binds both listeners. `associations`, when the agent follows any, gates `/readyz`
    /// until its source has synced, and cached credentials follow them.
    pub async fn bind(
        config: AgentConfig,
        backend: Arc<dyn Backend>,
        associations: Option<Reader>,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Self, BindError> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            listeners.push(Listener::bind(*addr, None).await?);
        }
        for addr in &config.listen_if_present {
            match Listener::bind(*addr, None).await {
                Ok(l) => listeners.push(l),
                // Not configured on this host (a node without IPv6, say): the others serve.
                Err(e) if e.source.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    tracing::warn!(%addr, "not an address of this host: not answering on it");
                }
                Err(e) => return Err(e),
            }
        }
        let admin = Listener::bind(config.admin_listen, None).await?;
        let allowed_hosts = config.hosts();
        let cache = Cache::new(config.cache, backend, metrics.clone(), associations.clone());
        let readiness = match associations {
            Some(a) => Readiness::default().require_flag(a.synced(), "associations not synced"),
            None => Readiness::default(),
        };
        let state = Arc::new(handlers::AgentState {
            provider: config.provider,
            allowed_hosts,
            cache,
            metrics,
            log_budget: Sampled::new(10, Duration::from_secs(1)),
            issuer: config.issuer,
        });
        Ok(Agent {
            listeners,
            admin,
            state,
            readiness: Arc::new(readiness),
            refresh_interval: config.refresh_interval,
            limits: config.limits,
            pods: config.pods,
        })
    }

    /// The credential endpoint's addresses, in the order configured.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.state.metrics.clone()
    }

    pub fn cache(&self) -> Arc<Cache> {
        self.state.cache.clone()
    }

    /// Serves both ports until `shutdown` completes, then finishes in-flight requests and
    /// returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let refresher = self.state.cache.spawn_refresher(self.refresh_interval);
        let _pods = match self.pods.take() {
            Some(pods) => pods::follow(pods, self.state.cache.clone()).await,
            None => None,
        };
        let addrs: Vec<String> = self.local_addrs().iter().map(ToString::to_string).collect();
        tracing::info!(addrs = addrs.join(", "), admin = %self.admin_addr(), provider = %self.state.provider, "credential agent listening (http)");
        let stop = Shutdown::on(async move {
            shutdown.await;
            tracing::info!("agent shutting down");
        });
        let state = self.state.clone();
        let render = move || state.metrics.render(state.cache.len());
        let admin = health::routes(self.readiness.clone(), render);
        let routes = handlers::routes(self.state.clone());
        let endpoints = self.listeners.into_iter().map(|listener| {
            let readiness = self.readiness.clone();
            http::serve(
                listener,
                routes.clone(),
                self.limits,
                self.state.metrics.serve.clone(),
                stop.clone().wait(),
                move || readiness.start_draining(),
            )
        });
        tokio::join!(
            futures::future::join_all(endpoints),
            http::serve(
                self.admin,
                admin,
                self.limits,
                self.state.metrics.serve.clone(),
                stop.wait(),
                || {}
            ),
        );
        refresher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_answers_to_each_of_its_addresses() {
        let listen = vec![
            "169.254.170.23:80".parse().unwrap(),
            "[fd00:ec2::23]:80".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
        ];
        let mut config = AgentConfig::new(listen, "127.0.0.1:0".parse().unwrap(), Provider::Cce);
        config.allowed_hosts.push("agent.local".into());
        let hosts = config.hosts();
        for h in [
            "169.254.170.23",
            "fd00:ec2::23",
            "::1",
            "localhost",
            "127.0.0.1",
            "agent.local",
        ] {
            assert_eq!(hosts.iter().filter(|x| *x == h).count(), 1, "{h} in {hosts:?}");
        }
    }
}
