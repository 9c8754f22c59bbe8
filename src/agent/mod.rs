//! The credential agent (`agent`): the endpoint the injected env vars point at, on every
//! node. It takes the pod's token from `Authorization`, exchanges it through a backend, caches
//! the result and answers in the shape the provider's SDKs parse. This module is its
//! composition root; the request handling is in [`handlers`].

pub mod args;
pub mod backend;
pub mod cache;
mod config;
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
use crate::error::StartError;
use crate::http::health::{self, Readiness};
use crate::http::{self, BindError, Limits, Listener, Shutdown};
use crate::issuer::{IssuerKeys, KEY_READ_INTERVAL};
use crate::kube_client;
use crate::log_throttle::Sampled;
use args::{AgentArgs, BackendChoice, Config};
use backend::{Backend, LocalBackend};
use cache::Cache;
pub use config::{AgentConfig, LINK_LOCAL_HOSTS};
use metrics::AgentMetrics;
pub use pods::NodePods;

/// `agent`: builds the backend the flags name (and, for `local`, its association source),
/// then serves until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), StartError> {
    let Config {
        agent: mut config,
        backend,
        source,
        node_name,
        verify_tokens,
    } = Config::try_from(args)?;
    let metrics = Arc::new(AgentMetrics::default());
    let kube_config = match source.needs_cluster() || node_name.is_some() {
        true => Some(kube_client::config().await?),
        false => None,
    };
    let cluster = kube_config.clone().map(kube_client::watch_client).transpose()?;
    if let Some(kube) = kube_config.filter(|_| verify_tokens) {
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
    if let (Some(client), Some(node)) = (cluster, node_name) {
        config.pods = Some(NodePods { client, node });
    }
    let (backend, local): (Arc<dyn Backend>, bool) = match backend {
        BackendChoice::Local { lifetime } => {
            tracing::warn!(
                "DEVELOPMENT ONLY: --backend local trusts token claims without verifying signatures and hands out FAKE credentials"
            );
            let local = LocalBackend {
                associations: associations.clone(),
                audience: config.provider.profile().audience,
                lifetime,
            };
            (Arc::new(local), true)
        }
        BackendChoice::Upstream(backend) => (backend, false),
    };
    let associations = (follows || local).then_some(associations);
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
