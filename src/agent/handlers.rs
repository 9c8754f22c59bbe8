//! The credential endpoint: `GET`/`POST /v1/credentials` with the pod's token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::cache::{Cache, CacheError};
use super::metrics::AgentMetrics;
use super::token;
use crate::http;
use crate::profile::Provider;

/// What every request of the credential endpoint shares.
pub(super) struct AgentState {
    pub(super) provider: Provider,
    pub(super) allowed_hosts: Vec<String>,
    pub(super) cache: Arc<Cache>,
    pub(super) metrics: Arc<AgentMetrics>,
}

/// The agent's error body.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

pub(super) fn routes(state: Arc<AgentState>) -> Router {
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

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody { code, message }).unwrap_or_default();
    http::json(status, body)
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
            http::json(StatusCode::OK, creds.to_body(s.provider))
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
