//! The IAM client of seed 003: temporary credentials through an agency
//! (`POST /v3.0/OS-CREDENTIAL/securitytokens`, `methods: ["assume_role"]`).

use serde_json::{Value, json};

use crate::agent::backend::{CceAuth, auth_headers, post};
use crate::agent::credentials::{Credentials, UpstreamError, endpoint_url, required, required_timestamp};

/// The delegating account, by id (preferred) or name.
#[derive(Debug, Clone)]
pub enum Domain {
    Id(String),
    Name(String),
}

pub struct Iam {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub auth: CceAuth,
    pub domain: Domain,
    /// Credential lifetime, clamped to IAM's 15 min – 24 h.
    pub duration_seconds: u32,
}

impl Iam {
    pub fn new(
        client: reqwest::Client,
        endpoint: &str,
        auth: CceAuth,
        domain: Domain,
        duration_seconds: u32,
    ) -> Result<Self, String> {
        let url = endpoint_url(endpoint, "/v3.0/OS-CREDENTIAL/securitytokens", "--iam-endpoint")?;
        Ok(Iam {
            client,
            url,
            auth,
            domain,
            duration_seconds: duration_seconds.clamp(900, 86_400),
        })
    }

    /// What the assumed-agency urn names as the account.
    pub fn domain_label(&self) -> &str {
        match &self.domain {
            Domain::Id(s) | Domain::Name(s) => s,
        }
    }

    /// The seed 003 request body.
    pub fn request_body(&self, agency: &str, session: &str) -> Value {
        let mut assume = json!({
            "agency_name": agency,
            "duration_seconds": self.duration_seconds,
            "session_user": {"name": session},
        });
        match &self.domain {
            Domain::Id(id) => assume["domain_id"] = json!(id),
            Domain::Name(name) => assume["domain_name"] = json!(name),
        }
        json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": assume}}})
    }

    pub async fn assume(&self, agency: &str, session: &str) -> Result<Credentials, UpstreamError> {
        let body = serde_json::to_vec(&self.request_body(agency, session)).unwrap_or_default();
        let mut headers = auth_headers(&self.auth, &self.url, "POST", "", &body)?;
        for h in headers.iter_mut().filter(|(k, _)| k == "Content-Type") {
            h.1 = "application/json;charset=utf8".into();
        }
        let bytes = post(&self.client, &self.url, headers, body, 201).await?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Invalid(format!("IAM answer is not JSON: {e}")))?;
        let c = &v["credential"];
        let field = |name: &str| required(c, "credential", name);
        let expiration = required_timestamp(c, "credential", "expires_at")?;
        Ok(Credentials {
            access_key_id: field("access")?,
            secret_access_key: field("secret")?,
            security_token: field("securitytoken")?,
            expiration,
            assumed_agency: None,
            association_id: None,
            subject: None,
            account_id: None,
        })
    }
}

/// `session_user.name` for a pod: 5–64 letters, digits, spaces, `-`, `_`, `.`, starting with a
/// letter (seed 003), derived from cluster and pod so IAM's audit trail names the pod.
pub fn session_name(cluster_id: &str, pod: &str) -> String {
    let raw = format!("cce-{cluster_id}-{pod}");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_follow_the_iam_rules() {
        let s = session_name("46db1d50-b49f", "app-7f9c");
        assert_eq!(s, "cce-46db1d50-b49f-app-7f9c");
        let long = session_name(&"c".repeat(40), &"p".repeat(40));
        assert_eq!(long.len(), 64);
        assert!(
            session_name("x", "a/b:c")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
        assert!(session_name("", "").len() >= 5);
    }
}
