//! `local`: well-formed, clearly fake credentials for development.

use std::time::Duration;

use base64::Engine;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::Backend;
use crate::agent::token;
use crate::association::Reader;
use crate::cloud::cce_assume_agency::{AssumedAgency, Subject};
use crate::cloud::{Credentials, UpstreamError};

/// Mints fake credentials for the association of the token's service account. The token's
/// signature is NOT verified: development only.
pub struct LocalBackend {
    pub associations: Reader,
    pub audience: &'static str,
    pub lifetime: Duration,
}

impl Backend for LocalBackend {
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>> {
        async move {
            let refused = |status, message: String| UpstreamError::Refused { status, message };
            let now = jiff::Timestamp::now();
            let claims = token::claims(token, now.as_second()).map_err(|e| refused(400, e.to_string()))?;
            if !claims.audiences.iter().any(|a| a == self.audience) {
                return Err(refused(
                    401,
                    format!(
                        "token audience {:?} does not include {}",
                        claims.audiences, self.audience
                    ),
                ));
            }
            let index = self.associations.load();
            let Some(a) = index.get(&claims.namespace, &claims.service_account) else {
                return Err(refused(
                    403,
                    format!(
                        "no pod identity association for {}/{}",
                        claims.namespace, claims.service_account
                    ),
                ));
            };
            let random = |n: usize| -> String {
                std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_uppercase())
                    .take(n)
                    .collect()
            };
            let session = format!("local-{}", claims.pod_name.as_deref().unwrap_or("pod"));
            let lifetime =
                jiff::SignedDuration::try_from(self.lifetime).unwrap_or(jiff::SignedDuration::from_hours(1));
            let security_token = format!(
                "local-fake-token.{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
                    "{}|{}",
                    a.target(),
                    random(24)
                ))
            );
            Ok(Credentials {
                assumed_agency: Some(AssumedAgency {
                    urn: format!("sts::local::assumed-agency:{}/{session}", a.target()),
                    id: format!("local:{session}"),
                }),
                association_id: Some(a.uid.clone()),
                subject: Some(Subject {
                    namespace: claims.namespace,
                    service_account: claims.service_account,
                }),
                account_id: Some("000000000000".into()),
                ..Credentials::new(
                    format!("LOCALFAKE{}", random(11)),
                    random(40),
                    security_token,
                    now + lifetime,
                )
            })
        }
        .boxed()
    }
}
