//! Seed 003: IAM `POST /v3.0/OS-CREDENTIAL/securitytokens` with `methods: ["assume_role"]`,
//! temporary credentials through an agency.

use serde::{Deserialize, Serialize};

pub(crate) const PATH: &str = "/v3.0/OS-CREDENTIAL/securitytokens";
/// The `Content-Type` the page requires.
pub(crate) const CONTENT_TYPE: &str = "application/json;charset=utf8";
/// The status of a successful answer.
pub(crate) const CREATED: u16 = 201;

#[derive(Debug, Serialize)]
pub(crate) struct AssumeRoleRequest<'a> {
    pub(crate) auth: Auth<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Auth<'a> {
    pub(crate) identity: Identity<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Identity<'a> {
    pub(crate) methods: [&'static str; 1],
    pub(crate) assume_role: AssumeRole<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AssumeRole<'a> {
    pub(crate) agency_name: &'a str,
    /// The delegating account: its id (preferred) or its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) domain_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) domain_name: Option<&'a str>,
    pub(crate) duration_seconds: u32,
    pub(crate) session_user: SessionUser<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SessionUser<'a> {
    pub(crate) name: &'a str,
}

impl<'a> AssumeRoleRequest<'a> {
    pub(crate) fn new(assume_role: AssumeRole<'a>) -> Self {
        AssumeRoleRequest {
            auth: Auth {
                identity: Identity {
                    methods: ["assume_role"],
                    assume_role,
                },
            },
        }
    }
}

/// The answer (201).
#[derive(Debug, Deserialize)]
pub(crate) struct AssumeRoleResponse {
    pub(crate) credential: IamCredential,
}

#[derive(Debug, Deserialize)]
pub(crate) struct IamCredential {
    pub(crate) access: String,
    pub(crate) secret: String,
    pub(crate) securitytoken: String,
    /// RFC 3339 with microseconds, e.g. `2020-01-08T02:56:19.587000Z`.
    pub(crate) expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_follow_the_page() {
        let req = AssumeRoleRequest::new(AssumeRole {
            agency_name: "IAMAgency",
            domain_id: None,
            domain_name: Some("IAMDomainA"),
            duration_seconds: 3600,
            session_user: SessionUser {
                name: "SessionUserName",
            },
        });
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": {
                "domain_name": "IAMDomainA", "agency_name": "IAMAgency", "duration_seconds": 3600,
                "session_user": {"name": "SessionUserName"}}}}})
        );
        let r: AssumeRoleResponse = serde_json::from_str(
            r#"{"credential":{"access":"E6DX0TF2ZREQ4Z...","expires_at":"2020-01-08T02:56:19.587000Z","secret":"w9eP...","securitytoken":"gQpj..."}}"#,
        )
        .unwrap();
        assert_eq!(r.credential.access, "E6DX0TF2ZREQ4Z...");
    }
}
