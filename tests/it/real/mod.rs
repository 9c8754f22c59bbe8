//! The tests that need a real kube-apiserver (`KUBE_ASSETS`, see `common::apiserver`): each
//! returns early, and the run says which were not run, without it.

mod agent_identity;
mod crd;
mod explain;
mod issuer;
mod pass_check;
mod report;
mod webhook;
