//! AWS request signing: SigV4 with AWS's own signer (`aws-sigv4`), and the access key that
//! signs from AWS's own standard chain (`aws-config`): the environment, the shared config and
//! credentials files (profiles, `credential_process`, `role_arn` with `source_profile`), web
//! identity, the container credentials endpoint and EC2 instance metadata (IMDSv2), in the
//! order every AWS SDK looks.

use std::time::{Duration, SystemTime};

use aws_config::Region;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials as AwsCredentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::display::DisplayErrorContext;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::UpstreamError;
use super::client::Upstream;

/// What to set when the chain finds nothing: the end of every "no AWS credentials" message.
pub(crate) const CONFIGURE: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
     AWS_SESSION_TOKEN), or a profile in AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE (with \
     AWS_PROFILE), or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or \
     AWS_CONTAINER_CREDENTIALS_FULL_URI; or run where instance metadata (IMDSv2) serves a role";

/// Credentials expiring sooner than this are resolved anew (the AWS SDKs' margin too).
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Credentials without an expiry (a key in the environment or a file) are looked up again
/// after this, so a rotated file or Secret is picked up.
const RECHECK: Duration = Duration::from_secs(300);

/// Where the key that signs comes from: a fixed one (tests, static setups) or the standard
/// chain, one per program, its answer cached here until shortly before it expires.
pub(crate) struct AwsKey(Source);

enum Source {
    Fixed(AwsCredentials),
    Chain(Chain),
}

struct Chain {
    region: String,
    client: reqwest::Client,
    /// The last credentials and when they were resolved; the lock makes concurrent callers
    /// share one resolution.
    cached: Mutex<Option<(AwsCredentials, SystemTime)>>,
}

impl AwsKey {
    /// A fixed access key.
    pub(crate) fn fixed(access_key_id: &str, secret_access_key: &str) -> Self {
        AwsKey(Source::Fixed(AwsCredentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "fixed",
        )))
    }

    /// The standard chain for `region` (of web identity's and profile roles' STS calls), over
    /// `client`'s HTTP client.
    pub(crate) fn chain(region: &str, client: &Upstream) -> Self {
        AwsKey(Source::Chain(Chain {
            region: region.to_owned(),
            client: client.reqwest().clone(),
            cached: Mutex::new(None),
        }))
    }

    /// The credentials to sign with now, resolved by `deadline` (the call's, so that a source
    /// that does not answer, such as instance metadata where there is none, cannot hold the
    /// call beyond it).
    pub(crate) async fn credentials(&self, deadline: Instant) -> Result<AwsCredentials, UpstreamError> {
        match &self.0 {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Chain(chain) => chain.credentials(deadline).await,
        }
    }
}

