//! Where associations come from, and starting that source: shared by the three programs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use super::file::{FileError, FileSource};
use super::index::Writer;
use super::kubernetes::KubeSource;
use crate::args::ArgError;
use crate::metrics::InputMetrics;

/// Where the association index is fed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AssociationSource {
    /// Nothing is injected.
    #[default]
    None,
    /// A YAML/JSON file, reloaded when it changes.
    File(PathBuf),
    /// `PodIdentityAssociation` objects watched in the cluster; records carry `cluster_id`.
    Kubernetes { cluster_id: Option<String> },
}

impl AssociationSource {
    /// Whether this source needs a Kubernetes client.
    pub(crate) fn needs_cluster(&self) -> bool {
        matches!(self, AssociationSource::Kubernetes { .. })
    }
}

/// The kinds of source a flag may name.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum SourceKind {
    File,
    Kubernetes,
}

/// Where associations come from, for commands that read them.
#[derive(clap::Args)]
#[group(id = "SourceArgs")]
pub(crate) struct Args {
    /// `file` (with --associations) or `kubernetes` (PodIdentityAssociation objects).
    #[arg(long, env = "POD_IDENTITY_SOURCE", value_enum, default_value_t = SourceKind::File)]
    pub(crate) source: SourceKind,
    /// Association file (YAML or JSON), reloaded on change.
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    pub(crate) associations: Option<PathBuf>,
}

impl Args {
    /// The association source these flags name; records read from a cluster carry `cluster_id`.
    pub(crate) fn source(&self, cluster_id: Option<String>) -> Result<AssociationSource, ArgError> {
        Ok(match (self.source, &self.associations) {
            (SourceKind::File, Some(path)) => AssociationSource::File(path.clone()),
            (SourceKind::File, None) => AssociationSource::None,
            (SourceKind::Kubernetes, None) => AssociationSource::Kubernetes { cluster_id },
            (SourceKind::Kubernetes, Some(_)) => {
                return Err(ArgError(
                    "--associations is for --source file; drop it or use --source file".into(),
                ));
            }
        })
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("--source kubernetes needs a cluster configuration (in-cluster, or KUBECONFIG)")]
    NoCluster,
}

/// Keeps a running association source alive: it is only held, and dropping it stops it.
pub(crate) enum Running {
    None,
    File(#[allow(dead_code, reason = "held for its Drop")] FileSource),
    Kubernetes(#[allow(dead_code, reason = "held for its Drop")] KubeSource),
}

/// Starts `source` filling `writer`, counting into `metrics`. The writer is marked synced
/// once the first full set is in: at once for a file (whose first load errors are returned
/// here), after the first list for a watch.
pub(crate) fn start(
    source: &AssociationSource,
    writer: Writer,
    cluster: Option<&kube::Client>,
    metrics: Arc<InputMetrics>,
    reload_interval: Duration,
) -> Result<Running, SourceError> {
    match source {
        AssociationSource::File(path) => {
            let running = FileSource::start(path.clone(), writer, metrics, reload_interval)?;
            Ok(Running::File(running))
        }
        AssociationSource::Kubernetes { cluster_id } => {
            let client = cluster.ok_or(SourceError::NoCluster)?;
            Ok(Running::Kubernetes(KubeSource::start(
                client.clone(),
                writer,
                metrics,
                cluster_id.clone(),
            )))
        }
        AssociationSource::None => {
            tracing::warn!("no association source configured: the index stays empty");
            writer.mark_synced();
            Ok(Running::None)
        }
    }
}
