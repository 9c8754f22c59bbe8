//! Pod identity for Kubernetes: a mutating admission webhook that gives pods a projected
//! service-account token and the env vars that point cloud SDKs at a credential endpoint.
//!
//! A pure core ([`mutation`], [`admission`]) turns a pod and its association into a JSON
//! Patch; thin shells around it serve it over TLS ([`server`]) and feed the association index
//! ([`association`]).

pub mod admission;
pub mod agent;
pub mod association;
pub mod certs;
pub mod exchange;
pub mod fast_json;
pub mod metrics;
pub mod mutation;
pub mod offline;
pub mod server;
pub mod signer;
pub mod watch;
