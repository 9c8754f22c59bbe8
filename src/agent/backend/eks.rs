//! `eks`: the client of seed 002, `POST {endpoint}/clusters/{clusterName}/assume-role-for-pod-identity`
//! — what the EKS Pod Identity Agent calls on an EKS node. Towards AWS's EKS Auth the request
//! is SigV4-signed for `eks-auth` with the node's AWS credentials; towards this project's
//! `exchange` it carries the agent's own service-account token as `X-Auth-Token` instead.

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::Backend;
use crate::cloud::auth::CloudAuth;
use crate::cloud::aws::{self, AwsKey};
use crate::cloud::client::{ClientError, Upstream, endpoint_url};
use crate::cloud::eks_auth::{AssumeRoleForPodIdentityRequest, AssumeRoleForPodIdentityResponse};
use crate::cloud::{Credentials, UpstreamError};

/// How the agent authenticates to the endpoint.
enum Auth {
    /// SigV4 with the key of AWS's standard chain, or a fixed one.
    SigV4(AwsKey),
    /// `X-Auth-Token` (this project's `exchange`).
    Token(CloudAuth),
}

pub struct EksBackend {
    client: Upstream,
    url: reqwest::Url,
    region: String,
    auth: Auth,
}

/// `https://eks-auth.<region>.api.aws`, EKS Auth's regional endpoint.
pub fn regional_endpoint(region: &str) -> String {
    format!("https://eks-auth.{region}.api.aws")
}

impl EksBackend {
    /// SigV4-signed calls with the AWS credentials of the standard chain (the node's: the
    /// environment, shared files, web identity, the container endpoint or instance metadata);
    /// `token` (the agent's token file) in their place when the endpoint is this project's
    /// `exchange`.
    pub fn new(
        client: Upstream,
        endpoint: &str,
        cluster_name: &str,
        region: &str,
        token: Option<CloudAuth>,
    ) -> Result<Self, ClientError> {
        let path = format!("/clusters/{cluster_name}/assume-role-for-pod-identity");
        let auth = match token {
            Some(token) => Auth::Token(token),
            None => Auth::SigV4(AwsKey::chain(region, &client)),
        };
        Ok(EksBackend {
            url: endpoint_url(endpoint, &path, "--eks-endpoint")?,
            client,
            region: region.to_owned(),
            auth,
        })
    }

    /// Signs with this access key instead of the chain's.
    pub fn with_key(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.auth = Auth::SigV4(AwsKey::fixed(access_key_id, secret_access_key));
        self
    }
}

impl Backend for EksBackend {
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>> {
        async move {
            let request = AssumeRoleForPodIdentityRequest {
                token: token.to_owned(),
            };
            let body = serde_json::to_vec(&request).unwrap_or_default();
            // One deadline for the call, resolving the key that signs it included.
            let until = tokio::time::Instant::now() + self.client.deadline();
            let headers = match &self.auth {
                Auth::SigV4(key) => {
                    let identity = key.credentials(until).await?;
                    aws::signed_headers(
                        &identity,
                        &self.region,
                        "eks-auth",
                        &self.url,
                        "application/json",
                        &body,
                    )?
                }
                Auth::Token(auth) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    auth.apply("POST", &self.url, &mut headers, &body)?;
                    headers
                }
            };
            match self.client.post_by(&self.url, headers, body, 200, until).await {
                Ok(b) => from_seed_002(&b),
                Err(e) => Err(for_the_cache(e)),
            }
        }
        .boxed()
    }
}

/// EKS Auth's refusals as the cache reads them: every 400 (`InvalidTokenException`,
/// `ExpiredTokenException`, `AccessDeniedException`, and a request EKS Auth finds malformed)
/// becomes 403, so it evicts like `ResourceNotFoundException`'s 404; 429, 500 and 503
/// (`Throttling`, `InternalServer`, `ServiceUnavailable`) stay transient.
fn for_the_cache(e: UpstreamError) -> UpstreamError {
    match e {
        UpstreamError::Refused { status: 400, message } => UpstreamError::Refused { status: 403, message },
        other => other,
    }
}

/// Reads a seed 002 response body.
fn from_seed_002(body: &[u8]) -> Result<Credentials, UpstreamError> {
    let r: AssumeRoleForPodIdentityResponse = serde_json::from_slice(body).map_err(|e| {
        UpstreamError::Invalid(format!("not an EKS Auth AssumeRoleForPodIdentity response: {e}"))
    })?;
    let c = r.credentials;
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() || c.session_token.is_empty() {
        return Err(UpstreamError::Invalid("response has empty credentials".into()));
    }
    let expiration = jiff::Timestamp::from_second(c.expiration as i64)
        .map_err(|e| UpstreamError::Invalid(format!("credentials.expiration is out of range: {e}")))?;
    Ok(Credentials {
        account_id: r.assumed_role_user.arn.split(':').nth(4).map(str::to_owned),
        association_id: Some(r.pod_identity_association.association_id),
        ..Credentials::new(c.access_key_id, c.secret_access_key, c.session_token, expiration)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_eks_auth_refusal_evicts_and_the_rest_is_transient() {
        let refused = |status| {
            for_the_cache(UpstreamError::Refused {
                status,
                message: "m".into(),
            })
        };
        for status in [400, 404] {
            assert!(refused(status).is_auth(), "{status}");
        }
        for status in [429, 500, 503] {
            assert!(!refused(status).is_auth(), "{status}");
        }
    }

    #[test]
    fn reads_the_page_shape() {
        let body = serde_json::json!({
            "subject": {"namespace": "ns", "serviceAccount": "sa"},
            "audience": "pods.eks.amazonaws.com",
            "podIdentityAssociation": {"associationArn": "arn:aws:eks:us-west-2:1:podidentityassociation/c/a-1", "associationId": "a-1"},
            "assumedRoleUser": {"arn": "arn:aws:sts::123456789012:assumed-role/r/s", "assumeRoleId": "AROA:s"},
            "credentials": {"sessionToken": "st", "secretAccessKey": "sk", "accessKeyId": "ak", "expiration": 1_900_000_000.0}
        });
        let c = from_seed_002(body.to_string().as_bytes()).unwrap();
        assert_eq!(c.account_id.as_deref(), Some("123456789012"));
        assert_eq!(c.expiration.as_second(), 1_900_000_000);
        assert!(from_seed_002(b"{}").is_err());
    }
}
