//! Temporary credentials, the shapes SDKs parse them in, and why an upstream gave none.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::cce_assume_agency::{self, AgencyCredentials, AssumeAgencyResponse, AssumedAgency, Subject};
use super::iam_assume_role;
use crate::profile::{CCE, Provider};

/// Temporary credentials for one pod's agency (or role).
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub security_token: String,
    pub expiration: jiff::Timestamp,
    /// Seed 000 fields passed through to the pod when known.
    pub assumed_agency: Option<AssumedAgency>,
    pub association_id: Option<String>,
    pub subject: Option<Subject>,
    /// The `eks` shape's `AccountId`.
    pub account_id: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret key and security token never reach a log.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The container credential provider's shape (botocore and the other AWS SDKs).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) token: String,
    pub(crate) account_id: String,
    /// RFC 3339, seconds.
    pub(crate) expiration: String,
}

impl Credentials {
    /// Credentials with only the key material and expiry.
    pub(crate) fn new(
        access_key_id: String,
        secret_access_key: String,
        security_token: String,
        expiration: jiff::Timestamp,
    ) -> Self {
        Credentials {
            access_key_id,
            secret_access_key,
            security_token,
            expiration,
            assumed_agency: None,
            association_id: None,
            subject: None,
            account_id: None,
        }
    }

    /// Seconds left before expiry at `now`.
    pub(crate) fn remaining(&self, now: jiff::Timestamp) -> f64 {
        (self.expiration.as_millisecond() - now.as_millisecond()) as f64 / 1000.0
    }

    /// The body an SDK of `provider` parses.
    pub(crate) fn to_body(&self, provider: Provider) -> Vec<u8> {
        let body = match provider {
            Provider::Cce => serde_json::to_vec(&self.to_seed_000()),
            Provider::Eks => serde_json::to_vec(&ContainerCredentials {
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                token: self.security_token.clone(),
                account_id: self.account_id.clone().unwrap_or_default(),
                expiration: self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }),
        };
        // Serializing structs of strings into a Vec cannot fail.
        body.unwrap_or_default()
    }

    /// Seed 000's response.
    fn to_seed_000(&self) -> AssumeAgencyResponse {
        AssumeAgencyResponse {
            assumed_agency: self.assumed_agency.clone(),
            audience: Some(CCE.audience.to_owned()),
            credentials: AgencyCredentials {
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                security_token: self.security_token.clone(),
                expiration: self
                    .expiration
                    .strftime(cce_assume_agency::EXPIRATION_FORMAT)
                    .to_string(),
            },
            pod_identity_association_id: self.association_id.clone(),
            subject: self.subject.clone(),
        }
    }

    /// Reads a seed 000 response body.
    pub(crate) fn from_seed_000(body: &[u8]) -> Result<Self, UpstreamError> {
        let r: AssumeAgencyResponse = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::Invalid(format!("not an assume-agency-for-pod-identity response: {e}"))
        })?;
        let c = r.credentials;
        Ok(Credentials {
            assumed_agency: r.assumed_agency,
            association_id: r.pod_identity_association_id,
            subject: r.subject,
            ..Credentials::new(
                non_empty("credentials.accessKeyId", c.access_key_id)?,
                non_empty("credentials.secretAccessKey", c.secret_access_key)?,
                non_empty("credentials.securityToken", c.security_token)?,
                timestamp("credentials.expiration", &c.expiration)?,
            )
        })
    }

    /// Reads a seed 003 (IAM) response body.
    pub(crate) fn from_seed_003(body: &[u8]) -> Result<Self, UpstreamError> {
        let r: iam_assume_role::AssumeRoleResponse = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::Invalid(format!(
                "not an IAM assume-role (agency credentials) response: {e}"
            ))
        })?;
        let c = r.credential;
        Ok(Credentials::new(
            non_empty("credential.access", c.access)?,
            non_empty("credential.secret", c.secret)?,
            non_empty("credential.securitytoken", c.securitytoken)?,
            timestamp("credential.expires_at", &c.expires_at)?,
        ))
    }
}

fn non_empty(field: &str, value: String) -> Result<String, UpstreamError> {
    if value.is_empty() {
        Err(UpstreamError::Invalid(format!("response has an empty {field}")))
    } else {
        Ok(value)
    }
}

