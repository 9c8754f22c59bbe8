//! The cloud contracts, in one place: every wire shape of the API pages this project
//! implements or calls as typed serde structs (the single source of truth for their field
//! names), the temporary credentials they carry, the upstream HTTP client and the
//! SDK-HMAC-SHA256 request signer.
//!
//! | module | API page |
//! |---|---|
//! | [`cce_assume_agency`] | CCE `assume-agency-for-pod-identity` (request, response) |
//! | [`cce_association`] | CCE pod identity association record |
//! | [`eks_auth`] | EKS Auth `AssumeRoleForPodIdentity` (request, response) |
//! | [`iam_assume_role`] | IAM `assume_role` temporary credentials through an agency |

pub(crate) mod auth;
pub(crate) mod aws;
pub(crate) mod cce_association;
pub(crate) mod cce_assume_agency;
pub(crate) mod client;
pub(crate) mod credentials;
pub(crate) mod eks_auth;
pub(crate) mod error;
pub(crate) mod iam_assume_role;
pub mod signer;

pub use credentials::{Credentials, UpstreamError};
