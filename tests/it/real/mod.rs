//! The tests that need a real kube-apiserver (`KUBE_ASSETS`, see `common::apiserver`): each
//! returns early, and the run says which were not run, without it.

mod abuse;
mod agent_identity;
mod associations_api;
mod crd;
mod eks_auth;
mod exchange;
mod explain;
mod issuer;
mod lifecycle;
mod manifests;
mod migrate;
mod pass_check;
mod report;
mod sdk;
mod secrets;
mod webhook;
