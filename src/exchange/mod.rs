//! The cluster-side server (`exchange`): the CCE assume-agency-for-pod-identity API served by
//! the cluster, for clusters where no cloud provides it, and EKS Auth's
//! AssumeRoleForPodIdentity. Only the node agents may call them: their own token
//! (`X-Auth-Token`) is reviewed first. The core ([`redeem`]) verifies the pod's token with the
//! Kubernetes TokenReview API, redeems it only for the agent on the pod's node, finds the
//! association (the same index as the other programs) and spends the service account's
//! budget; each front ([`cce`], [`eks`]) then calls its upstream (IAM, STS) and answers in its
//! API's shapes. It also serves the association API family (create, list, show, update,
//! delete) on the `PodIdentityAssociation` objects, for users whom cluster RBAC allows
//! ([`associations`]). This module is its composition root.

pub mod args;
mod associations;
mod cce;
mod config;
pub mod eks;
pub mod iam;
pub mod metrics;
mod redeem;
mod refusal;
pub mod review;
pub mod sts;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::association::source;
use crate::association::{Reader, store};
use crate::cloud::{cce_association, cce_assume_agency};
use crate::error::StartError;
use crate::expiring::Expiring;
use crate::http::health::{self, Readiness};
use crate::http::tls::ReloadingCert;
use crate::http::{self, Limits, Listener};
use crate::issuer::{IssuerKeys, KEY_READ_INTERVAL};
use crate::kube_client;
use crate::rate_limit::KeyedBuckets;
use args::{Config, ExchangeArgs};
use cce::CceState;
pub use config::{
    AGENT, AGENT_DAEMONSET, BURST_PER_SERVICE_ACCOUNT, CACHE_TTL, CALLER_AUDIENCE, ExchangeConfig,
    RATE_PER_SERVICE_ACCOUNT, default_limits,
};
use eks::Eks;
use eks::EksState;
use iam::Iam;
use metrics::ExchangeMetrics;
use redeem::Redeemer;
use refusal::SampledLog;
use review::{KubeReviewer, LocallyVerified, TokenReviewer};

/// Tokens remembered at most, per cache.
const RECENT_CAPACITY: usize = 10_000;
/// Refusals logged per minute; the rest are counted (and the count logged).
const REFUSALS_LOGGED_PER_MINUTE: u32 = 20;

/// `exchange`: TokenReview through the cluster's API server, associations from the flags'
/// source, IAM with the operator's credentials; serves until SIGTERM or SIGINT.
pub async fn run(args: ExchangeArgs) -> Result<(), StartError> {
    let Config {
        exchange: config,
        iam,
        eks,
        source,
        review_deadline,
        verify_tokens,
    } = Config::try_from(args)?;
    let kube_config = kube_client::config().await?;
    let cluster = kube_client::watch_client(kube_config.clone())?;
    let metrics = Arc::new(ExchangeMetrics::default());
    let (associations, writer) = store();
    let _source = source::start(
        &source,
        writer,
        Some(&cluster),
        metrics.inputs.clone(),
        Duration::from_secs(2),
    )?;
    let cluster = kube_client::bounded(kube_config.clone(), review_deadline);
    let mut reviewer: Arc<dyn TokenReviewer> =
        Arc::new(KubeReviewer::new(kube_config.clone(), review_deadline)?);
    if verify_tokens {
        let keys_client = kube_client::request_client(kube_config, review_deadline)?;
        let keys = IssuerKeys::start(keys_client, KEY_READ_INTERVAL, metrics.issuer.clone());
        reviewer = Arc::new(LocallyVerified::new(keys, reviewer));
    }
    let exchange = Exchange::bind(config, reviewer, cluster, associations, iam, eks, metrics).await?;
    exchange.run(http::termination()).await;
    Ok(())
}

/// A bound exchange server.
pub struct Exchange {
    listener: Listener,
    cce: Option<Arc<CceState>>,
    eks: Option<Arc<EksState>>,
    api: Arc<associations::ApiState>,
    metrics: Arc<ExchangeMetrics>,
    readiness: Arc<Readiness>,
    limits: Limits,
    _cert: Option<ReloadingCert>,
}

