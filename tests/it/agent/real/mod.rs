//! The agent on a real kube-apiserver.

mod issuer;
mod lifecycle;
