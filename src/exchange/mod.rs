//! The cluster-side server (`exchange`): seed 000 (assume-agency-for-pod-identity) served by
//! the cluster, for clusters where no cloud provides it. It verifies the pod's token with the
//! Kubernetes TokenReview API, finds the association (the same index as the other programs),
//! obtains temporary credentials for its agency from IAM (seed 003) and answers exactly seed
//! 000's response. This module is its composition root; the handler is in [`assume`].

mod assume;
pub mod iam;
pub mod metrics;
pub mod review;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;

use crate::association::source;
use crate::association::{Reader, store};
use crate::cli::{ArgError, ExchangeArgs, seconds};
use crate::cloud::seed000;
use crate::cluster;
use crate::error::StartError;
use crate::http::health::{self, Readiness};
use crate::http::tls::ReloadingCert;
use crate::http::{self, Limits, Listener};
use iam::{Domain, Iam};
use metrics::ExchangeMetrics;
use review::{KubeReviewer, TokenReviewer};

/// The exchange's listener bounds: a request is a token, a few KiB at most.
pub fn default_limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        body_budget: 16 * 1024 * 1024,
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
}

/// `exchange`: TokenReview through the cluster's API server, associations from the flags'
/// source, IAM with the operator's credentials; serves until SIGTERM or SIGINT.
pub async fn run(args: ExchangeArgs) -> Result<(), StartError> {
    let domain = match (args.domain_id, args.domain_name) {
        (Some(id), _) => Domain::Id(id),
        (None, Some(name)) => Domain::Name(name),
        (None, None) => return Err(ArgError("set --domain-id or --domain-name".into()).into()),
    };
    let iam = Iam::new(
        args.auth.client(2.5)?,
        &args.iam_endpoint,
        args.auth.auth()?,
        domain,
        args.duration,
    )?;
    let source = args.source.source(Some(args.cluster_id.clone()))?;
    let kube_config = cluster::config().await?;
    let cluster = cluster::watch_client(kube_config.clone())?;
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
        listen: args.listen,
        project_id: args.project_id,
        cluster_id: args.cluster_id,
        cert_dir: args.cert_dir,
        limits: args.limits.limits(default_limits())?,
    };
    let review_deadline = seconds("review-timeout", args.review_timeout)?;
    let reviewer = Arc::new(KubeReviewer::new(kube_config, review_deadline)?);
    let exchange = Exchange::bind(config, reviewer, associations, iam, metrics).await?;
    exchange.run(http::termination()).await;
    Ok(())
}

/// A bound exchange server.
pub struct Exchange {
    listener: Listener,
    state: Arc<assume::ExchangeState>,
    readiness: Arc<Readiness>,
    limits: Limits,
    _cert: Option<ReloadingCert>,
}

impl Exchange {
    pub async fn bind(
        config: ExchangeConfig,
        reviewer: Arc<dyn TokenReviewer>,
        associations: Reader,
        iam: Iam,
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
        let state = Arc::new(assume::ExchangeState {
            project_id: config.project_id,
            cluster_id: config.cluster_id,
            reviewer,
            associations,
            iam,
            metrics,
        });
        Ok(Exchange {
            listener,
            state,
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
        let app = Router::new()
            .route(seed000::ROUTE, post(assume::assume))
            .with_state(self.state)
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
