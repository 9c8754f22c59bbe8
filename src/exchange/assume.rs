//! The CCE assume-agency-for-pod-identity API served: `POST .../assume-agency-for-pod-identity`
//! with a pod's token, called by a node's agent with its own token as `X-Auth-Token`.
//!
//! The order of the checks is the order of their cost: the caller first (a cached review, else
//! one TokenReview), then the pod token (a cached issue, else a TokenReview), then the node both
//! tokens are bound to, the association, the service account's budget, and IAM last.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::iam::{self, Iam};
use super::metrics::{ExchangeMetrics, Token};
use super::refusal::{Reason, Refusal, SampledLog, Seen, error_response};
use super::review::{self, Holder, TokenReviewer};
use crate::association::{Association, Reader};
use crate::cloud::cce_assume_agency::{AssumeAgencyRequest, AssumedAgency, Subject};
use crate::cloud::{Credentials, UpstreamError};
use crate::expiring::Expiring;
use crate::http;
use crate::profile::{CCE, Provider};
use crate::rate_limit::{KeyedBuckets, TokenHash};

pub(super) struct ExchangeState {
    pub(super) project_id: String,
    pub(super) cluster_id: String,
    /// The audience the callers' tokens are reviewed for.
    pub(super) caller_audience: String,
    /// The only username allowed to call: the agents' service account.
    pub(super) agent: String,
    pub(super) reviewer: Arc<dyn TokenReviewer>,
    pub(super) associations: Reader,
    /// Seed 000's upstream; `None` when only seed 002 is served (its route is not either).
    pub(super) iam: Option<Iam>,
    /// Seed 002's settings and STS; `None` when it is not served.
    pub(super) eks: Option<super::eks::Eks>,
    pub(super) metrics: Arc<ExchangeMetrics>,
    /// IAM calls per pod service account.
    pub(super) budgets: KeyedBuckets<(String, String)>,
    /// Callers' tokens and what their review said (refusals too, so a replayed bad token
    /// costs one review per TTL).
    pub(super) callers: Expiring<Result<Holder, String>>,
    /// The agents' DaemonSet, whose running pods alone may call.
    pub(super) agent_pods: Option<AgentPods>,
    /// What the DaemonSet check said of a caller's token lately.
    pub(super) agent_pod_checks: Expiring<Result<(), String>>,
    /// Answers issued for pod tokens.
    pub(super) issued: Expiring<Issued>,
    pub(super) refusals: SampledLog,
}

