//! EKS Auth served: `POST /clusters/{clusterName}/assume-role-for-pod-identity` in the
//! REST-JSON protocol of botocore's `eks-auth` model, for clusters outside EKS.
//!
//! Callers authenticate as on the CCE front: the node agent's own service-account token in
//! `X-Auth-Token` (there is no AWS principal to check a SigV4 signature against; a request's
//! `Authorization` header is ignored). The pod's token is reviewed for `pods.eks.amazonaws.com`,
//! must be bound to a pod on the caller's node, and the association's `roleArn` is assumed
//! through STS with the six transitive session tags EKS Pod Identity sets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;

use super::redeem::{Redeemer, authenticate, redeem, respond, session_chars};
use super::refusal::{Reason, Refusal, Refused, Seen};
use super::sts::{self, AssumeRole, Sts};
use crate::cloud::eks_auth::{
    AssumeRoleForPodIdentityRequest, AssumeRoleForPodIdentityResponse, AssumedRoleUser, Credentials,
    PodIdentityAssociation, Subject,
};
use crate::cloud::{UpstreamError, aws};
use crate::http;
use crate::profile::EKS;

/// The route, in axum's syntax.
pub(crate) const ROUTE: &str = "/clusters/{cluster_name}/assume-role-for-pod-identity";

/// What the EKS front needs besides the core.
pub struct Eks {
    pub cluster_name: String,
    /// `eks-cluster-arn`; by default `arn:aws:eks:<region>:<role's account>:cluster/<name>`.
    pub cluster_arn: Option<String>,
    pub region: String,
    pub sts: Sts,
}

impl Eks {
    fn cluster_arn(&self, account: &str) -> String {
        self.cluster_arn.clone().unwrap_or_else(|| {
            format!(
                "arn:aws:eks:{}:{account}:cluster/{}",
                self.region, self.cluster_name
            )
        })
    }
}

/// The EKS front's state.
pub(super) struct EksState {
    pub(super) core: Arc<Redeemer>,
    pub(super) eks: Eks,
}

pub(super) async fn assume_role(
    State(s): State<Arc<EksState>>,
    Path(cluster_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = Seen::default();
    let result = answer(&s, &mut seen, &cluster_name, &headers, &body).await;
    respond(&s.core, &seen, result)
}

/// A refusal as EKS Auth answers it: an exception type, with the status the model gives it.
pub(super) struct EksRefusal {
    kind: &'static str,
    refusal: Refusal,
}

impl EksRefusal {
    fn new(kind: &'static str, refusal: Refusal) -> Self {
        EksRefusal { kind, refusal }
    }
}

impl From<Refusal> for EksRefusal {
    fn from(refusal: Refusal) -> Self {
        EksRefusal::new(eks_error(refusal.reason), refusal)
    }
}

impl Refused for EksRefusal {
    fn refusal(&self) -> &Refusal {
        &self.refusal
    }

    /// REST-JSON: `x-amzn-ErrorType` and `{"__type", "message"}`.
    fn response(&self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "__type")]
            kind: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            kind: self.kind,
            message: &self.refusal.message,
        })
        .unwrap_or_default();
        let mut resp = http::json(status_of(self.kind), body);
        resp.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        resp
    }
}

/// The EKS Auth exception for a reason.
fn eks_error(reason: Reason) -> &'static str {
    match reason {
        Reason::UnknownCluster | Reason::NoAssociation | Reason::NoAgency => "ResourceNotFoundException",
        Reason::BadRequest => "InvalidRequestException",
        Reason::PodTokenInvalid | Reason::NotServiceAccount | Reason::NotPodBound => "InvalidTokenException",
        Reason::NoCallerToken
        | Reason::CallerInvalid
        | Reason::CallerNotAgent
        | Reason::CallerNotAgentPod
        | Reason::NoNodeBinding
        | Reason::OtherNode => "AccessDeniedException",
        Reason::RateLimited => "ThrottlingException",
        Reason::ReviewUnavailable => "ServiceUnavailableException",
        Reason::Iam => "InternalServerException",
    }
}

