//! How the webhook is set up, and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::mutation::Injection;
use crate::association::source::AssociationSource;
use crate::http::Limits;

/// Largest accepted request body: the API server never sends more (etcd caps an object at
/// 1.5 MiB, and a review carries the object plus, for updates, the old one).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The webhook's listener bounds: bodies up to [`MAX_BODY`], at most 24 MiB of them buffered at
/// once (eight of the largest, or a thousand typical 3–20 KB pods), so that the process stays
/// under 64 MiB whatever clients do (the Deployment's limit is 128 MiB).
fn default_limits() -> Limits {
    Limits {
        max_body: MAX_BODY,
        body_budget: 24 * 1024 * 1024,
        ..Limits::default()
    }
}

/// How the webhook is set up.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// Holds `tls.crt` and `tls.key`; a localhost pair is generated there when both are absent.
    pub cert_dir: PathBuf,
    /// Where associations come from.
    pub source: AssociationSource,
    pub injection: Injection,
    /// How often certificate and association files are checked for changes.
    pub reload_interval: Duration,
    pub limits: Limits,
    /// The missed-injection report, when associations come from the cluster.
    pub report: Option<ReportSettings>,
}

/// How this replica takes part in the missed-injection report.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// Seconds the Lease holds without renewal.
    pub lease_seconds: u64,
}

impl WebhookConfig {
    pub fn new(listen: SocketAddr, cert_dir: PathBuf, injection: Injection) -> Self {
        WebhookConfig {
            listen,
            cert_dir,
            source: AssociationSource::None,
            injection,
            reload_interval: Duration::from_secs(2),
            limits: default_limits(),
            report: None,
        }
    }
}