/// An accepted caller: the agent on `node`.
pub(super) struct Caller {
    pub(super) node: String,
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

/// The `X-Auth-Token` header (the cloud API's name for the caller's token).
const AUTH_TOKEN: &str = "x-auth-token";

pub(super) async fn assume(
    State(s): State<Arc<ExchangeState>>,
    Path((project_id, cluster_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = Seen::default();
    let result = answer(&s, &mut seen, &project_id, &cluster_id, &headers, &body).await;
    respond(&s, &seen, result.map(|b| b.to_vec()), refuse)
}

/// The answer, or the refusal counted, logged and put in the API's shape by `refuse`.
pub(super) fn respond(
    s: &ExchangeState,
    seen: &Seen,
    result: Result<Vec<u8>, Refusal>,
    refuse: fn(&Refusal) -> Response,
) -> Response {
    let resp = match result {
        Ok(body) => http::json(StatusCode::OK, body),
        Err(refusal) => {
            s.metrics.refusal(refusal.reason);
            s.refusals.log(&refusal, seen);
            refuse(&refusal)
        }
    };
    s.metrics.response(resp.status().as_u16());
    resp
}

/// The refusal in the cloud API's error shape; a 429 says when to retry.
fn refuse(r: &Refusal) -> Response {
    let mut resp = error_response(r.status, r.code, &r.message);
    if let Some(wait) = r.retry_after {
        let secs = wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

async fn answer(
    s: &ExchangeState,
    seen: &mut Seen,
    project_id: &str,
    cluster_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Bytes, Refusal> {
    let Some(iam) = s
        .iam
        .as_ref()
        .filter(|_| project_id == s.project_id && cluster_id == s.cluster_id)
    else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "CCE.01404001",
            Reason::UnknownCluster,
            format!("cluster {cluster_id} of project {project_id} is not served here"),
        ));
    };
    let caller = authenticate(s, seen, headers).await?;
    let token = pod_token(body)?;
    let hash = TokenHash::of(&token);
    seen.pod_token = Some(hash);
    if let Some(issued) = s.issued.get(&hash) {
        // Given again only while the association stands unchanged, and only to an agent on
        // the same node: another node's agent goes on to be refused below, without evicting
        // the entry.
        let stands = s
            .associations
            .load()
            .get(&issued.namespace, &issued.service_account)
            .is_some_and(|a| a.uid == issued.association_uid && a.target() == issued.agency);
        if !stands {
            s.issued.forget(&hash);
        } else if issued.node == caller.node {
            s.metrics.cache_hit(Token::Pod);
            return Ok(issued.body);
        }
    }
    let pod = redeem(s, seen, &token, CCE.audience, &caller).await?;
    let (namespace, service_account) = (pod.namespace.as_str(), pod.service_account.as_str());
    let (pod_name, node, association) = (pod.pod.as_str(), pod.node.as_str(), &pod.association);
    let Some(agency) = association.agency_name.as_deref() else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "CCE.01400002",
            Reason::NoAgency,
            "the association names a roleArn; this API needs an agencyName",
        ));
    };
    s.budgets
        .take((namespace.to_owned(), service_account.to_owned()))
        .map_err(|wait| rate_limited(namespace, service_account, wait))?;
    let session = iam::session_name(&s.cluster_id, pod_name);
    let result = iam.assume(agency, &session).await;
    s.metrics.iam(result.is_ok());
    let creds = result.map_err(|e| iam_failed(agency, e))?;
    tracing::info!(
        namespace,
        service_account,
        pod = pod_name,
        node,
        agency,
        "agency credentials issued"
    );
    let domain = iam.domain_label();
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

/// A pod's token, reviewed: a service account's, bound to a pod on the caller's node, with an
/// association.
pub(super) struct Pod {
    pub(super) namespace: String,
    pub(super) service_account: String,
    pub(super) pod: String,
    pub(super) pod_uid: Option<String>,
    pub(super) node: String,
    pub(super) association: Arc<Association>,
}

/// Reviews the pod's `token` for `audience` and finds what it may be redeemed for.
pub(super) async fn redeem(
    s: &ExchangeState,
    seen: &mut Seen,
    token: &str,
    audience: &str,
    caller: &Caller,
) -> Result<Pod, Refusal> {
    s.metrics.review(Token::Pod);
    let review = s
        .reviewer
        .review(token, Some(audience))
        .await
        .map_err(unavailable)?;
    let pod = review::holder(review, Some(audience)).map_err(|why| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "CCE.01401001",
            Reason::PodTokenInvalid,
            format!(
                "invalid service account token: not a valid, unexpired token for audience {}",
                audience
            ),
        )
        .detail(why)
    })?;
    seen.subject = Some(pod.username.clone());
    let Some((namespace, service_account)) = pod.service_account() else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "CCE.01401003",
            Reason::PodTokenInvalid,
            "not a service account token",
        ));
    };
    let Some(pod_name) = pod.pod.as_deref() else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "CCE.01401004",
            Reason::NotPodBound,
            "the token is not bound to a pod (use a projected token)",
        ));
    };
    let Some(node) = pod.node.as_deref() else {
        return Err(no_node_binding("the pod's token"));
    };
    if node != caller.node {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "CCE.01403002",
            Reason::OtherNode,
            "the pod's token was issued for a pod on another node than the calling agent's; \
             each node's agent redeems only its own pods' tokens",
        )
        .detail(format!("pod on {node}, agent on {}", caller.node)));
    }
    let association = s
        .associations
        .load()
        .get(namespace, service_account)
        .cloned()
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "CCE.01404002",
                Reason::NoAssociation,
                format!("no pod identity association for {namespace}/{service_account}"),
            )
        })?;
    Ok(Pod {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod: pod_name.to_owned(),
        pod_uid: pod.pod_uid.clone(),
        node: node.to_owned(),
        association,
    })
}

/// The caller's `X-Auth-Token`, reviewed for the exchange's audience: it must be the agents'
/// service account, bound to a node.
pub(super) async fn authenticate(
    s: &ExchangeState,
    seen: &mut Seen,
    headers: &HeaderMap,
) -> Result<Caller, Refusal> {
    let token = auth_token(headers).ok_or_else(|| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "CCE.01401010",
            Reason::NoCallerToken,
            format!(
                "X-Auth-Token is missing: this API serves the node agents, which send their \
                 service-account token (audience {})",
                s.caller_audience
            ),
        )
    })?;
    let hash = TokenHash::of(token);
    seen.caller_token = Some(hash);
    let reviewed = match s.callers.get(&hash) {
        Some(reviewed) => {
            s.metrics.cache_hit(Token::Caller);
            reviewed
        }
        None => {
            s.metrics.review(Token::Caller);
            // A failure to ask is not remembered: only what the API server said.
            let review = s
                .reviewer
                .review(token, Some(&s.caller_audience))
                .await
                .map_err(unavailable)?;
            let reviewed = review::holder(review, Some(&s.caller_audience));
            s.callers.put(hash, reviewed.clone());
            reviewed
        }
    };
    let holder = reviewed.map_err(|why| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "CCE.01401011",
            Reason::CallerInvalid,
            format!(
                "X-Auth-Token is not a valid, unexpired service-account token for audience {}",
                s.caller_audience
            ),
        )
        .detail(why)
    })?;
    seen.caller = Some(holder.username.clone());
    seen.caller_node = holder.node.clone();
    if holder.username != s.agent {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "CCE.01403001",
            Reason::CallerNotAgent,
            format!(
                "X-Auth-Token belongs to {}; only the node agents ({}) may call this API",
                holder.username, s.agent
            ),
        ));
    }
    let node = holder
        .node
        .clone()
        .ok_or_else(|| no_node_binding("the agent's token"))?;
    if let Some(agents) = &s.agent_pods {
        let checked = match s.agent_pod_checks.get(&hash) {
            Some(checked) => checked,
            None => {
                // A failure to ask is not remembered: only what the API server said.
                let checked = agents.check(&holder, &node).await.map_err(|e| {
                    unavailable(review::ReviewError::Failed {
                        what: "reading the agent's pod",
                        source: e,
                    })
                })?;
                s.agent_pod_checks.put(hash, checked.clone());
                checked
            }
        };
        checked.map_err(|why| {
            Refusal::new(
                StatusCode::FORBIDDEN,
                "CCE.01403005",
                Reason::CallerNotAgentPod,
                format!(
                    "X-Auth-Token must be bound to a running pod of the agent DaemonSet {}/{} on node {node}: {why}",
                    agents.namespace, agents.daemonset
                ),
            )
        })?;
    }
    Ok(Caller { node })
}

