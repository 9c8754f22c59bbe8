//! Where associations come from, and starting that source: shared by every command that
//! needs the index (webhook, agent, exchange).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::file::{FileError, FileSource};
use super::index::Store;
use super::kubernetes::KubeSource;
use crate::metrics::Metrics;

/// Where the association index is fed from.
#[derive(Clone, Default)]
pub enum AssociationSource {
    /// Nothing is injected.
    #[default]
    None,
    /// A YAML/JSON file, reloaded when it changes.
    File(PathBuf),
    /// `PodIdentityAssociation` objects watched through this client.
    Kubernetes {
        client: kube::Client,
        cluster_id: Option<String>,
    },
}

impl std::fmt::Debug for AssociationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssociationSource::None => f.write_str("None"),
            AssociationSource::File(p) => write!(f, "File({})", p.display()),
            AssociationSource::Kubernetes { cluster_id, .. } => {
                write!(f, "Kubernetes(cluster_id: {cluster_id:?})")
            }
        }
    }
}

/// Keeps a running association source alive: it is only held, and dropping it stops it.
#[allow(dead_code)]
pub enum RunningSource {
    None,
    File(FileSource),
    Kubernetes(KubeSource),
}

/// Starts `source` feeding `store`. `synced` turns true once the first full set is in the
/// store: at once for a file (whose first load errors are returned here), after the first list
/// for a watch.
pub fn start(
    source: &AssociationSource,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    synced: Arc<AtomicBool>,
    reload_interval: Duration,
) -> Result<RunningSource, FileError> {
    let running = match source {
        AssociationSource::File(path) => {
            RunningSource::File(FileSource::start(path.clone(), store, metrics, reload_interval)?)
        }
        AssociationSource::Kubernetes { client, cluster_id } => {
            return Ok(RunningSource::Kubernetes(KubeSource::start(
                client.clone(),
                store,
                metrics,
                synced,
                cluster_id.clone(),
            )));
        }
        AssociationSource::None => {
            tracing::warn!("no association source configured: the index stays empty");
            RunningSource::None
        }
    };
    synced.store(true, Ordering::Relaxed);
    Ok(running)
}
