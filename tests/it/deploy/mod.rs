//! What is deployed: the manifests and overlays, Pod Security; on a real API server, every
//! rendering admitted, the CRDs' rules, the pass check, the migration, and what holds across
//! the running programs (no secret in any log, no client starving another).

pub(crate) mod helm;
pub(crate) mod manifests;
mod pod_security;
pub(crate) mod readme;
mod real;
