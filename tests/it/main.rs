//! The integration tests: one binary, so the shared harness in `common` compiles once. The
//! tests are nested by program, so `cargo test --test it agent::` runs one program's: `webhook`,
//! `agent`, `exchange`, and `deploy` (the manifests, the chart, the README and docs, and what
//! holds across the deployed programs); `cli` runs the binary's commands. Each program's
//! `real` module needs a real kube-apiserver (`KUBE_ASSETS`, see `common::apiserver`): without
//! it, each of those tests returns early, and the run says which were not run. Transport
//! behaviour goes through real sockets, real TLS and real clients (and the real SDKs from
//! PyPI); the doubles are in `common`.

mod common;

mod agent;
mod cli;
mod deploy;
mod exchange;
mod layout;
mod webhook;
