//! The CCE assume-agency-for-pod-identity API served: `POST .../assume-agency-for-pod-identity`
//! with a pod's token, called by a node's agent with its own token as `X-Auth-Token`. The
//! checks are the core's ([`super::redeem`]); this front adds the answers it remembers, IAM,
//! and the API's shapes (the response, and the error codes of each refusal).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::iam::{self, Iam};
use super::metrics::Token;
use super::redeem::{Redeemer, authenticate, redeem, respond};
use super::refusal::{Reason, Refusal, Refused, Seen, error_response};
use crate::cloud::cce_assume_agency::{AssumeAgencyRequest, AssumedAgency, Subject};
use crate::cloud::{Credentials, UpstreamError};
use crate::expiring::Expiring;
use crate::profile::{CCE, Provider};
use crate::rate_limit::TokenHash;

/// The CCE front's state: the core, the cluster it answers for, IAM, and its answers.
pub(super) struct CceState {
    pub(super) core: Arc<Redeemer>,
    pub(super) project_id: String,
    pub(super) cluster_id: String,
    pub(super) iam: Iam,
    /// Answers issued for pod tokens.
    pub(super) issued: Expiring<Issued>,
}

/// An answer given for a pod token, and what it may be given again for.
#[derive(Clone)]
pub(super) struct Issued {
    node: String,
    namespace: String,
    service_account: String,
    association_uid: String,
    /// The agency it was issued for: an association edited to another is a new answer.
    agency: String,
    body: Bytes,
}