impl Exchange {
    /// `cluster` is the API server that stores the associations the association API serves
    /// (calls to it must end in time: `kube_client::bounded`); the exchange reads them with its
    /// credentials, and writes them with each caller's own.
    pub async fn bind(
        config: ExchangeConfig,
        reviewer: Arc<dyn TokenReviewer>,
        cluster: kube::Config,
        associations: Reader,
        iam: Option<Iam>,
        eks: Option<Eks>,
        metrics: Arc<ExchangeMetrics>,
    ) -> Result<Self, StartError> {
        let cert = match &config.cert_dir {
            Some(dir) => Some(ReloadingCert::in_dir(
                dir,
                metrics.inputs.clone(),
                Duration::from_secs(2),
            )?),
            None => None,
        };
        let listener = Listener::bind(config.listen, cert.as_ref().map(ReloadingCert::acceptor)).await?;
        let mut readiness =
            Readiness::default().require_flag(associations.synced(), "associations not synced");
        if let Some(cert) = &cert {
            readiness = readiness.require(cert.valid_now(), "the serving certificate has expired");
        }
        let client =
            kube::Client::try_from(cluster.clone()).map_err(crate::kube_client::ClusterError::from)?;
        let api = Arc::new(associations::ApiState {
            project_id: config.project_id.clone(),
            cluster_id: config.cluster_id.clone(),
            reviewer: reviewer.clone(),
            own: client.clone(),
            as_callers: cluster,
            callers: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            reviews_per_client: KeyedBuckets::new(
                associations::REVIEWS_PER_CLIENT.0,
                associations::REVIEWS_PER_CLIENT.1,
            ),
        });
        let core = Arc::new(Redeemer {
            caller_audience: config.caller_audience,
            agent: config.agent,
            reviewer,
            associations,
            metrics: metrics.clone(),
            budgets: KeyedBuckets::new(config.rate_per_service_account, config.burst_per_service_account),
            callers: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            agent_pods: config
                .agent_daemonset
                .map(|(namespace, name)| redeem::AgentPods::new(client.clone(), namespace, name)),
            agent_pod_checks: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            refusals: SampledLog::new(Duration::from_secs(60), REFUSALS_LOGGED_PER_MINUTE),
        });
        let cce = iam.map(|iam| {
            Arc::new(CceState {
                core: core.clone(),
                project_id: config.project_id,
                cluster_id: config.cluster_id,
                iam,
                issued: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            })
        });
        let eks = eks.map(|eks| Arc::new(EksState { core, eks }));
        Ok(Exchange {
            listener,
            cce,
            eks,
            api,
            metrics,
            readiness: Arc::new(readiness),
            limits: config.limits,
            _cert: cert,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.listener.local_addr(), scheme = self.listener.scheme(), "exchange listening");
        let metrics = self.metrics;
        let serve_metrics = metrics.serve.clone();
        let mut app = Router::new();
        if let Some(cce) = self.cce {
            app = app.merge(
                Router::new()
                    .route(cce_assume_agency::ROUTE, post(cce::assume))
                    .with_state(cce),
            );
        }
        if let Some(eks) = self.eks {
            app = app.merge(
                Router::new()
                    .route(eks::ROUTE, post(eks::assume_role))
                    .with_state(eks),
            );
        }
        let app = app
            .merge(
                Router::new()
                    .route(
                        cce_association::COLLECTION,
                        post(associations::create).get(associations::list),
                    )
                    .route(
                        cce_association::ITEM,
                        get(associations::show)
                            .put(associations::update)
                            .delete(associations::delete),
                    )
                    .with_state(self.api),
            )
            .merge(health::routes(self.readiness.clone(), move || metrics.render()));
        let readiness = self.readiness;
        http::serve(
            self.listener,
            app,
            self.limits,
            serve_metrics,
            shutdown,
            move || readiness.start_draining(),
        )
        .await;
    }
}
