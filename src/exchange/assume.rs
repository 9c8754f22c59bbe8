//! Seed 000 served: `POST .../assume-agency-for-pod-identity` with a pod's token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::iam::{self, Iam};
use super::metrics::ExchangeMetrics;
use super::review::TokenReviewer;
use crate::association::Reader;
use crate::cloud::error::CloudError;
use crate::cloud::seed000::{AssumeAgencyRequest, AssumedAgency, Subject};
use crate::cloud::{Credentials, UpstreamError};
use crate::http;
use crate::profile::{CCE, Provider};

pub(super) struct ExchangeState {
    pub(super) project_id: String,
    pub(super) cluster_id: String,
    pub(super) reviewer: Arc<dyn TokenReviewer>,
    pub(super) associations: Reader,
    pub(super) iam: Iam,
    pub(super) metrics: Arc<ExchangeMetrics>,
}

/// An error in the cloud API's shape.
fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = CloudError {
        error_code: code.to_owned(),
        error_msg: message.into(),
    };
    http::json(status, serde_json::to_vec(&body).unwrap_or_default())
}

pub(super) async fn assume(
    State(s): State<Arc<ExchangeState>>,
    Path((project_id, cluster_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let resp = answer(&s, &project_id, &cluster_id, &body).await;
    s.metrics.response(resp.status().as_u16());
    resp
}

async fn answer(s: &ExchangeState, project_id: &str, cluster_id: &str, body: &[u8]) -> Response {
    if project_id != s.project_id || cluster_id != s.cluster_id {
        return fail(
            StatusCode::NOT_FOUND,
            "CCE.01404001",
            format!("cluster {cluster_id} of project {project_id} is not served here"),
        );
    }
    let token = match serde_json::from_slice::<AssumeAgencyRequest>(body) {
        Ok(AssumeAgencyRequest { token: Some(t) }) if !t.trim().is_empty() => t.trim().to_owned(),
        Ok(_) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "CCE.01400001",
                "the request body needs a non-empty \"token\"",
            );
        }
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "CCE.01400001",
                format!("the request body is not a JSON object with a \"token\" string: {e}"),
            );
        }
    };
    s.metrics.review();
    let review = match s.reviewer.review(token, CCE.audience).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "TokenReview unavailable");
            let mut resp = fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "CCE.01503001",
                "the token could not be verified now (the Kubernetes API server is unavailable); retry shortly",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
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
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == CCE.audience)
    {
        return fail(
            StatusCode::UNAUTHORIZED,
            "CCE.01401002",
            format!("the token's audience is not {}", CCE.audience),
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
    let association = match s.associations.load().get(namespace, service_account) {
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
    let result = s.iam.assume(agency, &session).await;
    s.metrics.iam(result.is_ok());
    let creds = match result {
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
        assumed_agency: Some(AssumedAgency {
            urn: format!("sts::{domain}::assumed-agency:{agency}/{session}"),
            id: format!("{domain}:{session}"),
        }),
        association_id: Some(association.uid.clone()),
        subject: Some(Subject {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }),
        ..creds
    };
    http::json(StatusCode::OK, issued.to_body(Provider::Cce))
}
