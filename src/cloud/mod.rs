//! The cloud contracts, in one place: every wire shape of the API pages this project
//! implements or calls as typed serde structs (the single source of truth for their field
//! names), the temporary credentials they carry, the upstream HTTP client and the
//! SDK-HMAC-SHA256 request signer.
//!
//! | module | API page |
//! |---|---|
//! | [`seed000`] | CCE `assume-agency-for-pod-identity` (request, response) |
//! | [`seed001`] | CCE pod identity association record |
//! | [`seed002`] | EKS Auth `AssumeRoleForPodIdentity` (request, response) |
//! | [`seed003`] | IAM `assume_role` temporary credentials through an agency |

pub(crate) mod auth;
pub(crate) mod aws;
pub(crate) mod client;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod seed000;
pub(crate) mod seed001;
pub(crate) mod seed002;
pub(crate) mod seed003;
pub mod signer;

pub use credentials::{Credentials, UpstreamError};
