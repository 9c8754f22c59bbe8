//! The webhook on a real kube-apiserver.

mod admission;
mod explain;
mod report;
