//! Where the agent's credentials come from: `local` (fake credentials, for development) and
//! `cce` (the cloud's assume-agency-for-pod-identity API, or this project's `exchange`) and
//! `eks` (EKS Auth's assume-role-for-pod-identity, or this project's `exchange`).

mod cce;
mod eks;
mod local;

use futures::future::BoxFuture;

pub use cce::CceBackend;
pub use eks::{EksBackend, regional_endpoint};
pub use local::LocalBackend;

use crate::cloud::{Credentials, UpstreamError};

/// Where credentials come from.
pub trait Backend: Send + Sync {
    /// Credentials for the pod whose service-account token is `token`.
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>>;
}
