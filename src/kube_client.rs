//! The Kubernetes API clients the programs share: one for the association watch, one for
//! requests that must answer within a deadline (TokenReview).

use std::time::Duration;

/// No usable cluster configuration.
#[derive(Debug, thiserror::Error)]
#[error("no usable cluster configuration (in-cluster or KUBECONFIG): {0}")]
pub struct ClusterError(#[from] kube::Error);

/// The in-cluster configuration, or else `KUBECONFIG`.
pub(crate) async fn config() -> Result<kube::Config, ClusterError> {
    kube::Config::infer()
        .await
        .map_err(|e| ClusterError(kube::Error::InferConfig(e)))
}

/// A client for the association watch. kube's own retry layer is off (the watcher backs off
/// by itself, and a retry layer would multiply requests to an API server that is already
/// saying it is overloaded).
pub(crate) fn watch_client(mut config: kube::Config) -> Result<kube::Client, ClusterError> {
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// A client for requests that must end within `deadline`: connect, write and read timeouts
/// inside it, and no retry layer (the caller retries at most once, within its deadline).
pub(crate) fn request_client(config: kube::Config, deadline: Duration) -> Result<kube::Client, ClusterError> {
    Ok(kube::Client::try_from(bounded(config, deadline))?)
}

/// `config` with the deadlines and retry policy of [`request_client`].
pub(crate) fn bounded(mut config: kube::Config, deadline: Duration) -> kube::Config {
    config.default_retry = false;
    config.connect_timeout = Some(deadline.min(Duration::from_secs(1)));
    config.write_timeout = Some(deadline);
    config.read_timeout = Some(deadline);
    // The read timeout counts from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    config
}

/// `config` (bounded) acting as the holder of `token` instead of as this program: the API
/// server then authorises, admits and audits the request as that user. No other credential of
/// this program's goes along.
pub(crate) fn as_holder_of(config: &kube::Config, token: &str) -> Result<kube::Client, ClusterError> {
    let mut config = config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Ok(kube::Client::try_from(config)?)
}

/// Whether the API server answered 404: for a list, the resource's CRD is not installed. Its
/// body is then plain text ("404 page not found"), which kube's `is_not_found` does not take
/// for a NotFound `Status`.
pub(crate) fn is_absent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
