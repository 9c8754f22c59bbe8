//! Seed 002: EKS Auth `POST /clusters/{clusterName}/assume-role-for-pod-identity` (REST-JSON).

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AssumeRoleForPodIdentityRequest {
    pub(crate) token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssumeRoleForPodIdentityResponse {
    pub(crate) subject: Subject,
    pub(crate) audience: String,
    pub(crate) pod_identity_association: PodIdentityAssociation,
    pub(crate) assumed_role_user: AssumedRoleUser,
    pub(crate) credentials: Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subject {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodIdentityAssociation {
    pub(crate) association_arn: String,
    pub(crate) association_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssumedRoleUser {
    pub(crate) arn: String,
    pub(crate) assume_role_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Credentials {
    pub(crate) session_token: String,
    pub(crate) secret_access_key: String,
    pub(crate) access_key_id: String,
    /// Unix epoch seconds (botocore's REST-JSON timestamp).
    pub(crate) expiration: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_response_syntax_of_the_page() {
        let page = serde_json::json!({
            "subject": {"namespace": "ns", "serviceAccount": "sa"},
            "audience": "pods.eks.amazonaws.com",
            "podIdentityAssociation": {"associationArn": "arn:aws:eks:us-west-2:1:podidentityassociation/c/a-1", "associationId": "a-1"},
            "assumedRoleUser": {"arn": "arn:aws:sts::1:assumed-role/r/eks-c-p-u", "assumeRoleId": "AROA:eks-c-p-u"},
            "credentials": {"sessionToken": "st", "secretAccessKey": "sk", "accessKeyId": "ak", "expiration": 1_764_600_000.0}
        });
        let r: AssumeRoleForPodIdentityResponse = serde_json::from_value(page.clone()).unwrap();
        assert_eq!(r.credentials.access_key_id, "ak");
        assert_eq!(serde_json::to_value(&r).unwrap(), page);
        let req: AssumeRoleForPodIdentityRequest = serde_json::from_str(r#"{"token":"t"}"#).unwrap();
        assert_eq!(req.token, "t");
    }
}
