//! Credential backends: `local` (fake credentials, for development) and `cce` (the cloud's
//! assume-agency-for-pod-identity API, seed 000).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::credentials::{Backend, Credentials, UpstreamError, endpoint_url, error_message};
use super::token;
use crate::association::Store;
use crate::signer::{self, AccessKey};
use crate::watch::Fingerprint;

/// Mints well-formed, clearly fake credentials for the association of the token's service
/// account. The token's signature is NOT verified: development only.
pub struct LocalBackend {
    pub store: Arc<Store>,
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
            let index = self.store.load();
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
            Ok(Credentials {
                access_key_id: format!("LOCALFAKE{}", random(11)),
                secret_access_key: random(40),
                security_token: format!(
                    "local-fake-token.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
                        "{}|{}",
                        a.target(),
                        random(24)
                    ))
                ),
                expiration: now + lifetime,
                assumed_agency: Some((
                    format!("sts::local::assumed-agency:{}/{session}", a.target()),
                    format!("local:{session}"),
                )),
                association_id: Some(a.uid.clone()),
                subject: Some((claims.namespace, claims.service_account)),
                account_id: Some("000000000000".into()),
            })
        }
        .boxed()
    }
}

/// How the `cce` backend authenticates to the API.
pub enum CceAuth {
    /// `X-Auth-Token` read from a file, re-read when the file changes.
    TokenFile(TokenFile),
    /// SDK-HMAC-SHA256 signature with an access key.
    AkSk(AccessKey),
}

/// A token kept in a file (e.g. a projected Secret), re-read when it changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Fingerprint, String)>>,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> Self {
        TokenFile {
            path,
            cached: Mutex::new(None),
        }
    }

    pub fn read(&self) -> Result<String, String> {
        let fp = Fingerprint::of(std::slice::from_ref(&self.path));
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, token)) = cached.as_ref()
            && *old == fp
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read the auth token file {}: {e}", self.path.display()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(format!("the auth token file {} is empty", self.path.display()));
        }
        *cached = Some((fp, token.clone()));
        Ok(token)
    }
}

/// The client of seed 000: `POST {endpoint}/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity`.
pub struct CceBackend {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub project_id: String,
    pub auth: CceAuth,
}

impl CceBackend {
    pub fn new(
        client: reqwest::Client,
        endpoint: &str,
        project_id: &str,
        cluster_id: &str,
        auth: CceAuth,
    ) -> Result<Self, String> {
        let path =
            format!("/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity");
        let url = endpoint_url(endpoint, &path, "--cce-endpoint")?;
        Ok(CceBackend {
            client,
            url,
            project_id: project_id.to_owned(),
            auth,
        })
    }
}

impl Backend for CceBackend {
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>> {
        async move {
            let body = serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap_or_default();
            let headers = auth_headers(&self.auth, &self.url, "POST", &self.project_id, &body)?;
            post(&self.client, &self.url, headers, body, 200)
                .await
                .and_then(|b| Credentials::from_seed_000(&b))
        }
        .boxed()
    }
}

/// The headers that authenticate a JSON `method` request to `url`.
pub fn auth_headers(
    auth: &CceAuth,
    url: &reqwest::Url,
    method: &str,
    project_id: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, UpstreamError> {
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    match auth {
        CceAuth::TokenFile(file) => {
            let token = file
                .read()
                .map_err(|message| UpstreamError::Refused { status: 500, message })?;
            headers.push(("X-Auth-Token".into(), token));
            Ok(headers)
        }
        CceAuth::AkSk(key) => {
            if !project_id.is_empty() {
                headers.push(("X-Project-Id".into(), project_id.to_owned()));
            }
            let host = match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
                None => url.host_str().unwrap_or("").to_owned(),
            };
            let query: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let date = jiff::Timestamp::now().strftime(signer::DATE_FORMAT).to_string();
            let req = signer::Request {
                method,
                host: &host,
                path: url.path(),
                query: &query,
                headers,
                body,
            };
            Ok(signer::sign(key, req, &date))
        }
    }
}

/// POSTs `body`; the response body when the status is `ok`, else the upstream's refusal.
pub async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    ok: u16,
) -> Result<Vec<u8>, UpstreamError> {
    let mut req = client.post(url.clone()).body(body);
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("host") {
            req = req.header(k, v);
        }
    }
    let resp = req.send().await.map_err(|e| UpstreamError::from_reqwest(&e))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| UpstreamError::from_reqwest(&e))?;
    if status == ok || (ok == 200 && status == 201) {
        Ok(bytes.to_vec())
    } else {
        Err(UpstreamError::Refused {
            status,
            message: error_message(&bytes),
        })
    }
}

/// An HTTP client for upstream calls: rustls with ring, the public web PKI roots plus an
/// optional extra CA bundle (a private endpoint, or a test double).
pub fn http_client(ca_file: Option<&std::path::Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    crate::server::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA in {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}