/// The running pods of the agents' DaemonSet: the only callers, one per node.
pub(super) struct AgentPods {
    namespace: String,
    daemonset: String,
    pods: kube::Api<k8s_openapi::api::core::v1::Pod>,
}

impl AgentPods {
    pub(super) fn new(client: kube::Client, namespace: String, daemonset: String) -> Self {
        AgentPods {
            pods: kube::Api::namespaced(client, &namespace),
            namespace,
            daemonset,
        }
    }

    /// Whether `holder`'s token is bound to a running pod of the DaemonSet on `node`: `Err`
    /// says why not; the outer error is the API server's.
    async fn check(&self, holder: &Holder, node: &str) -> Result<Result<(), String>, kube::Error> {
        let (Some(name), Some(uid)) = (holder.pod.as_deref(), holder.pod_uid.as_deref()) else {
            return Ok(Err(
                "the token is not bound to a pod (a token bound to a node or a secret is not the agent's)"
                    .into(),
            ));
        };
        let Some(pod) = self.pods.get_opt(name).await? else {
            return Ok(Err(format!("its pod {}/{name} does not exist", self.namespace)));
        };
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Ok(Err(format!("its pod {}/{name} was replaced", self.namespace)));
        }
        let owned = pod.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && o.kind == "DaemonSet"
                && o.api_version == "apps/v1"
                && o.name == self.daemonset
        });
        if !owned {
            return Ok(Err(format!(
                "pod {}/{name} is not one of the DaemonSet's",
                self.namespace
            )));
        }
        let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if spec_node != Some(node) {
            return Ok(Err(format!(
                "pod {}/{name} runs on {}, the token names {node}",
                self.namespace,
                spec_node.unwrap_or("no node")
            )));
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Running") {
            return Ok(Err(format!(
                "pod {}/{name} is {}, not Running",
                self.namespace,
                phase.unwrap_or("without a phase")
            )));
        }
        Ok(Ok(()))
    }
}

/// The caller's token: the `X-Auth-Token` header, trimmed, when not empty.
pub(super) fn auth_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTH_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The body's `token`.
fn pod_token(body: &[u8]) -> Result<String, Refusal> {
    let bad = |message: String| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "CCE.01400001",
            Reason::BadRequest,
            message,
        )
    };
    match serde_json::from_slice::<AssumeAgencyRequest>(body) {
        Ok(AssumeAgencyRequest { token: Some(t) }) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(bad("the request body needs a non-empty \"token\"".into())),
        Err(e) => Err(bad(format!(
            "the request body is not a JSON object with a \"token\" string: {e}"
        ))),
    }
}

pub(super) fn no_node_binding(whose: &str) -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "CCE.01403003",
        Reason::NoNodeBinding,
        format!(
            "{whose} names no node: the exchange redeems only node-bound projected tokens \
             (Kubernetes 1.30 or later puts the node into them)"
        ),
    )
}

pub(super) fn unavailable(e: review::ReviewError) -> Refusal {
    let mut r = Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "CCE.01503001",
        Reason::ReviewUnavailable,
        "the exchange cannot verify tokens right now (the Kubernetes API did not answer); retry shortly",
    )
    .detail(e);
    r.retry_after = Some(Duration::from_secs(1));
    r
}

pub(super) fn rate_limited(namespace: &str, service_account: &str, wait: Duration) -> Refusal {
    let mut r = Refusal::new(
        StatusCode::TOO_MANY_REQUESTS,
        "CCE.01429001",
        Reason::RateLimited,
        format!(
            "too many credential requests for {namespace}/{service_account}; retry in {} s",
            wait.as_secs_f64().ceil().max(1.0)
        ),
    );
    r.retry_after = Some(wait);
    r
}

fn iam_failed(agency: &str, e: UpstreamError) -> Refusal {
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
    Refusal::new(status, "CCE.01502001", Reason::Iam, message).detail(e)
}
