//! The deployment on a real kube-apiserver.

mod abuse;
mod crd;
mod manifests;
mod migrate;
mod pass_check;
mod secrets;
