//! Seed 000: CCE `POST /api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity`.

use serde::{Deserialize, Serialize};

/// The path of the API under a CCE endpoint.
pub(crate) fn path(project_id: &str, cluster_id: &str) -> String {
    format!("/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity")
}

/// The route the cluster-side server answers on (axum path syntax).
pub(crate) const ROUTE: &str =
    "/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity";

/// The request body. `token` is optional here so that a missing one is refused with the same
/// clear message as an empty one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AssumeAgencyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
}

/// The response body (200). Every SDK of the `cce` profile parses this shape from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssumeAgencyResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) assumed_agency: Option<AssumedAgency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) audience: Option<String>,
    pub(crate) credentials: AgencyCredentials,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pod_identity_association_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<Subject>,
}

/// `assumedAgency`: `urn` is `sts::{account}::assumed-agency:{agency}/{session}`, `id` is
/// `{agency_id}:{session}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssumedAgency {
    pub urn: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgencyCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) security_token: String,
    /// RFC 3339 with milliseconds and `Z`: the Python SDK parses `%Y-%m-%dT%H:%M:%S.%fZ`.
    pub(crate) expiration: String,
}

/// The service account the credentials were issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub namespace: String,
    pub service_account: String,
}

/// The format of `credentials.expiration` this project writes.
pub(crate) const EXPIRATION_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

#[cfg(test)]
mod tests {
    use super::*;

    /// The example response of the API page reads, and writes back to the same JSON.
    #[test]
    fn the_pages_example_round_trips() {
        let example = serde_json::json!({
            "assumedAgency": {"urn": "sts::27680d67da6b47eb82d00a1a1xxxxxx5::assumed-agency:example-agency/cce-c-p-u",
                "id": "011e7f329d2241e981a3d63bexxxxxx5:cce-c-p-u"},
            "audience": "service.cce.pods",
            "credentials": {"accessKeyId": "HSTANO...XBS55JLJ3", "secretAccessKey": "EoWCQrr...SCcw4Whkt2aXKWAr",
                "securityToken": "hQpjbi1XXXXXX...XXXXXKbhBbA0TQ==", "expiration": "2022-09-07T03:27:51.158Z"},
            "podIdentityAssociationId": "402358e8-2e3a-4531-bae7-fe9cbxxxxxx1",
            "subject": {"namespace": "example-namespace", "serviceAccount": "example-serviceaccount"}
        });
        let r: AssumeAgencyResponse = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(
            r.subject.as_ref().unwrap().service_account,
            "example-serviceaccount"
        );
        assert_eq!(serde_json::to_value(&r).unwrap(), example);
        assert_eq!(
            path("p", "c"),
            "/api/v3/projects/p/clusters/c/assume-agency-for-pod-identity"
        );
    }
}
