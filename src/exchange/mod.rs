//! The cluster-side server (`exchange`): the CCE assume-agency-for-pod-identity API served by
//! the cluster, for clusters where no cloud provides it. Only the node agents may call it: their
//! own token (`X-Auth-Token`) is reviewed first. It verifies the pod's token with the Kubernetes
//! TokenReview API, redeems it only for the agent on the pod's node, finds the association (the
//! same index as the other programs), obtains temporary credentials for its agency from IAM
//! (temporary credentials through an agency) within a per-service-account budget, and answers
//! exactly the API's response. It also serves the association API family (create, list, show,
//! update, delete) on the `PodIdentityAssociation` objects, for users whom cluster RBAC allows.
//! This module is its composition root; the handlers are in [`assume`] and [`associations`].

mod associations;
mod assume;
pub mod eks;
pub mod iam;
pub mod metrics;
mod refusal;
pub mod review;
pub mod sts;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::association::source;
use crate::association::{Reader, store};
use crate::cli::{ArgError, ExchangeArgs, seconds};
use crate::cloud::{cce_association, cce_assume_agency};
use crate::error::StartError;
use crate::expiring::Expiring;
use crate::http::health::{self, Readiness};
use crate::http::tls::ReloadingCert;
use crate::http::{self, Limits, Listener};
use crate::issuer::{IssuerKeys, KEY_READ_INTERVAL};
use crate::kube_client;
use crate::rate_limit::KeyedBuckets;
use eks::Eks;
use iam::{Domain, Iam};
use metrics::ExchangeMetrics;
use refusal::SampledLog;
use review::{KubeReviewer, LocallyVerified, TokenReviewer};
use sts::Sts;

/// The exchange's listener bounds: a request is a token, a few KiB at most.
pub fn default_limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        body_budget: 16 * 1024 * 1024,
        max_connections_per_client: 64,
        ..Limits::default()
    }
}

pub struct ExchangeConfig {
    pub listen: SocketAddr,
    pub project_id: String,
    pub cluster_id: String,
    /// Directory with `tls.crt` and `tls.key` (reloaded on change) to serve HTTPS; plain HTTP
    /// without it.
    pub cert_dir: Option<PathBuf>,
    pub limits: Limits,
    /// The audience the callers' `X-Auth-Token` is reviewed for.
    pub caller_audience: String,
    /// The only username allowed to call (the agents' service account).
    pub agent: String,
    /// IAM calls per second for one pod service account, and the burst it may save up.
    pub rate_per_service_account: f64,
    pub burst_per_service_account: f64,
    /// How long a reviewed caller and an issued answer are remembered (zero: not at all).
    pub cache_ttl: Duration,
    /// The agents' DaemonSet (namespace, name): a caller's token must be bound to a running
    /// pod of it on the node the token names. `None`: any node-bound token of `agent` is taken.
    pub agent_daemonset: Option<(String, String)>,
}

/// The audience of the agents' tokens (the DaemonSet's projected token) by default.
pub const CALLER_AUDIENCE: &str = "pod-identity-exchange";
/// The agents' service account by default (`manifests/agent`).
pub const AGENT: &str = "system:serviceaccount:pod-identity-agent:pod-identity-agent";
/// The agents' DaemonSet by default (`manifests/agent`, the chart).
pub const AGENT_DAEMONSET: &str = "pod-identity-agent/pod-identity-agent";
/// IAM calls per second and burst per pod service account by default: far above what pods
/// starting and refreshing need, far below what IAM's account-wide throttling tolerates.
pub const RATE_PER_SERVICE_ACCOUNT: f64 = 5.0;
pub const BURST_PER_SERVICE_ACCOUNT: f64 = 50.0;
/// Seconds a review or an answer is remembered by default.
pub const CACHE_TTL: f64 = 60.0;

