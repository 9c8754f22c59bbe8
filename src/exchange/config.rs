//! How the exchange is set up, and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::http::Limits;

/// The exchange's listener bounds: a request is a token, a few KiB at most.
pub fn default_limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        body_budget: 16 * 1024 * 1024,
        max_connections_per_client: 64,
        ..Limits::default()
    }
}

pub struct ExchangeConfig {
    pub listen: SocketAddr,
    pub project_id: String,
    pub cluster_id: String,
    /// Directory with `tls.crt` and `tls.key` (reloaded on change) to serve HTTPS; plain HTTP
    /// without it.
    pub cert_dir: Option<PathBuf>,
    pub limits: Limits,
    /// The audience the callers' `X-Auth-Token` is reviewed for.
    pub caller_audience: String,
    /// The only username allowed to call (the agents' service account).
    pub agent: String,
    /// IAM calls per second for one pod service account, and the burst it may save up.
    pub rate_per_service_account: f64,
    pub burst_per_service_account: f64,
    /// How long a reviewed caller and an issued answer are remembered (zero: not at all).
    pub cache_ttl: Duration,
    /// The agents' DaemonSet (namespace, name): a caller's token must be bound to a running
    /// pod of it on the node the token names. `None`: any node-bound token of `agent` is taken.
    pub agent_daemonset: Option<(String, String)>,
}

/// The audience of the agents' tokens (the DaemonSet's projected token) by default.
pub const CALLER_AUDIENCE: &str = "pod-identity-exchange";
/// The agents' service account by default (`manifests/agent`).
pub const AGENT: &str = "system:serviceaccount:pod-identity-agent:pod-identity-agent";
/// The agents' DaemonSet by default (`manifests/agent`, the chart).
pub const AGENT_DAEMONSET: &str = "pod-identity-agent/pod-identity-agent";
/// IAM calls per second and burst per pod service account by default: far above what pods
/// starting and refreshing need, far below what IAM's account-wide throttling tolerates.
pub const RATE_PER_SERVICE_ACCOUNT: f64 = 5.0;
pub const BURST_PER_SERVICE_ACCOUNT: f64 = 50.0;
/// Seconds a review or an answer is remembered by default.
pub const CACHE_TTL: f64 = 60.0;

impl ExchangeConfig {
    /// The defaults of the `exchange` command for the rest, but the agent DaemonSet check,
    /// which the command turns on (`--agent-daemonset`).
    pub fn new(listen: SocketAddr, project_id: &str, cluster_id: &str) -> Self {
        ExchangeConfig {
            listen,
            project_id: project_id.to_owned(),
            cluster_id: cluster_id.to_owned(),
            cert_dir: None,
            limits: default_limits(),
            caller_audience: CALLER_AUDIENCE.to_owned(),
            agent: AGENT.to_owned(),
            rate_per_service_account: RATE_PER_SERVICE_ACCOUNT,
            burst_per_service_account: BURST_PER_SERVICE_ACCOUNT,
            cache_ttl: Duration::from_secs_f64(CACHE_TTL),
            agent_daemonset: None,
        }
    }
}
