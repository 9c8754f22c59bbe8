//! Verifying tokens with the Kubernetes TokenReview API, within a deadline; and what a review
//! says about the token's holder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use crate::issuer::{IssuerKeys, Verdict};
use crate::kube_client::{self, ClusterError};

/// The API server could not be asked, or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{what} failed: {source}")]
    Failed { what: &'static str, source: kube::Error },
    #[error("{what} got no answer within {deadline:?}")]
    Timeout { what: &'static str, deadline: Duration },
}

/// Verifies tokens for an audience (`None`: the API server's own, as for `kubectl`). Every
/// review the exchange makes goes through this trait.
pub trait TokenReviewer: Send + Sync {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>>;
}

/// TokenReview through the Kubernetes API: every review ends within `deadline`, with at most
/// one retry inside it when the API server is overloaded or unreachable.
pub struct KubeReviewer {
    client: kube::Client,
    deadline: Duration,
}

impl KubeReviewer {
    pub fn new(config: kube::Config, deadline: Duration) -> Result<Self, ClusterError> {
        Ok(KubeReviewer {
            client: kube_client::request_client(config, deadline)?,
            deadline,
        })
    }

    /// `call`, retried once inside the deadline when the API server is overloaded or unreachable.
    async fn within<T, F: Future<Output = Result<T, kube::Error>>>(
        &self,
        what: &'static str,
        call: impl Fn() -> F,
    ) -> Result<T, ReviewError> {
        let attempts = async {
            match call().await {
                Err(e) if retryable(&e) => {
                    tracing::debug!(error = %e, "{what} failed; retrying once");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    call().await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.deadline, attempts).await {
            Ok(result) => result.map_err(|source| ReviewError::Failed { what, source }),
            Err(_) => Err(ReviewError::Timeout {
                what,
                deadline: self.deadline,
            }),
        }
    }
}

/// TokenReview behind the local check of the cluster's signing keys: a token that fails it is
/// answered "not authenticated" at once, with no request to the API server; one that passes
/// (or is not for the local check to judge) is reviewed as before.
pub struct LocallyVerified {
    keys: Arc<IssuerKeys>,
    inner: Arc<dyn TokenReviewer>,
}

impl LocallyVerified {
    pub fn new(keys: Arc<IssuerKeys>, inner: Arc<dyn TokenReviewer>) -> Self {
        LocallyVerified { keys, inner }
    }
}

impl TokenReviewer for LocallyVerified {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        Box::pin(async move {
            match self
                .keys
                .verify(token, audience, jiff::Timestamp::now().as_second())
                .await
            {
                Verdict::Refused(why) => Ok(TokenReview {
                    status: Some(TokenReviewStatus {
                        authenticated: Some(false),
                        error: Some(format!("refused before TokenReview: {why}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                Verdict::Valid | Verdict::NotChecked => self.inner.review(token, audience).await,
            }
        })
    }
}

/// Worth one more try: the API server said it is overloaded or unavailable, or was not reached.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => matches!(status.code, 429 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: audience.map(|a| vec![a.to_owned()]),
                },
                ..Default::default()
            };
            let api = Api::<TokenReview>::all(self.client.clone());
            let params = PostParams::default();
            self.within("TokenReview", || api.create(&params, &review)).await
        })
    }
}

/// The `user.extra` key naming the pod a projected token is bound to.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `user.extra` key naming the node of that pod (Kubernetes 1.30+, where the API server
/// puts the node into projected tokens).
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The `user.extra` key with the uid of that pod.
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Who holds an authenticated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub(crate) username: String,
    pub(crate) pod: Option<String>,
    pub(crate) pod_uid: Option<String>,
    pub(crate) node: Option<String>,
}

impl Holder {
    /// The user's name, as RBAC names it.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Namespace and name, when the holder is a service account.
    pub(crate) fn service_account(&self) -> Option<(&str, &str)> {
        self.username
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
    }
}

/// The holder of a token the API server authenticated for `audience` (`None`: its own), or
/// the API server's reason for refusing it (for the log: it is the API server's wording, not
/// ours).
pub(crate) fn holder(review: TokenReview, audience: Option<&str>) -> Result<Holder, String> {
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(status.error.unwrap_or_else(|| "not authenticated".into()));
    }
    if let Some(audience) = audience
        && !status.audiences.unwrap_or_default().iter().any(|a| a == audience)
    {
        return Err(format!("authenticated, but not for audience {audience}"));
    }
    let user = status.user.unwrap_or_default();
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first().cloned());
    Ok(Holder {
        pod: first(POD_NAME),
        pod_uid: first(POD_UID),
        node: first(NODE_NAME),
        username: user.username.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(v: serde_json::Value) -> TokenReview {
        serde_json::from_value(serde_json::json!({"spec": {}, "status": v})).unwrap()
    }

    #[test]
    fn reads_the_holder_of_an_authenticated_token() {
        let r = review(serde_json::json!({
            "authenticated": true, "audiences": ["a"],
            "user": {"username": "system:serviceaccount:ns:sa", "extra": {
                "authentication.kubernetes.io/pod-name": ["p"],
                "authentication.kubernetes.io/node-name": ["n"]}}}));
        let h = holder(r, Some("a")).unwrap();
        assert_eq!(h.service_account(), Some(("ns", "sa")));
        assert_eq!((h.pod.as_deref(), h.node.as_deref()), (Some("p"), Some("n")));
        let plain = review(
            serde_json::json!({"authenticated": true, "audiences": ["a"], "user": {"username": "alice"}}),
        );
        let h = holder(plain, Some("a")).unwrap();
        assert_eq!(h.service_account(), None);
        assert_eq!((h.pod, h.node), (None, None));
    }

    #[test]
    fn refuses_what_the_api_server_refused_or_another_audience() {
        let r = review(serde_json::json!({"authenticated": false, "error": "token expired"}));
        assert_eq!(holder(r, Some("a")).unwrap_err(), "token expired");
        let r =
            review(serde_json::json!({"authenticated": true, "audiences": ["b"], "user": {"username": "x"}}));
        assert!(
            holder(r.clone(), Some("a"))
                .unwrap_err()
                .contains("not for audience a")
        );
        // Without an audience the API server's own decided: its answer stands.
        assert_eq!(holder(r, None).unwrap().username, "x");
    }
}