impl Chain {
    async fn credentials(&self, deadline: Instant) -> Result<AwsCredentials, UpstreamError> {
        let timed_out = || {
            UpstreamError::Local(format!(
                "no AWS credentials within the call's deadline (a source of the standard chain \
                 did not answer in time, e.g. instance metadata where there is none): {CONFIGURE}"
            ))
        };
        let mut cached = tokio::time::timeout_at(deadline, self.cached.lock())
            .await
            .map_err(|_| timed_out())?;
        let now = SystemTime::now();
        if let Some((c, at)) = cached.as_ref()
            && fresh(c, *at, now)
        {
            return Ok(c.clone());
        }
        // A chain built for each resolution (building reads nothing): the chain parses the
        // shared files once per build, and a rotated file (a mounted Secret) must be read.
        let provider = self.build().await;
        let failure = match tokio::time::timeout_at(deadline, provider.provide_credentials()).await {
            Ok(Ok(c)) => {
                // AWS's own rendering names the source and the key id, the secret redacted.
                match cached.as_ref() {
                    Some((old, _)) if old.access_key_id() == c.access_key_id() => {
                        tracing::debug!(credentials = ?c, "AWS credentials resolved")
                    }
                    _ => tracing::info!(credentials = ?c, "AWS credentials resolved"),
                }
                *cached = Some((c.clone(), now));
                return Ok(c);
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => timed_out(),
        };
        // Credentials that have not expired keep signing through a failed refresh.
        if let Some((c, _)) = cached.as_ref()
            && c.expiry().is_none_or(|expiry| expiry > now)
        {
            tracing::warn!(error = %failure, "AWS credentials not refreshed; the last ones still sign");
            return Ok(c.clone());
        }
        Err(failure)
    }

    async fn build(&self) -> DefaultCredentialsChain {
        let config = ProviderConfig::without_region().with_http_client(ReqwestClient(self.client.clone()));
        DefaultCredentialsChain::builder()
            .configure(config)
            .region(Region::new(self.region.clone()))
            .build()
            .await
    }
}

/// Whether `c`, resolved at `at`, may sign at `now` without asking the chain again.
fn fresh(c: &AwsCredentials, at: SystemTime, now: SystemTime) -> bool {
    match c.expiry() {
        Some(expiry) => expiry > now + REFRESH_BEFORE,
        None => now.duration_since(at).is_ok_and(|age| age < RECHECK),
    }
}

/// The chain's failure as the caller sees it: what to set, or that what was set failed. The
/// details (file paths, a credential process's stderr) go to the log only: the agent's answers
/// reach every pod on the node.
fn describe(e: &CredentialsError) -> UpstreamError {
    let message = match e {
        CredentialsError::CredentialsNotLoaded(_) => {
            // Why each source had nothing, for whoever sets it up.
            tracing::warn!(error = %DisplayErrorContext(e), "no AWS credentials in the standard chain");
            format!("no AWS credentials: {CONFIGURE}")
        }
        other => {
            tracing::warn!(error = %DisplayErrorContext(other), "AWS credentials could not be loaded");
            format!("cannot load AWS credentials: {other} (the log says why)")
        }
    };
    UpstreamError::Local(message)
}

/// The chain's HTTP client (instance metadata, the container endpoint, web identity's STS):
/// this crate's reqwest on rustls with ring and the same roots as every upstream call, in
/// place of the SDK's default client, which would build aws-lc and a second TLS set-up.
#[derive(Clone, Debug)]
struct ReqwestClient(reqwest::Client);

impl HttpClient for ReqwestClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        // reqwest bounds a request as a whole: the two phases' budgets together.
        let timeout = match (settings.connect_timeout(), settings.read_timeout()) {
            (Some(connect), Some(read)) => Some(connect + read),
            (connect, read) => connect.or(read),
        };
        SharedHttpConnector::new(Connector {
            client: self.0.clone(),
            timeout,
        })
    }
}

#[derive(Debug)]
struct Connector {
    client: reqwest::Client,
    timeout: Option<Duration>,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (client, timeout) = (self.client.clone(), self.timeout);
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            // The chain sends small bodies held in memory (a token request, a form), never a stream.
            let body = body
                .bytes()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| ConnectorError::user("a streaming request body".into()))?;
            let mut builder = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body);
            if let Some(t) = timeout {
                builder = builder.timeout(t);
            }
            let response = builder.send().await.map_err(connector_error)?;
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = response.bytes().await.map_err(connector_error)?;
            let mut answer = axum::http::Response::new(SdkBody::from(bytes));
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            HttpResponse::try_from(answer).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// reqwest's failure in the kind the SDK's retry rules read (timeouts and I/O are retried).
fn connector_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

/// The headers of a SigV4-signed `POST url` with `body` of `content_type`, for `service` in
/// `region`: the content type, `x-amz-date`, `authorization` (and `x-amz-security-token`).
pub(crate) fn signed_headers(
    identity: &AwsCredentials,
    region: &str,
    service: &str,
    url: &Url,
    content_type: &'static str,
    body: &[u8],
) -> Result<HeaderMap, UpstreamError> {
    let local =
        |e: &dyn std::fmt::Display| UpstreamError::Local(format!("cannot sign the {service} call: {e}"));
    let identity = identity.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| local(&e))?
        .into();
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let unsigned = [("content-type", content_type), ("host", host.as_str())];
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        unsigned.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| local(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| local(&e))?.into_parts();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| local(&e))?;
        headers.insert(name, HeaderValue::from_str(value).map_err(|e| local(&e))?);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_asked_for_again_before_they_expire_or_after_a_while() {
        let now = SystemTime::now();
        let expiring = |in_secs: u64| {
            AwsCredentials::new(
                "a",
                "s",
                Some("t".into()),
                Some(now + Duration::from_secs(in_secs)),
                "t",
            )
        };
        assert!(fresh(&expiring(3600), now, now));
        assert!(!fresh(&expiring(299), now, now));
        let static_key = AwsCredentials::new("a", "s", None, None, "t");
        assert!(fresh(&static_key, now, now + Duration::from_secs(299)));
        assert!(!fresh(&static_key, now, now + RECHECK));
    }
}
