//! The credential agent: the endpoint the injected env vars point at. It takes the pod's
//! token from `Authorization`, exchanges it through a backend, caches the result and answers
//! in the shape the provider's SDKs parse.

pub mod backend;
pub mod cache;
pub mod credentials;
pub mod metrics;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::mutation::Provider;
use cache::{Cache, CacheConfig, CacheError};
use credentials::Backend;
use metrics::AgentMetrics;

/// How the agent is set up.
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub provider: Provider,
    /// Host header values (without port) the credential endpoint answers to.
    pub allowed_hosts: Vec<String>,
    pub cache: CacheConfig,
    /// How often the background refresher looks for credentials due for refresh.
    pub refresh_interval: Duration,
}

/// The link-local address the injected endpoint uses, in both address families.
pub const LINK_LOCAL_HOSTS: [&str; 2] = ["169.254.170.23", "fd00:ec2::23"];

impl AgentConfig {
    pub fn new(listen: SocketAddr, admin_listen: SocketAddr, provider: Provider) -> Self {
        let mut allowed_hosts: Vec<String> = LINK_LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
        allowed_hosts.extend([
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            listen.ip().to_string(),
        ]);
        allowed_hosts.dedup();
        AgentConfig {
            listen,
            admin_listen,
            provider,
            allowed_hosts,
            cache: CacheConfig::default(),
            refresh_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct AgentState {
    provider: Provider,
    allowed_hosts: Vec<String>,
    cache: Arc<Cache>,
    metrics: Arc<AgentMetrics>,
    ready: Arc<AtomicBool>,
}

/// A bound agent, ready to run.
pub struct Agent {
    listener: TcpListener,
    admin: TcpListener,
    state: Arc<AgentState>,
    refresh_interval: Duration,
}

impl Agent {
    /// Binds both listeners. `ready` gates `/readyz` (e.g. the association source synced).
    pub async fn bind(
        config: AgentConfig,
        backend: Arc<dyn Backend>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, AgentError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin = bind(config.admin_listen).await?;
        let metrics = Arc::new(AgentMetrics::default());
        let cache = Cache::new(config.cache, backend, metrics.clone());
        let state = Arc::new(AgentState {
            provider: config.provider,
            allowed_hosts: config.allowed_hosts,
            cache,
            metrics,
            ready,
        });
        Ok(Agent {
            listener,
            admin,
            state,
            refresh_interval: config.refresh_interval,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.state.metrics.clone()
    }

    pub fn cache(&self) -> Arc<Cache> {
        self.state.cache.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let refresher = self.state.cache.spawn_refresher(self.refresh_interval);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tracing::info!(addr = %self.local_addr(), admin = %self.admin_addr(), provider = %self.state.provider, "credential agent listening (http)");
        let main =
            axum::serve(self.listener, credential_routes(self.state.clone())).with_graceful_shutdown(stop());
        let admin = axum::serve(self.admin, admin_routes(self.state.clone())).with_graceful_shutdown(stop());
        let signal = async move {
            shutdown.await;
            tracing::info!("agent shutting down");
            let _ = tx.send(true);
        };
        let (a, b, ()) = tokio::join!(main.into_future(), admin.into_future(), signal);
        refresher.abort();
        a.and(b)
    }
}

fn credential_routes(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/v1/credentials", get(credentials).post(credentials))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the credential endpoint is /v1/credentials".into(),
            )
        })
        .with_state(state)
}

/// `/healthz` (the process answers) and `/readyz` (`ready`: the association source synced).
pub fn health_routes<S: Clone + Send + Sync + 'static>(ready: Arc<AtomicBool>) -> Router<S> {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = ready.load(Ordering::Relaxed);
            async move {
                if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: associations not synced\n",
                    )
                }
            }
        }),
    )
}

fn admin_routes(state: Arc<AgentState>) -> Router {
    health_routes(state.ready.clone())
        .route(
            "/metrics",
            get(|State(s): State<Arc<AgentState>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    s.metrics.render(s.cache.len()),
                )
            }),
        )
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({"code": code, "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn credentials(State(s): State<Arc<AgentState>>, headers: HeaderMap) -> Response {
    let resp = answer(&s, &headers).await;
    s.metrics.response(resp.status().as_u16());
    resp
}

async fn answer(s: &AgentState, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !s.allowed_hosts.iter().any(|h| *h == host_name(host)) {
        return error(
            StatusCode::FORBIDDEN,
            "ForbiddenHost",
            format!(
                "Host {host:?} is not an address of this agent; call it by one of {}",
                s.allowed_hosts.join(", ")
            ),
        );
    }
    let token = match token::from_header(headers.get(header::AUTHORIZATION).map(|h| h.as_bytes())) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidToken", e.to_string()),
    };
    let claims = match token::claims(token, jiff::Timestamp::now().as_second()) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidToken", e.to_string()),
    };
    match s.cache.get(token).await {
        Ok(creds) => {
            tracing::debug!(
                namespace = claims.namespace,
                service_account = claims.service_account,
                "credentials served"
            );
            let mut resp = creds.to_body(s.provider).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            let (status, code) = match &e {
                CacheError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "RateLimited"),
                CacheError::ExpiringTooSoon(_) => (StatusCode::BAD_GATEWAY, "ExpiringCredentials"),
                CacheError::Upstream(u) => {
                    let status = StatusCode::from_u16(u.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                    (
                        status,
                        if u.status() < 500 {
                            "UpstreamRefused"
                        } else {
                            "UpstreamUnavailable"
                        },
                    )
                }
            };
            tracing::info!(namespace = claims.namespace, service_account = claims.service_account, status = status.as_u16(), error = %e, "no credentials");
            error(status, code, e.to_string())
        }
    }
}

/// The host part of a Host header (`[::1]:80` → `::1`, `a:80` → `a`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("169.254.170.23"), "169.254.170.23");
        assert_eq!(host_name("169.254.170.23:80"), "169.254.170.23");
        assert_eq!(host_name("[fd00:ec2::23]:80"), "fd00:ec2::23");
        assert_eq!(host_name("localhost:1234"), "localhost");
    }
}
