//! The exchange: the CCE assume-agency front, the association API, and its API server
//! misbehaving; on a real API server, both credential fronts (CCE and EKS Auth) with the real
//! SDKs, the agents' identity, abuse, and the local token check.

mod abuse;
mod associations_api;
mod cce;
mod real;