impl ExchangeConfig {
    /// The defaults of the `exchange` command for the rest, but the agent DaemonSet check,
    /// which the command turns on (`--agent-daemonset`).
    pub fn new(listen: SocketAddr, project_id: &str, cluster_id: &str) -> Self {
        ExchangeConfig {
            listen,
            project_id: project_id.to_owned(),
            cluster_id: cluster_id.to_owned(),
            cert_dir: None,
            limits: default_limits(),
            caller_audience: CALLER_AUDIENCE.to_owned(),
            agent: AGENT.to_owned(),
            rate_per_service_account: RATE_PER_SERVICE_ACCOUNT,
            burst_per_service_account: BURST_PER_SERVICE_ACCOUNT,
            cache_ttl: Duration::from_secs_f64(CACHE_TTL),
            agent_daemonset: None,
        }
    }
}

/// `--cache-ttl` as a duration: at most [`MAX_CACHE_TTL`], so an answer given again from the
/// cache still leaves the agent its margin to refresh before the credentials expire (they
/// live at least 900 s).
fn cache_ttl(s: f64) -> Result<Duration, ArgError> {
    let ttl = seconds("cache-ttl", s)?;
    if ttl > MAX_CACHE_TTL {
        return Err(ArgError(format!(
            "--cache-ttl must be at most {} s, got {s}",
            MAX_CACHE_TTL.as_secs()
        )));
    }
    Ok(ttl)
}

const MAX_CACHE_TTL: Duration = Duration::from_secs(300);

/// `--agent-daemonset NAMESPACE/NAME`, or empty for none.
fn agent_daemonset(s: &str) -> Result<Option<(String, String)>, ArgError> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Some((ns.to_owned(), name.to_owned())))
        }
        _ => Err(ArgError(format!(
            "--agent-daemonset {s:?} must be NAMESPACE/NAME (or empty to accept any node-bound token of --agent-service-account)"
        ))),
    }
}

/// Tokens remembered at most, per cache.
const RECENT_CAPACITY: usize = 10_000;
/// Refusals logged per minute; the rest are counted (and the count logged).
const REFUSALS_LOGGED_PER_MINUTE: u32 = 20;

/// `exchange`: TokenReview through the cluster's API server, associations from the flags'
/// source, IAM with the operator's credentials; serves until SIGTERM or SIGINT.
pub async fn run(args: ExchangeArgs) -> Result<(), StartError> {
    let cache_ttl = cache_ttl(args.cache_ttl)?;
    let iam = cce_backend(&args)?;
    let eks = eks_backend(&args)?;
    if iam.is_none() && eks.is_none() {
        return Err(ArgError(
            "set --cluster-name (EKS Auth AssumeRoleForPodIdentity), or --project-id, --cluster-id, \
             --iam-endpoint and --domain-id (CCE assume-agency-for-pod-identity), or both"
                .into(),
        )
        .into());
    }
    let source = args.source.source(args.cluster_id.clone())?;
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
    let config = ExchangeConfig {
        cert_dir: args.cert_dir,
        limits: args.limits.limits(default_limits())?,
        caller_audience: args.caller_audience,
        agent: args.agent_service_account,
        rate_per_service_account: args.rate_per_service_account,
        burst_per_service_account: args.burst_per_service_account,
        cache_ttl,
        agent_daemonset: agent_daemonset(&args.agent_daemonset)?,
        ..ExchangeConfig::new(
            args.listen,
            args.project_id.as_deref().unwrap_or_default(),
            args.cluster_id.as_deref().unwrap_or_default(),
        )
    };
    let review_deadline = seconds("review-timeout", args.review_timeout)?;
    let cluster = kube_client::bounded(kube_config.clone(), review_deadline);
    let mut reviewer: Arc<dyn TokenReviewer> =
        Arc::new(KubeReviewer::new(kube_config.clone(), review_deadline)?);
    if args.verify_tokens {
        let keys_client = kube_client::request_client(kube_config, review_deadline)?;
        let keys = IssuerKeys::start(keys_client, KEY_READ_INTERVAL, metrics.issuer.clone());
        reviewer = Arc::new(LocallyVerified::new(keys, reviewer));
    }
    let exchange = Exchange::bind(config, reviewer, cluster, associations, iam, eks, metrics).await?;
    exchange.run(http::termination()).await;
    Ok(())
}

