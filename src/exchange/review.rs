//! Verifying a pod's service-account token with the Kubernetes TokenReview API.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The API server could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("TokenReview failed: {0}")]
pub struct ReviewError(#[from] kube::Error);

/// Verifies service-account tokens for an audience.
pub trait TokenReviewer: Send + Sync {
    fn review(
        &self,
        token: String,
        audience: &'static str,
    ) -> BoxFuture<'_, Result<TokenReview, ReviewError>>;
}

/// TokenReview through the Kubernetes API.
pub struct KubeReviewer(pub kube::Client);

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
            Ok(Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await?)
        })
    }
}
