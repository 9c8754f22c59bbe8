//! The exchange's IAM client: seed 003, temporary credentials through an agency.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::cloud::auth::CloudAuth;
use crate::cloud::client::{ClientError, Upstream, endpoint_url};
use crate::cloud::seed003::{self, AssumeRole, AssumeRoleRequest, SessionUser};
use crate::cloud::{Credentials, UpstreamError};

/// The delegating account, by id (preferred) or name.
#[derive(Debug, Clone)]
pub enum Domain {
    Id(String),
    Name(String),
}

pub struct Iam {
    client: Upstream,
    url: reqwest::Url,
    auth: CloudAuth,
    domain: Domain,
    /// Credential lifetime, clamped to IAM's 15 min – 24 h.
    duration_seconds: u32,
}

impl Iam {
    pub fn new(
        client: Upstream,
        endpoint: &str,
        auth: CloudAuth,
        domain: Domain,
        duration_seconds: u32,
    ) -> Result<Self, ClientError> {
        let url = endpoint_url(endpoint, seed003::PATH, "--iam-endpoint")?;
        Ok(Iam {
            client,
            url,
            auth,
            domain,
            duration_seconds: duration_seconds.clamp(900, 86_400),
        })
    }

    /// What the assumed-agency urn names as the account.
    pub(crate) fn domain_label(&self) -> &str {
        match &self.domain {
            Domain::Id(s) | Domain::Name(s) => s,
        }
    }

    pub(crate) async fn assume(&self, agency: &str, session: &str) -> Result<Credentials, UpstreamError> {
        let (domain_id, domain_name) = match &self.domain {
            Domain::Id(id) => (Some(id.as_str()), None),
            Domain::Name(name) => (None, Some(name.as_str())),
        };
        let request = AssumeRoleRequest::new(AssumeRole {
            agency_name: agency,
            domain_id,
            domain_name,
            duration_seconds: self.duration_seconds,
            session_user: SessionUser { name: session },
        });
        let body = serde_json::to_vec(&request).unwrap_or_default();
        // Every header is in place before the signature is computed over them.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(seed003::CONTENT_TYPE));
        self.auth.apply("POST", &self.url, &mut headers, &body)?;
        let answer = self
            .client
            .post(&self.url, headers, body, seed003::CREATED)
            .await?;
        Credentials::from_seed_003(&answer)
    }
}

/// `session_user.name` for a pod: 5–64 letters, digits, spaces, `-`, `_`, `.`, starting with a
/// letter (seed 003), derived from cluster and pod so IAM's audit trail names the pod.
pub(crate) fn session_name(cluster_id: &str, pod: &str) -> String {
    let raw = format!("cce-{cluster_id}-{pod}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
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
