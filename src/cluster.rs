//! The Kubernetes API client the programs share (the association watch, TokenReview).

/// No usable cluster configuration.
#[derive(Debug, thiserror::Error)]
#[error("no usable cluster configuration (in-cluster or KUBECONFIG): {0}")]
pub struct ClusterError(#[from] kube::Error);

/// A client from the in-cluster configuration, or else `KUBECONFIG`.
pub(crate) async fn client() -> Result<kube::Client, ClusterError> {
    Ok(kube::Client::try_default().await?)
}
