//! Seed 001: the CCE pod identity association record (`ResourceTag` and the association as
//! the API returns it), plus `roleArn` for the `eks` profile.

use serde::{Deserialize, Serialize};

/// A resource tag (seed 001 `ResourceTag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A validated association, as the association API returns it (`roleArn` in place of
/// `agencyName` for the `eks` profile; `tokenExpirationSeconds` is this project's addition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Association {
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    pub namespace: String,
    pub service_account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agency_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// EKS parity: the role assumed with `roleArn`'s credentials (role chaining), with
    /// `externalId` (this association's uid), which the target role's trust policy checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// EKS parity: no session tags on the role session.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_session_tags: bool,
    /// EKS parity: an inline session policy (only with session tags disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub tags: Vec<Tag>,
    /// Lifetime of the pods' projected token, in place of the webhook's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expiration_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
}

/// The create request body (`tokenExpirationSeconds` is this project's addition, as in the
/// record). Unknown fields are refused so a misspelt one is not silently dropped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateAssociation {
    #[serde(default)]
    pub(crate) namespace: String,
    #[serde(default)]
    pub(crate) service_account: String,
    #[serde(default)]
    pub(crate) agency_name: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<Tag>,
    #[serde(default)]
    pub(crate) token_expiration_seconds: Option<i64>,
}

/// The update request body: only `agencyName` changes. `namespace` and `serviceAccount` are
/// read so that an attempt to change them is refused as immutable rather than as unknown.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateAssociation {
    #[serde(default)]
    pub(crate) agency_name: Option<String>,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    #[serde(default)]
    pub(crate) service_account: Option<String>,
}

/// The collection route (create, list) and the item route (show, update, delete), in axum
/// path syntax.
pub(crate) const COLLECTION: &str =
    "/api/v3/projects/{project_id}/clusters/{cluster_id}/pod-identity-associations";
pub(crate) const ITEM: &str =
    "/api/v3/projects/{project_id}/clusters/{cluster_id}/pod-identity-associations/{association_id}";
