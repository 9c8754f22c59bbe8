//! The integration tests: one binary, so the shared harness in `common` compiles once. Each
//! module is an area; transport behaviour goes through real sockets, real TLS and real
//! clients (and the real SDKs from PyPI), the binary itself through `cli`.

mod common;

mod abuse;
mod agent;
mod associations_api;
mod bad_input;
mod cli;
mod eks_auth;
mod exchange;
mod explain;
mod helm;
mod kubernetes;
mod manifests;
mod operations;
mod pod_security;
mod proptest;
mod readme;
mod real;
mod reload;
mod sdk;
mod shutdown;
mod webhook;
