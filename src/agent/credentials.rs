//! Temporary credentials, the backend interface that obtains them, and the two wire shapes
//! SDKs parse.

use std::fmt;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::mutation::Provider;

/// Temporary credentials for one pod's agency.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub security_token: String,
    pub expiration: jiff::Timestamp,
    /// Seed 000 fields passed through to the pod when known.
    pub assumed_agency: Option<(String, String)>,
    pub association_id: Option<String>,
    pub subject: Option<(String, String)>,
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

impl Credentials {
    /// Seconds left before expiry at `now`.
    pub fn remaining(&self, now: jiff::Timestamp) -> f64 {
        (self.expiration.as_millisecond() - now.as_millisecond()) as f64 / 1000.0
    }

    /// The body an SDK of `provider` parses.
    pub fn to_body(&self, provider: Provider) -> Vec<u8> {
        let v = match provider {
            // Seed 000's response; the Python SDK parses expiration with `%Y-%m-%dT%H:%M:%S.%fZ`.
            Provider::Cce => {
                let mut v = json!({
                    "audience": "service.cce.pods",
                    "credentials": {
                        "accessKeyId": self.access_key_id,
                        "secretAccessKey": self.secret_access_key,
                        "securityToken": self.security_token,
                        "expiration": self.expiration.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    },
                });
                if let Some((urn, id)) = &self.assumed_agency {
                    v["assumedAgency"] = json!({"urn": urn, "id": id});
                }
                if let Some(id) = &self.association_id {
                    v["podIdentityAssociationId"] = json!(id);
                }
                if let Some((ns, sa)) = &self.subject {
                    v["subject"] = json!({"namespace": ns, "serviceAccount": sa});
                }
                v
            }
            // The container credential provider's shape (botocore, the AWS SDKs).
            Provider::Eks => json!({
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.security_token,
                "AccountId": self.account_id.clone().unwrap_or_default(),
                "Expiration": self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Reads a seed 000 response body (`credentials.*`, plus the optional fields).
    pub fn from_seed_000(body: &[u8]) -> Result<Self, UpstreamError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::Invalid(format!("response is not JSON: {e}")))?;
        let c = &v["credentials"];
        let field = |name: &str| required(c, "credentials", name);
        let expiration = required_timestamp(c, "credentials", "expiration")?;
        let pair = |o: &Value, a: &str, b: &str| Some((o[a].as_str()?.to_owned(), o[b].as_str()?.to_owned()));
        Ok(Credentials {
            access_key_id: field("accessKeyId")?,
            secret_access_key: field("secretAccessKey")?,
            security_token: field("securityToken")?,
            expiration,
            assumed_agency: pair(&v["assumedAgency"], "urn", "id"),
            association_id: v["podIdentityAssociationId"].as_str().map(str::to_owned),
            subject: pair(&v["subject"], "namespace", "serviceAccount"),
            account_id: None,
        })
    }
}

/// A non-empty string field of an upstream answer, or an error naming it.
pub fn required(object: &Value, parent: &str, name: &str) -> Result<String, UpstreamError> {
    object[name]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| UpstreamError::Invalid(format!("response has no {parent}.{name}")))
}

/// A timestamp field of an upstream answer (RFC 3339, any fraction), or an error naming it.
pub fn required_timestamp(
    object: &Value,
    parent: &str,
    name: &str,
) -> Result<jiff::Timestamp, UpstreamError> {
    required(object, parent, name)?
        .parse::<jiff::Timestamp>()
        .map_err(|e| UpstreamError::Invalid(format!("{parent}.{name} is not a timestamp: {e}")))
}

/// `endpoint` (a base URL, trailing `/` or not) joined with `path`; errors name `flag`.
pub fn endpoint_url(endpoint: &str, path: &str, flag: &str) -> Result<reqwest::Url, String> {
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|e| format!("bad {flag} {endpoint:?}: {e}"))
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
}

impl UpstreamError {
    /// Worth retrying later; cached credentials keep serving meanwhile.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        }
    }

    /// The token (or the association behind it) is no longer honoured.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            UpstreamError::Refused {
                status: 401 | 403 | 404,
                ..
            }
        )
    }

    /// The status the agent answers with.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Refused { status, .. } => *status,
            UpstreamError::Unreachable(_) | UpstreamError::Invalid(_) => 502,
            UpstreamError::Timeout => 504,
        }
    }

    /// Maps a client error: timeouts and connection failures differ for the caller.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
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

/// Where credentials come from.
pub trait Backend: Send + Sync {
    /// Credentials for the pod whose service-account token is `token`.
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>>;
}

/// The message of an error body in the cloud's shapes (`error_msg`, `message`), or its text.
pub fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error_msg"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["error"]["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            security_token: "ST".into(),
            expiration: "2026-11-23T15:00:00.5Z".parse().unwrap(),
            assumed_agency: Some(("urn".into(), "id".into())),
            association_id: Some("uid".into()),
            subject: Some(("ns".into(), "sa".into())),
            account_id: Some("123".into()),
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
            e.to_string().contains("credentials.secretAccessKey")
                || e.to_string().contains("credentials.expiration"),
            "{e}"
        );
        assert!(matches!(
            Credentials::from_seed_000(b"nope"),
            Err(UpstreamError::Invalid(_))
        ));
    }
}
