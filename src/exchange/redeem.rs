//! The exchange's protocol-neutral core, shared by its credential fronts (the CCE
//! assume-agency API and EKS Auth): who the caller is (a node's agent), and what a pod's token
//! may be redeemed for. It refuses with a [`Reason`] and words for the caller; each front puts
//! them in its own API's error shape.
//!
//! The order of the checks is the order of their cost: the caller first (a cached review, else
//! one TokenReview), then the pod token (a TokenReview), then the node both tokens are bound
//! to, the association, and the service account's budget; the fronts call their upstream last.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::metrics::{ExchangeMetrics, Token};
use super::refusal::{Reason, Refusal, Refused, SampledLog, Seen};
use super::review::{self, Holder, TokenReviewer};
use crate::association::{Association, Reader};
use crate::expiring::Expiring;
use crate::http;
use crate::rate_limit::{KeyedBuckets, TokenHash};

/// What every front shares: the callers, the reviewer, the associations and the budgets.
pub(super) struct Redeemer {
    /// The audience the callers' tokens are reviewed for.
    pub(super) caller_audience: String,
    /// The only username allowed to call: the agents' service account.
    pub(super) agent: String,
    pub(super) reviewer: Arc<dyn TokenReviewer>,
    pub(super) associations: Reader,
    pub(super) metrics: Arc<ExchangeMetrics>,
    /// Upstream calls per pod service account, both fronts together.
    pub(super) budgets: KeyedBuckets<(String, String)>,
    /// Callers' tokens and what their review said (refusals too, so a replayed bad token
    /// costs one review per TTL).
    pub(super) callers: Expiring<Result<Holder, String>>,
    /// The agents' DaemonSet, whose running pods alone may call.
    pub(super) agent_pods: Option<AgentPods>,
    /// What the DaemonSet check said of a caller's token lately.
    pub(super) agent_pod_checks: Expiring<Result<(), String>>,
    pub(super) refusals: SampledLog,
}

impl Redeemer {
    /// Takes one upstream call from the service account's budget.
    pub(super) fn spend(&self, namespace: &str, service_account: &str) -> Result<(), Refusal> {
        self.budgets
            .take((namespace.to_owned(), service_account.to_owned()))
            .map_err(|wait| rate_limited(namespace, service_account, wait))
    }
}

/// An accepted caller: the agent on `node`.
pub(super) struct Caller {
    pub(super) node: String,
}

/// The `X-Auth-Token` header (the cloud API's name for the caller's token).
const AUTH_TOKEN: &str = "x-auth-token";

/// The answer, or the front's refusal counted, logged and put in the front's API shape.
pub(super) fn respond<E: Refused>(s: &Redeemer, seen: &Seen, result: Result<Vec<u8>, E>) -> Response {
    let resp = match result {
        Ok(body) => http::json(StatusCode::OK, body),
        Err(refused) => {
            let resp = refused.response();
            let refusal = refused.refusal();
            s.metrics.refusal(refusal.reason);
            s.refusals.log(refusal, resp.status(), seen);
            resp
        }
    };
    s.metrics.response(resp.status().as_u16());
    resp
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
    s: &Redeemer,
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
            Reason::NotServiceAccount,
            "not a service account token",
        ));
    };
    let Some(pod_name) = pod.pod.as_deref() else {
        return Err(Refusal::new(
            Reason::NotPodBound,
            "the token is not bound to a pod (use a projected token)",
        ));
    };
    let Some(node) = pod.node.as_deref() else {
        return Err(no_node_binding("the pod's token"));
    };
    if node != caller.node {
        return Err(Refusal::new(
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
    s: &Redeemer,
    seen: &mut Seen,
    headers: &HeaderMap,
) -> Result<Caller, Refusal> {
    let token = auth_token(headers).ok_or_else(|| {
        Refusal::new(
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
            Refusal::new(Reason::CallerNotAgentPod,
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

pub(super) fn no_node_binding(whose: &str) -> Refusal {
    Refusal::new(
        Reason::NoNodeBinding,
        format!(
            "{whose} names no node: the exchange redeems only node-bound projected tokens \
             (Kubernetes 1.30 or later puts the node into them)"
        ),
    )
}

pub(super) fn unavailable(e: review::ReviewError) -> Refusal {
    Refusal::new(
        Reason::ReviewUnavailable,
        "the exchange cannot verify tokens right now (the Kubernetes API did not answer); retry shortly",
    )
    .detail(e)
    .retry_after(Duration::from_secs(1))
}

fn rate_limited(namespace: &str, service_account: &str, wait: Duration) -> Refusal {
    Refusal::new(
        Reason::RateLimited,
        format!(
            "too many credential requests for {namespace}/{service_account}; retry in {} s",
            wait.as_secs_f64().ceil().max(1.0)
        ),
    )
    .retry_after(wait)
}

/// `s` with every character but ASCII letters, digits and `allowed` replaced by `-`: the part
/// of a session name (IAM's or STS's) taken from a cluster or pod name.
pub(super) fn session_chars(s: &str, allowed: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || allowed.contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}
