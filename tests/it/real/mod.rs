//! The tests that need a real kube-apiserver (`KUBE_ASSETS`, see `common::apiserver`): each
//! returns early, and the run says which were not run, without it.

mod crd;
mod manifests;
