//! The exchange on a real kube-apiserver.

mod abuse;
mod agent_identity;
mod associations_api;
mod cce;
mod eks_auth;
mod issuer;
mod sdk;
