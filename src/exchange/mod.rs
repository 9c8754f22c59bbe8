//! The exchange: a cluster-side implementation of seed 000 (assume-agency-for-pod-identity)
//! for clusters where no cloud provides it. It verifies the pod's token with the Kubernetes
//! TokenReview API, finds the association (same index as the webhook), obtains temporary
//! credentials for its agency from IAM (seed 003) and answers exactly seed 000's response.

pub mod iam;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::net::TcpListener;

use crate::agent::credentials::{Credentials, UpstreamError};
use crate::association::Store;
use crate::metrics::Metrics;
use crate::server::tls::{self, ReloadingCert};
use crate::server::{Timeouts, serve_https};
use iam::Iam;
use std::time::Duration;

/// The audience pod tokens must carry for this API.
pub const AUDIENCE: &str = "service.cce.pods";

/// Verifies service-account tokens.
pub trait TokenReviewer: Send + Sync {
    fn review(&self, token: String) -> futures::future::BoxFuture<'_, Result<TokenReview, String>>;
}

/// TokenReview through the Kubernetes API.
pub struct KubeReviewer(pub kube::Client);

impl TokenReviewer for KubeReviewer {
    fn review(&self, token: String) -> futures::future::BoxFuture<'_, Result<TokenReview, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec![AUDIENCE.to_owned()]),
                },
                ..Default::default()
            };
            Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview failed: {e}"))
        })
    }
}

pub struct ExchangeConfig {
    pub listen: SocketAddr,
    pub project_id: String,
    pub cluster_id: String,
    /// Directory with `tls.crt` and `tls.key` (reloaded on change) to serve HTTPS; plain HTTP
    /// without it.
    pub cert_dir: Option<std::path::PathBuf>,
}

struct ExchangeState {
    project_id: String,
    cluster_id: String,
    reviewer: Arc<dyn TokenReviewer>,
    store: Arc<Store>,
    synced: Arc<AtomicBool>,
    iam: Iam,
}

/// A bound exchange server.
pub struct Exchange {
    listener: TcpListener,
    state: Arc<ExchangeState>,
    tls: Option<(tokio_rustls::TlsAcceptor, ReloadingCert)>,
}

impl Exchange {
    pub async fn bind(
        config: ExchangeConfig,
        reviewer: Arc<dyn TokenReviewer>,
        store: Arc<Store>,
        synced: Arc<AtomicBool>,
        iam: Iam,
    ) -> Result<Self, ExchangeError> {
        let tls = match &config.cert_dir {
            Some(dir) => {
                tls::install_crypto_provider();
                let cert = ReloadingCert::in_dir(dir, Arc::new(Metrics::default()), Duration::from_secs(2))?;
                Some((cert.acceptor(), cert))
            }
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ExchangeError::Bind {
                addr: config.listen,
                source,
            })?;
        let state = Arc::new(ExchangeState {
            project_id: config.project_id,
            cluster_id: config.cluster_id,
            reviewer,
            store,
            synced,
            iam,
        });
        Ok(Exchange { listener, state, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let app = Router::new()
            .route(
                "/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity",
                post(assume),
            )
            .merge(crate::agent::health_routes(self.state.synced.clone()))
            .with_state(self.state);
        match self.tls {
            Some((acceptor, _cert)) => {
                tracing::info!(addr = %self.listener.local_addr()?, "exchange listening (https)");
                let timeouts = Timeouts {
                    header_read: Duration::from_secs(10),
                    shutdown: Duration::from_secs(25),
                };
                serve_https(self.listener, acceptor, app, timeouts, shutdown, || {}).await;
                Ok(())
            }
            None => {
                tracing::info!(addr = %self.listener.local_addr()?, "exchange listening (http)");
                axum::serve(self.listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// An error in the cloud API's shape.
fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error_code": code, "error_msg": message.into()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn assume(
    State(s): State<Arc<ExchangeState>>,
    Path((project_id, cluster_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if project_id != s.project_id || cluster_id != s.cluster_id {
        return fail(
            StatusCode::NOT_FOUND,
            "CCE.01404001",
            format!("cluster {cluster_id} of project {project_id} is not served here"),
        );
    }
    let token = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => match v["token"].as_str().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "CCE.01400001",
                    "the request body needs a non-empty \"token\"",
                );
            }
        },
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "CCE.01400001",
                format!("the request body is not JSON: {e}"),
            );
        }
    };
    let review = match s.reviewer.review(token).await {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, "CCE.01503001", e),
    };
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "token not authenticated".into());
        return fail(
            StatusCode::UNAUTHORIZED,
            "CCE.01401001",
            format!("invalid service account token: {why}"),
        );
    }
    if !status.audiences.unwrap_or_default().iter().any(|a| a == AUDIENCE) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "CCE.01401002",
            format!("the token's audience is not {AUDIENCE}"),
        );
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return fail(
            StatusCode::UNAUTHORIZED,
            "CCE.01401003",
            "not a service account token",
        );
    };
    let extra = user.extra.unwrap_or_default();
    let Some(pod) = extra
        .get("authentication.kubernetes.io/pod-name")
        .and_then(|v| v.first())
        .cloned()
    else {
        return fail(
            StatusCode::UNAUTHORIZED,
            "CCE.01401004",
            "the token is not bound to a pod (use a projected token)",
        );
    };
    let association = match s.store.load().get(namespace, service_account) {
        Some(a) => a.clone(),
        None => {
            return fail(
                StatusCode::NOT_FOUND,
                "CCE.01404002",
                format!("no pod identity association for {namespace}/{service_account}"),
            );
        }
    };
    let Some(agency) = association.agency_name.as_deref() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "CCE.01400002",
            "the association names a roleArn; this API needs an agencyName",
        );
    };
    let session = iam::session_name(&s.cluster_id, &pod);
    let creds = match s.iam.assume(agency, &session).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(namespace, service_account, error = %e, "IAM refused or failed");
            let status = match &e {
                UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            return fail(status, "CCE.01502001", format!("IAM: {e}"));
        }
    };
    tracing::info!(
        namespace,
        service_account,
        pod,
        agency,
        "agency credentials issued"
    );
    let domain = s.iam.domain_label();
    let issued = Credentials {
        assumed_agency: Some((
            format!("sts::{domain}::assumed-agency:{agency}/{session}"),
            format!("{domain}:{session}"),
        )),
        association_id: Some(association.uid.clone()),
        subject: Some((namespace.to_owned(), service_account.to_owned())),
        ..creds
    };
    let mut resp = issued.to_body(crate::mutation::Provider::Cce).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
