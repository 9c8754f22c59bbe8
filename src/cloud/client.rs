//! The HTTP client for upstream calls: rustls with ring, the public roots plus an optional CA
//! bundle, a deadline per call with at most one retry inside it, and no redirects (a redirect
//! would re-send the pod's token and our credentials to wherever it points).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HOST, HeaderMap};
use reqwest::{Client, Url};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{UpstreamError, error};

/// Why an upstream client or endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    #[error("bad {flag} {endpoint:?}: {source}")]
    Endpoint {
        flag: &'static str,
        endpoint: String,
        source: url::ParseError,
    },
}

/// An upstream client: every call, its one retry included, ends within `deadline`.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    deadline: Duration,
}

/// A client trusting the public web PKI roots plus the certificates in `ca_file`, with
/// `deadline` for each whole call.
pub fn http_client(ca_file: Option<&Path>, deadline: Duration) -> Result<Upstream, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let ca_err = |message: String| ClientError::CaFile {
            path: path.into(),
            message,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let cert = cert.map_err(|e| ca_err(format!("bad certificate: {e}")))?;
            roots.add(cert).map_err(|e| ca_err(format!("unusable CA: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(deadline.min(Duration::from_secs(2)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    Ok(Upstream { client, deadline })
}

/// `endpoint` (a base URL, trailing `/` or not) joined with `path`; errors name `flag`.
pub(crate) fn endpoint_url(endpoint: &str, path: &str, flag: &'static str) -> Result<Url, ClientError> {
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    Url::parse(&url).map_err(|source| ClientError::Endpoint {
        flag,
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// Whether a failed attempt is worth one more within the deadline: the upstream was not
/// reached, or said it is overloaded or briefly unavailable.
fn retryable(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Unreachable(_) => true,
        UpstreamError::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        UpstreamError::Timeout | UpstreamError::Invalid(_) | UpstreamError::Local(_) => false,
    }
}

/// Pause before the retry, so a briefly overloaded upstream is not hit again at once.
const BACKOFF: Duration = Duration::from_millis(100);

impl Upstream {
    /// The HTTP client under the deadline (for calls made by AWS's credential chain).
    pub(crate) fn reqwest(&self) -> &Client {
        &self.client
    }

    /// How long one call may take, its retry included.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// POSTs `body` with exactly `headers`; the response body when the status is `ok`, else
    /// the upstream's refusal with the message of its error body. One retry when the first
    /// attempt failed in a way worth retrying and the deadline leaves room for it; a request
    /// whose headers carry a signature is retried as signed (the signature stays valid well
    /// beyond the deadline).
    pub(crate) async fn post(
        &self,
        url: &Url,
        headers: HeaderMap,
        body: Vec<u8>,
        ok: u16,
    ) -> Result<Vec<u8>, UpstreamError> {
        let until = tokio::time::Instant::now() + self.deadline;
        self.post_by(url, headers, body, ok, until).await
    }

    /// The same, ending by `until`: what is left of a deadline that began before the request
    /// was ready (its credentials were being resolved).
    pub(crate) async fn post_by(
        &self,
        url: &Url,
        mut headers: HeaderMap,
        body: Vec<u8>,
        ok: u16,
        until: tokio::time::Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        // The client derives the same Host from the URL (the signer signed that value).
        headers.remove(HOST);
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(UpstreamError::Timeout);
        }
        let first = self.attempt(url, headers.clone(), body.clone(), ok, left).await;
        match first {
            Err(e) if retryable(&e) => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left <= BACKOFF * 2 {
                    return Err(e);
                }
                tracing::debug!(error = %e, "upstream call failed; retrying once");
                tokio::time::sleep(BACKOFF).await;
                self.attempt(url, headers, body, ok, left - BACKOFF).await
            }
            other => other,
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        headers: HeaderMap,
        body: Vec<u8>,
        ok: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UpstreamError> {
        let resp = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| UpstreamError::from_reqwest(&e))?;
        // A create answered with 201 where 200 was documented is still a success.
        if status == ok || (ok == 200 && status == 201) {
            Ok(bytes.to_vec())
        } else {
            Err(UpstreamError::Refused {
                status,
                message: error::message(&bytes),
            })
        }
    }
}
