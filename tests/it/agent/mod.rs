//! The agent: its credential endpoint, its backends (`cce`, `eks` and the standard AWS
//! credential chain), the SDKs reading its answers, and abuse; on a real API server, cached
//! credentials following associations and pods, and tokens checked against the signing keys.

mod abuse;
mod credentials;
mod eks_backend;
mod real;
mod sdk;
