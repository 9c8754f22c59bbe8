//! Why a program could not start: one error for the three composition roots, each variant
//! carrying its context (which flag, address, file or cluster configuration).

use crate::args::ArgError;
use crate::association::source::SourceError;
use crate::certs::CertError;
use crate::cloud::client::ClientError;
use crate::http::BindError;
use crate::http::tls::TlsError;
use crate::kube_client::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Associations(#[from] SourceError),
    #[error(transparent)]
    Bind(#[from] BindError),
}
