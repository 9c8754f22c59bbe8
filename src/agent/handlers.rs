//! The credential endpoint: `GET`/`POST /v1/credentials` with the pod's token.

use std::sync::Arc;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::cache::{Cache, CacheError};
use super::metrics::{AgentMetrics, Refusal};
use super::token::{self, TokenError};
use crate::http;
use crate::issuer::{IssuerKeys, Verdict};
use crate::log_throttle::Sampled;
use crate::profile::Provider;

/// What every request of the credential endpoint shares.
pub(super) struct AgentState {
    pub(super) provider: Provider,
    pub(super) allowed_hosts: Vec<String>,
    pub(super) cache: Arc<Cache>,
    pub(super) metrics: Arc<AgentMetrics>,
    /// For the log lines any client can cause.
    pub(super) log_budget: Sampled,
    pub(super) issuer: Option<Arc<IssuerKeys>>,
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

async fn credentials(
    State(s): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let resp = answer(&s, peer, &headers).await;
    s.metrics.response(resp.status().as_u16());
    resp
}

/// Longer than any service-account token the API server issues (a few KiB).
const MAX_TOKEN: usize = 16 * 1024;

async fn answer(s: &AgentState, peer: SocketAddr, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !s.allowed_hosts.iter().any(|h| *h == host_name(host)) {
        s.metrics.refused_locally(Refusal::Host);
        return error(
            StatusCode::FORBIDDEN,
            "ForbiddenHost",
            format!(
                "Host {host:?} is not an address of this agent; call it by one of {}",
                s.allowed_hosts.join(", ")
            ),
        );
    }
    let refuse = |reason, status, message: String| {
        s.metrics.refused_locally(reason);
        tracing::debug!(client = %peer.ip(), ?reason, %message, "credential request refused");
        error(status, "InvalidToken", message)
    };
    let token = match token::from_header(headers.get(header::AUTHORIZATION).map(|h| h.as_bytes())) {
        Ok(t) => t,
        Err(e) => return refuse(Refusal::Malformed, StatusCode::BAD_REQUEST, e.to_string()),
    };
    if token.len() > MAX_TOKEN {
        let message = format!("the token is longer than {MAX_TOKEN} bytes: not a service account token");
        return refuse(Refusal::TooLong, StatusCode::BAD_REQUEST, message);
    }
    let claims = match token::claims(token, jiff::Timestamp::now().as_second()) {
        Ok(c) => c,
        Err(e @ TokenError::Expired(_)) => {
            return refuse(Refusal::Expired, StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e) => return refuse(Refusal::Malformed, StatusCode::BAD_REQUEST, e.to_string()),
    };
    // A token for another audience (the pod's API server token, say) must not leave the node.
    let audience = s.provider.profile().audience;
    if !claims.audiences.iter().any(|a| a == audience) {
        let message = format!(
            "the token's audience {:?} does not include {audience}: send the token from the file the injected token-file variable names",
            claims.audiences
        );
        return refuse(Refusal::Audience, StatusCode::UNAUTHORIZED, message);
    }
    // Before the cache: a token the cluster did not sign must not spend an upstream budget.
    if let Some(keys) = &s.issuer
        && let Verdict::Refused(why) = keys
            .verify(token, Some(audience), jiff::Timestamp::now().as_second())
            .await
    {
        let message = format!(
            "{why} (checked against the cluster's service-account keys): send the token from the file the injected token-file variable names"
        );
        return refuse(Refusal::Unverified, StatusCode::UNAUTHORIZED, message);
    }
    match s.cache.get(token, peer.ip()).await {
        Ok(creds) => {
            tracing::debug!(
                unverified_namespace = claims.namespace,
                unverified_service_account = claims.service_account,
                "credentials served"
            );
            http::json(StatusCode::OK, creds.to_body(s.provider))
        }
        Err(e) => {
            let (status, code) = match &e {
                CacheError::RateLimited => {
                    s.metrics.refused_locally(Refusal::Rate);
                    (StatusCode::TOO_MANY_REQUESTS, "RateLimited")
                }
                CacheError::ClientRateLimited => {
                    s.metrics.refused_locally(Refusal::ClientRate);
                    (StatusCode::TOO_MANY_REQUESTS, "RateLimited")
                }
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
            // Any client can cause these at will: logged on a budget, claims marked unverified.
            if let Some(held_back) = s.log_budget.admit() {
                tracing::info!(
                    client = %peer.ip(),
                    unverified_namespace = claims.namespace,
                    unverified_service_account = claims.service_account,
                    status = status.as_u16(),
                    error = %e,
                    held_back,
                    "no credentials"
                );
            }
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
