//! AWS request signing: SigV4 with AWS's own signer (`aws-sigv4`), and the access key of the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).

use std::time::SystemTime;

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::UpstreamError;

/// The environment's AWS access key, read on every call so rotated values are used.
pub(crate) fn env_credentials() -> Result<AwsCredentials, UpstreamError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(ak), Some(sk)) => Ok(AwsCredentials::new(ak, sk, var("AWS_SESSION_TOKEN"), None, "env")),
        _ => Err(UpstreamError::Local(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
        )),
    }
}

/// A fixed access key (tests, static setups).
pub(crate) fn fixed(access_key_id: &str, secret_access_key: &str) -> AwsCredentials {
    AwsCredentials::new(access_key_id, secret_access_key, None, None, "fixed")
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