/// The status botocore's `eks-auth` model gives an exception.
fn status_of(kind: &str) -> StatusCode {
    match kind {
        "ResourceNotFoundException" => StatusCode::NOT_FOUND,
        "ThrottlingException" => StatusCode::TOO_MANY_REQUESTS,
        "ServiceUnavailableException" => StatusCode::SERVICE_UNAVAILABLE,
        "InternalServerException" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn answer(
    s: &EksState,
    seen: &mut Seen,
    cluster_name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, EksRefusal> {
    let (core, eks) = (&s.core, &s.eks);
    if cluster_name != eks.cluster_name {
        return Err(Refusal::new(
            Reason::UnknownCluster,
            format!("cluster {cluster_name} is not served here"),
        )
        .into());
    }
    let caller = authenticate(core, seen, headers).await?;
    let token = match serde_json::from_slice::<AssumeRoleForPodIdentityRequest>(body) {
        Ok(r) if !r.token.trim().is_empty() => r.token.trim().to_owned(),
        _ => {
            return Err(EksRefusal::new(
                "InvalidParameterException",
                Refusal::new(Reason::BadRequest, "the request body needs a non-empty \"token\""),
            ));
        }
    };
    seen.pod_token = Some(crate::rate_limit::TokenHash::of(&token));
    let pod = redeem(core, seen, &token, EKS.audience, &caller).await?;
    let (namespace, service_account) = (pod.namespace.as_str(), pod.service_account.as_str());
    let (pod_name, node, association) = (pod.pod.as_str(), pod.node.as_str(), &pod.association);
    let Some(role_arn) = association.role_arn.as_deref() else {
        return Err(Refusal::new(
            Reason::NoAgency,
            format!("the association for {namespace}/{service_account} names no roleArn"),
        )
        .into());
    };
    core.spend(namespace, service_account)?;
    let account = role_arn.split(':').nth(4).unwrap_or_default();
    let cluster_arn = eks.cluster_arn(account);
    let session = session_name(&eks.cluster_name, pod_name, &random_suffix());
    let pod_uid = pod.pod_uid.clone().unwrap_or_default();
    let tags = match association.disable_session_tags {
        true => Vec::new(),
        false => vec![
            ("eks-cluster-arn", cluster_arn),
            ("eks-cluster-name", eks.cluster_name.clone()),
            ("kubernetes-namespace", namespace.to_owned()),
            ("kubernetes-service-account", service_account.to_owned()),
            ("kubernetes-pod-name", pod_name.to_owned()),
            ("kubernetes-pod-uid", pod_uid),
        ],
    };
    let target = association.target_role_arn.as_deref();
    let first = AssumeRole {
        role_arn,
        session_name: &session,
        tags,
        // The session policy limits the credentials the pod gets: those of the last hop.
        policy: association.policy.as_deref().filter(|_| target.is_none()),
        external_id: None,
    };
    let result = eks.sts.assume(&first, None).await;
    core.metrics.iam(result.is_ok());
    let mut assumed = result.map_err(|e| sts_failed(role_arn, e))?;
    if let Some(target) = target {
        // Role chaining: the tags are transitive, so they carry over without being sent again.
        let chained = AssumeRole {
            role_arn: target,
            session_name: &session,
            tags: Vec::new(),
            policy: association.policy.as_deref(),
            external_id: association.external_id.as_deref(),
        };
        let result = eks.sts.assume(&chained, Some(&assumed.credentials)).await;
        core.metrics.iam(result.is_ok());
        assumed = result.map_err(|e| sts_failed(target, e))?;
    }
    tracing::info!(
        namespace,
        service_account,
        pod = pod_name,
        node,
        role_arn,
        "role credentials issued"
    );
    let c = &assumed.credentials;
    let response = AssumeRoleForPodIdentityResponse {
        subject: Subject {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        },
        audience: EKS.audience.to_owned(),
        pod_identity_association: PodIdentityAssociation {
            association_arn: format!(
                "arn:aws:eks:{}:{account}:podidentityassociation/{}/{}",
                eks.region, eks.cluster_name, association.uid
            ),
            association_id: association.uid.clone(),
        },
        assumed_role_user: AssumedRoleUser {
            arn: assumed.arn.clone(),
            assume_role_id: assumed.assumed_role_id.clone(),
        },
        credentials: Credentials {
            session_token: c.security_token.clone(),
            secret_access_key: c.secret_access_key.clone(),
            access_key_id: c.access_key_id.clone(),
            expiration: c.expiration.as_second() as f64,
        },
    };
    Ok(serde_json::to_vec(&response).unwrap_or_default())
}

/// What STS's refusal means for the caller: STS's own refusals (`AccessDenied`, a malformed
/// policy, ...) are the association's fault; anything else is transient.
fn sts_failed(role_arn: &str, e: UpstreamError) -> EksRefusal {
    let (code, message) = match (&e, sts::error_code(&e)) {
        (UpstreamError::Refused { status, .. }, Some(code)) if *status < 500 && code != "Throttling" => (
            "AccessDeniedException",
            format!(
                "STS refused to assume {role_arn} ({code}): check that the role trusts \
                 pods.eks.amazonaws.com for sts:AssumeRole and sts:TagSession"
            ),
        ),
        (UpstreamError::Refused { status: 429, .. }, _) | (_, Some(_)) => (
            "ThrottlingException",
            "STS is throttling; retry shortly".to_owned(),
        ),
        // What to set is no secret, and the agent passes it on to whoever reads the SDK's error.
        (UpstreamError::Local(_), _) => (
            "InternalServerException",
            format!(
                "the exchange has no usable AWS credentials (its log says why): {}",
                aws::CONFIGURE
            ),
        ),
        _ => (
            "ServiceUnavailableException",
            "STS could not be reached or failed; retry shortly".to_owned(),
        ),
    };
    EksRefusal::new(code, Refusal::new(Reason::Iam, message).detail(e))
}

/// Eight random hex digits: sessions of one pod differ.
fn random_suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// `eks-<cluster>-<pod>-<random>` within STS's 64 characters: the cluster gives way first
/// (down to 16 characters), then the pod's tail, so the pod stays recognisable.
pub(crate) fn session_name(cluster: &str, pod: &str, random: &str) -> String {
    const MAX: usize = 64;
    let room = MAX.saturating_sub("eks---".len() + random.len());
    // The characters STS allows in a role session name.
    let clean = |s: &str| session_chars(s, "+=,.@_-");
    let (cluster, pod) = (clean(cluster), clean(pod));
    let cluster_len = cluster.len().min(room.saturating_sub(pod.len()).max(16));
    let pod_len = pod.len().min(room - cluster_len);
    format!("eks-{}-{}-{random}", &cluster[..cluster_len], &pod[..pod_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_and_keep_the_pod() {
        assert_eq!(
            session_name("c", "web-7f9c", "0a1b2c3d"),
            "eks-c-web-7f9c-0a1b2c3d"
        );
        let long = session_name(&"k".repeat(100), &"p".repeat(100), "0a1b2c3d");
        assert_eq!(long.len(), 64);
        assert!(long.starts_with(&format!("eks-{}-ppp", "k".repeat(16))), "{long}");
        let pod = "payments-api-5d8f7c9b6-x2x7q";
        let name = session_name(&"cluster".repeat(8), pod, "0a1b2c3d");
        assert!(name.len() <= 64 && name.contains(pod), "{name}");
    }

    #[test]
    fn refusals_take_the_status_botocore_expects() {
        let answer = |r: EksRefusal| (r.response().status(), r.kind);
        let r = |reason| EksRefusal::from(Refusal::new(reason, "m"));
        assert_eq!(
            answer(r(Reason::NoAssociation)),
            (StatusCode::NOT_FOUND, "ResourceNotFoundException")
        );
        assert_eq!(
            answer(r(Reason::PodTokenInvalid)),
            (StatusCode::BAD_REQUEST, "InvalidTokenException")
        );
        assert_eq!(
            answer(r(Reason::RateLimited)),
            (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException")
        );
        let sts = EksRefusal::new("AccessDeniedException", Refusal::new(Reason::Iam, "m"));
        assert_eq!(answer(sts), (StatusCode::BAD_REQUEST, "AccessDeniedException"));
    }
}