/// A timestamp field of an upstream answer (RFC 3339, any fraction), or an error naming it.
fn timestamp(field: &str, value: &str) -> Result<jiff::Timestamp, UpstreamError> {
    value
        .parse::<jiff::Timestamp>()
        .map_err(|e| UpstreamError::Invalid(format!("{field} is not a timestamp: {e}")))
}

/// Why credentials could not be obtained upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an error status.
    #[error("upstream refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream answered something unreadable: {0}")]
    Invalid(String),
    /// This side could not make the request (e.g. its auth token file is unreadable).
    #[error("cannot call the upstream: {0}")]
    Local(String),
}

impl UpstreamError {
    /// The token (or the association behind it) is no longer honoured.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            UpstreamError::Refused {
                status: 401 | 403 | 404,
                ..
            }
        )
    }

    /// The status the agent answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            // A redirect is not followed, and not passed on: the caller could not use it.
            UpstreamError::Refused { status, .. } if *status < 400 => 502,
            UpstreamError::Refused { status, .. } => *status,
            UpstreamError::Unreachable(_) | UpstreamError::Invalid(_) => 502,
            UpstreamError::Local(_) => 500,
            UpstreamError::Timeout => 504,
        }
    }

    /// Maps a client error: timeouts and connection failures differ for the caller.
    pub(crate) fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else {
            // Without the URL: it is ours, and the error chain says enough.
            UpstreamError::Unreachable(
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn creds() -> Credentials {
        Credentials {
            assumed_agency: Some(AssumedAgency {
                urn: "urn".into(),
                id: "id".into(),
            }),
            association_id: Some("uid".into()),
            subject: Some(Subject {
                namespace: "ns".into(),
                service_account: "sa".into(),
            }),
            account_id: Some("123".into()),
            ..Credentials::new(
                "AK".into(),
                "SK".into(),
                "ST".into(),
                "2026-11-23T15:00:00.5Z".parse().unwrap(),
            )
        }
    }

    #[test]
    fn cce_body_round_trips_through_the_seed_000_reader() {
        let body = creds().to_body(Provider::Cce);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["credentials"]["expiration"], "2026-11-23T15:00:00.500Z");
        assert_eq!(v["audience"], "service.cce.pods");
        let mut back = Credentials::from_seed_000(&body).unwrap();
        back.account_id = Some("123".into());
        assert_eq!(back, creds());
    }

    #[test]
    fn eks_body_has_the_container_provider_fields() {
        let v: Value = serde_json::from_slice(&creds().to_body(Provider::Eks)).unwrap();
        assert_eq!(v["Expiration"], "2026-11-23T15:00:00Z");
        assert_eq!(
            (
                v["AccessKeyId"].as_str(),
                v["Token"].as_str(),
                v["AccountId"].as_str()
            ),
            (Some("AK"), Some("ST"), Some("123"))
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", creds());
        assert!(!text.contains("SK") && !text.contains("ST"), "{text}");
    }

    #[test]
    fn bad_seed_000_bodies_say_what_is_missing() {
        let e = Credentials::from_seed_000(br#"{"credentials":{"accessKeyId":"a"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("secretAccessKey") || e.to_string().contains("expiration"),
            "{e}"
        );
        let e = Credentials::from_seed_000(
            br#"{"credentials":{"accessKeyId":"a","secretAccessKey":"","securityToken":"t","expiration":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("credentials.secretAccessKey"), "{e}");
        assert!(matches!(
            Credentials::from_seed_000(b"nope"),
            Err(UpstreamError::Invalid(_))
        ));
    }

    #[test]
    fn seed_003_answers_are_read_with_their_microseconds() {
        let c = Credentials::from_seed_003(
            br#"{"credential":{"access":"A","secret":"S","securitytoken":"T","expires_at":"2020-01-08T02:56:19.587000Z"}}"#,
        )
        .unwrap();
        assert_eq!(c.expiration.as_millisecond() % 1000, 587);
        let e = Credentials::from_seed_003(br#"{"credential":{"access":"A"}}"#).unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }
}