/// Seed 000's IAM upstream when any of its flags is given (then all are needed).
fn cce_backend(args: &ExchangeArgs) -> Result<Option<Iam>, StartError> {
    let (project, cluster, endpoint) = (&args.project_id, &args.cluster_id, &args.iam_endpoint);
    let domain = match (&args.domain_id, &args.domain_name) {
        (Some(id), _) => Some(Domain::Id(id.clone())),
        (None, Some(name)) => Some(Domain::Name(name.clone())),
        (None, None) => None,
    };
    let (Some(_), Some(_), Some(endpoint), Some(domain)) = (project, cluster, endpoint, domain) else {
        if project.is_some()
            || cluster.is_some()
            || endpoint.is_some()
            || args.domain_id.is_some()
            || args.domain_name.is_some()
        {
            return Err(ArgError(
                "the CCE assume-agency-for-pod-identity API needs all of --project-id, --cluster-id, --iam-endpoint \
                 and --domain-id or --domain-name"
                    .into(),
            )
            .into());
        }
        return Ok(None);
    };
    let client = args.auth.client(2.5)?;
    Ok(Some(Iam::new(
        client,
        endpoint,
        args.auth.auth()?,
        domain,
        args.duration,
    )?))
}

/// Seed 002's settings when `--cluster-name` is given.
fn eks_backend(args: &ExchangeArgs) -> Result<Option<Eks>, StartError> {
    let Some(cluster_name) = &args.cluster_name else {
        return Ok(None);
    };
    let region = args
        .region
        .clone()
        .ok_or_else(|| ArgError("--cluster-name needs --region (or AWS_REGION)".into()))?;
    let endpoint = args
        .sts_endpoint
        .clone()
        .unwrap_or_else(|| sts::regional_endpoint(&region));
    let sts = Sts::new(args.auth.client(2.5)?, &endpoint, &region, args.duration)?;
    Ok(Some(Eks {
        cluster_name: cluster_name.clone(),
        cluster_arn: args.cluster_arn.clone(),
        region,
        sts,
    }))
}

/// A bound exchange server.
pub struct Exchange {
    listener: Listener,
    state: Arc<assume::ExchangeState>,
    api: Arc<associations::ApiState>,
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
        let state = Arc::new(assume::ExchangeState {
            project_id: config.project_id,
            cluster_id: config.cluster_id,
            caller_audience: config.caller_audience,
            agent: config.agent,
            reviewer,
            associations,
            iam,
            eks,
            metrics,
            budgets: KeyedBuckets::new(config.rate_per_service_account, config.burst_per_service_account),
            callers: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            agent_pods: config
                .agent_daemonset
                .map(|(namespace, name)| assume::AgentPods::new(client.clone(), namespace, name)),
            agent_pod_checks: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            issued: Expiring::new(config.cache_ttl, RECENT_CAPACITY),
            refusals: SampledLog::new(Duration::from_secs(60), REFUSALS_LOGGED_PER_MINUTE),
        });
        Ok(Exchange {
            listener,
            state,
            api,
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
        let metrics = self.state.metrics.clone();
        let serve_metrics = metrics.serve.clone();
        let mut app = Router::new();
        if self.state.iam.is_some() {
            app = app.route(cce_assume_agency::ROUTE, post(assume::assume));
        }
        if self.state.eks.is_some() {
            app = app.route(eks::ROUTE, post(eks::assume_role));
        }
        let app = app
            .with_state(self.state)
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

/// `s` with every character but ASCII letters, digits and `allowed` replaced by `-`: the part
/// of a session name (IAM's or STS's) taken from a cluster or pod name.
fn session_chars(s: &str, allowed: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || allowed.contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_ttl_leaves_the_agent_its_refresh_margin() {
        assert_eq!(cache_ttl(0.0).unwrap(), Duration::ZERO);
        assert_eq!(cache_ttl(300.0).unwrap(), MAX_CACHE_TTL);
        let e = cache_ttl(301.0).unwrap_err().to_string();
        assert!(e.contains("--cache-ttl must be at most 300 s"), "{e}");
        assert!(cache_ttl(-1.0).is_err());
    }
}
