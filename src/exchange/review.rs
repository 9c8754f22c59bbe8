//! Verifying a service-account token with the Kubernetes TokenReview API, within a deadline.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::cluster::{self, ClusterError};

/// The API server could not be asked, or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    Failed(#[from] kube::Error),
    #[error("TokenReview got no answer within {0:?}")]
    Timeout(Duration),
}

/// Verifies service-account tokens for an audience.
pub trait TokenReviewer: Send + Sync {
    fn review(
        &self,
        token: String,
        audience: &'static str,
    ) -> BoxFuture<'_, Result<TokenReview, ReviewError>>;
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
            client: cluster::request_client(config, deadline)?,
            deadline,
        })
    }

    async fn once(&self, review: &TokenReview) -> Result<TokenReview, kube::Error> {
        Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), review)
            .await
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
    fn review(
        &self,
        token: String,
        audience: &'static str,
    ) -> BoxFuture<'_, Result<TokenReview, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec![audience.to_owned()]),
                },
                ..Default::default()
            };
            let attempts = async {
                match self.once(&review).await {
                    Err(e) if retryable(&e) => {
                        tracing::debug!(error = %e, "TokenReview failed; retrying once");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        self.once(&review).await
                    }
                    other => other,
                }
            };
            match tokio::time::timeout(self.deadline, attempts).await {
                Ok(result) => Ok(result?),
                Err(_) => Err(ReviewError::Timeout(self.deadline)),
            }
        })
    }
}