pub(super) async fn assume(
    State(s): State<Arc<CceState>>,
    Path((project_id, cluster_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = Seen::default();
    let result = answer(&s, &mut seen, &project_id, &cluster_id, &headers, &body).await;
    respond(&s.core, &seen, result.map(|b| b.to_vec()))
}

/// A refusal in the API's error shape `{"error_code","error_msg"}`.
pub(super) struct CceRefusal {
    status: StatusCode,
    code: &'static str,
    refusal: Refusal,
}

impl From<Refusal> for CceRefusal {
    fn from(refusal: Refusal) -> Self {
        let (status, code) = cce_error(refusal.reason);
        CceRefusal {
            status,
            code,
            refusal,
        }
    }
}

impl Refused for CceRefusal {
    fn refusal(&self) -> &Refusal {
        &self.refusal
    }

    /// A 429 or 503 says when to retry.
    fn response(&self) -> Response {
        let mut resp = error_response(self.status, self.code, &self.refusal.message);
        if let Some(wait) = self.refusal.retry_after {
            let secs = wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The API's status and `error_code` for each reason.
fn cce_error(reason: Reason) -> (StatusCode, &'static str) {
    match reason {
        Reason::UnknownCluster => (StatusCode::NOT_FOUND, "CCE.01404001"),
        Reason::BadRequest => (StatusCode::BAD_REQUEST, "CCE.01400001"),
        Reason::NoAgency => (StatusCode::BAD_REQUEST, "CCE.01400002"),
        Reason::PodTokenInvalid => (StatusCode::UNAUTHORIZED, "CCE.01401001"),
        Reason::NotServiceAccount => (StatusCode::UNAUTHORIZED, "CCE.01401003"),
        Reason::NotPodBound => (StatusCode::UNAUTHORIZED, "CCE.01401004"),
        Reason::NoCallerToken => (StatusCode::UNAUTHORIZED, "CCE.01401010"),
        Reason::CallerInvalid => (StatusCode::UNAUTHORIZED, "CCE.01401011"),
        Reason::CallerNotAgent => (StatusCode::FORBIDDEN, "CCE.01403001"),
        Reason::OtherNode => (StatusCode::FORBIDDEN, "CCE.01403002"),
        Reason::NoNodeBinding => (StatusCode::FORBIDDEN, "CCE.01403003"),
        Reason::CallerNotAgentPod => (StatusCode::FORBIDDEN, "CCE.01403005"),
        Reason::NoAssociation => (StatusCode::NOT_FOUND, "CCE.01404002"),
        Reason::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "CCE.01429001"),
        Reason::ReviewUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "CCE.01503001"),
        Reason::Iam => (StatusCode::BAD_GATEWAY, "CCE.01502001"),
    }
}

async fn answer(
    s: &CceState,
    seen: &mut Seen,
    project_id: &str,
    cluster_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Bytes, CceRefusal> {
    if project_id != s.project_id || cluster_id != s.cluster_id {
        return Err(CceRefusal::from(Refusal::new(
            Reason::UnknownCluster,
            format!("cluster {cluster_id} of project {project_id} is not served here"),
        )));
    }
    let core = &s.core;
    let caller = authenticate(core, seen, headers).await?;
    let token = pod_token(body)?;
    let hash = TokenHash::of(&token);
    seen.pod_token = Some(hash);
    if let Some(issued) = s.issued.get(&hash) {
        // Given again only while the association stands unchanged, and only to an agent on
        // the same node: another node's agent goes on to be refused below, without evicting
        // the entry.
        let stands = s
            .core
            .associations
            .load()
            .get(&issued.namespace, &issued.service_account)
            .is_some_and(|a| a.uid == issued.association_uid && a.target() == issued.agency);
        if !stands {
            s.issued.forget(&hash);
        } else if issued.node == caller.node {
            core.metrics.cache_hit(Token::Pod);
            return Ok(issued.body);
        }
    }
    let pod = redeem(core, seen, &token, CCE.audience, &caller).await?;
    let (namespace, service_account) = (pod.namespace.as_str(), pod.service_account.as_str());
    let (pod_name, node, association) = (pod.pod.as_str(), pod.node.as_str(), &pod.association);
    let Some(agency) = association.agency_name.as_deref() else {
        return Err(Refusal::new(
            Reason::NoAgency,
            "the association names a roleArn; this API needs an agencyName",
        )
        .into());
    };
    core.spend(namespace, service_account)?;
    let session = iam::session_name(&s.cluster_id, pod_name);
    let result = s.iam.assume(agency, &session).await;
    core.metrics.iam(result.is_ok());
    let creds = result.map_err(|e| iam_failed(agency, e))?;
    tracing::info!(
        namespace,
        service_account,
        pod = pod_name,
        node,
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
    let body = Bytes::from(issued.to_body(Provider::Cce));
    s.issued.put(
        hash,
        Issued {
            node: caller.node,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            association_uid: association.uid.clone(),
            agency: agency.to_owned(),
            body: body.clone(),
        },
    );
    Ok(body)
}

/// The body's `token`.
fn pod_token(body: &[u8]) -> Result<String, Refusal> {
    let bad = |message: String| Refusal::new(Reason::BadRequest, message);
    match serde_json::from_slice::<AssumeAgencyRequest>(body) {
        Ok(AssumeAgencyRequest { token: Some(t) }) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(bad("the request body needs a non-empty \"token\"".into())),
        Err(e) => Err(bad(format!(
            "the request body is not a JSON object with a \"token\" string: {e}"
        ))),
    }
}

fn iam_failed(agency: &str, e: UpstreamError) -> CceRefusal {
    let (status, message) = match &e {
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "IAM did not answer in time; retry shortly".to_owned(),
        ),
        UpstreamError::Refused { status, .. } if *status < 500 => (
            StatusCode::BAD_GATEWAY,
            format!(
                "IAM refused credentials for agency {agency}: check that the agency exists and \
                 trusts the exchange's operator (the exchange's log has IAM's answer)"
            ),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "IAM could not be reached or failed; retry shortly (the exchange's log has the cause)".to_owned(),
        ),
    };
    CceRefusal {
        status,
        code: "CCE.01502001",
        refusal: Refusal::new(Reason::Iam, message).detail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers tell refusals apart by `error_code`: each reason has its own.
    #[test]
    fn every_reason_has_its_own_error_code() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| cce_error(*r).1).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len(), "{codes:?}");
        assert_eq!(
            cce_error(Reason::NotServiceAccount),
            (StatusCode::UNAUTHORIZED, "CCE.01401003")
        );
    }
}
