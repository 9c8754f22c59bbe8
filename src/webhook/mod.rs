//! The webhook program (`serve`, and `mutate` offline): its composition root. It builds its
//! own certificate, association source, index and metrics, and serves `/mutate` through the
//! shared HTTP stack. The decision itself is in [`decide`]; the wire format in [`wire`].

pub mod args;
mod config;
pub mod decide;
pub mod explain;
pub mod manifest;
pub mod metrics;
pub mod mutation;
pub mod offline;
pub(crate) mod report;
pub(crate) mod selection;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::association::source;
use crate::association::store;
use crate::certs;
use crate::error::StartError;
use crate::http::health::{self, Readiness};
use crate::http::tls::ReloadingCert;
use crate::http::{self, Limits, Listener};
use crate::kube_client;
use args::ServeArgs;
pub use config::{MAX_BODY, ReportSettings, WebhookConfig};
use metrics::{Outcome, WebhookMetrics};
use wire::Admission;

/// `serve`: the webhook until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<(), StartError> {
    let provider = args.injection.provider;
    let config = WebhookConfig::try_from(args)?;
    tracing::info!(
        %provider,
        credentials_uri = %config.injection.settings.credentials_uri,
        token_expiration = config.injection.settings.token_expiration,
        region = config.injection.settings.region.as_deref().unwrap_or("-"),
        "starting pod identity webhook"
    );
    let cluster = match config.source.needs_cluster() {
        true => Some(kube_client::watch_client(kube_client::config().await?)?),
        false => None,
    };
    Webhook::bind(config, cluster)
        .await?
        .run(http::termination())
        .await;
    Ok(())
}

/// Shared by every request.
pub struct AppState {
    admission: Admission,
    pub metrics: Arc<WebhookMetrics>,
    readiness: Arc<Readiness>,
}

/// A bound, loaded webhook, ready to [`run`](Webhook::run).
pub struct Webhook {
    listener: Listener,
    state: Arc<AppState>,
    limits: Limits,
    _cert: ReloadingCert,
    _source: source::Running,
    report: Option<report::Running>,
}

/// How long a stopping webhook waits for the report to release its Lease.
const REPORT_RELEASE: Duration = Duration::from_secs(2);

impl Webhook {
    /// Loads certificates and associations and binds the listener; `cluster` is the API
    /// server to watch associations in (for `AssociationSource::Kubernetes`). Everything that
    /// can be wrong with the configuration fails here, before any request is accepted.
    pub async fn bind(config: WebhookConfig, cluster: Option<kube::Client>) -> Result<Self, StartError> {
        let metrics = Arc::new(WebhookMetrics::default());
        if certs::ensure_local(&config.cert_dir)? {
            tracing::warn!(
                dir = %config.cert_dir.display(),
                "no tls.crt/tls.key found: generated a CA and a localhost serving certificate (ca.crt is the CA to trust)"
            );
        }
        let cert = ReloadingCert::in_dir(&config.cert_dir, metrics.inputs.clone(), config.reload_interval)?;
        let (associations, writer) = store();
        let readiness = Arc::new(
            Readiness::default()
                .require(cert.valid_now(), "the serving certificate has expired")
                .require_flag(associations.synced(), "associations not synced"),
        );
        let running = source::start(
            &config.source,
            writer,
            cluster.as_ref(),
            metrics.inputs.clone(),
            config.reload_interval,
        )?;
        let listener = Listener::bind(config.listen, Some(cert.acceptor())).await?;
        let report = match (config.report, cluster) {
            (Some(settings), Some(client)) => Some(report::start(report::ReportConfig {
                client,
                associations: associations.clone(),
                injection: config.injection.clone(),
                namespace: settings.namespace,
                identity: settings.identity,
                lease_seconds: settings.lease_seconds,
                metrics: metrics.report.clone(),
            })),
            _ => None,
        };
        let state = Arc::new(AppState {
            admission: Admission {
                associations,
                injection: config.injection,
            },
            metrics,
            readiness,
        });
        Ok(Webhook {
            listener,
            state,
            limits: config.limits,
            _cert: cert,
            _source: running,
            report,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, reports not-ready, lets
    /// in-flight requests finish (up to the shutdown limit) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Webhook {
            listener,
            state,
            limits,
            _cert,
            _source,
            report,
        } = self;
        tracing::info!(addr = %listener.local_addr(), "webhook listening (https; h2, http/1.1)");
        let readiness = state.readiness.clone();
        let serve_metrics = state.metrics.serve.clone();
        http::serve(
            listener,
            router(state, limits.max_body),
            limits,
            serve_metrics,
            shutdown,
            move || readiness.start_draining(),
        )
        .await;
        if let Some(report) = report {
            report.stop(REPORT_RELEASE).await;
        }
    }
}

/// The webhook's routes.
fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone())
        .merge(health::routes(state.readiness.clone(), move || metrics.render()))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the webhook serves POST /mutate, GET /healthz, /readyz and /metrics\n",
            )
        })
}

async fn mutate(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let start = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            state.metrics.admission(Outcome::Invalid, start.elapsed());
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body exceeds the {} MiB limit\n", MAX_BODY >> 20)
            } else {
                format!("cannot read the request body: {}\n", rejection.body_text())
            };
            return (status, message).into_response();
        }
    };
    let answer = state.admission.review(&body);
    state.metrics.admission(answer.outcome, start.elapsed());
    let (status, content_type) = if answer.status == 200 {
        (StatusCode::OK, "application/json")
    } else {
        (StatusCode::BAD_REQUEST, "text/plain; charset=utf-8")
    };
    let mut resp = (status, answer.body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::mutation::Injection;
    use super::*;
    use crate::association::Reader;
    use crate::profile::Provider;

    fn state() -> Arc<AppState> {
        let profile = Provider::Cce.profile();
        let injection = Injection::new(
            profile,
            mutation::Settings::new(profile, None, mutation::DEFAULT_TOKEN_EXPIRATION),
        );
        let associations = Reader::fixed(crate::association::Index::default());
        Arc::new(AppState {
            readiness: Arc::new(
                Readiness::default().require_flag(associations.synced(), "associations not synced"),
            ),
            admission: Admission {
                associations,
                injection,
            },
            metrics: Arc::default(),
        })
    }

    async fn call(req: Request<Body>) -> (StatusCode, String, String) {
        let resp = router(state(), MAX_BODY).oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn routes_statuses_and_content_types() {
        let (status, ct, body) = call(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            ct.starts_with("text/plain") && body.contains("POST /mutate"),
            "{ct} {body}"
        );
        let (status, ct, body) = call(Request::post("/mutate").body(Body::from("{")).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            ct.starts_with("text/plain") && body.contains("not an admission.k8s.io/v1"),
            "{body}"
        );
        let (status, ct, _) = call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::OK, crate::metrics::CONTENT_TYPE)
        );
        let big = vec![b' '; MAX_BODY + 1];
        let (status, _, body) = call(Request::post("/mutate").body(Body::from(big)).unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("3 MiB"), "{body}");
    }
}
