//! The HTTP client for upstream calls: rustls with ring, the public roots plus an optional CA
//! bundle, a deadline per call, and no redirects (a redirect would re-send the pod's token and
//! our credentials to wherever it points).

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

/// A client trusting the public web PKI roots plus the certificates in `ca_file`, with
/// `timeout` for each whole call.
pub fn http_client(ca_file: Option<&Path>, timeout: Duration) -> Result<Client, ClientError> {
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
    Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
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

/// POSTs `body` with exactly `headers`; the response body when the status is `ok`, else the
/// upstream's refusal with the message of its error body.
pub(crate) async fn post(
    client: &Client,
    url: &Url,
    mut headers: HeaderMap,
    body: Vec<u8>,
    ok: u16,
) -> Result<Vec<u8>, UpstreamError> {
    // The client derives the same Host from the URL (the signer signed that value).
    headers.remove(HOST);
    let resp = client
        .post(url.clone())
        .headers(headers)
        .body(body)
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
