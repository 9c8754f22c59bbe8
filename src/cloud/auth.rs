//! How this project authenticates to the cloud's APIs (CCE, IAM): an `X-Auth-Token` read
//! from a file, or an SDK-HMAC-SHA256 signature with an access key (from mounted files, or the
//! environment for development).

use std::path::PathBuf;
use std::sync::Mutex;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};

use super::UpstreamError;
use super::client::{Upstream, http_client};
use super::signer::{self, AccessKey};
use crate::args::{ArgError, seconds};
use crate::file_watch::Fingerprint;

/// How requests to a cloud API are authenticated.
pub enum CloudAuth {
    /// `X-Auth-Token` read from a file, re-read when the file changes.
    TokenFile(TokenFile),
    /// SDK-HMAC-SHA256 signature with an access key.
    AkSk(AccessKey),
    /// The same with the key pair read from files (e.g. a mounted Secret), re-read when they
    /// change, so a rotated Secret needs no restart.
    AkSkFiles { ak: TokenFile, sk: TokenFile },
}

impl CloudAuth {
    pub(crate) fn is_signed(&self) -> bool {
        matches!(self, CloudAuth::AkSk(_) | CloudAuth::AkSkFiles { .. })
    }

    /// Authenticates a `method` request to `url` with `body`. `headers` must already hold
    /// every other header to be sent: a signature covers exactly them.
    pub(crate) fn apply(
        &self,
        method: &str,
        url: &Url,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<(), UpstreamError> {
        match self {
            CloudAuth::TokenFile(file) => {
                let token = file.read().map_err(UpstreamError::Local)?;
                let value = HeaderValue::from_str(&token).map_err(|_| {
                    UpstreamError::Local(format!(
                        "the {} {} holds characters a header cannot carry",
                        file.what,
                        file.path.display()
                    ))
                })?;
                headers.insert("x-auth-token", value);
            }
            CloudAuth::AkSk(key) => sign(key, method, url, headers, body),
            CloudAuth::AkSkFiles { ak, sk } => {
                let key = AccessKey {
                    ak: ak.read().map_err(UpstreamError::Local)?,
                    sk: sk.read().map_err(UpstreamError::Local)?,
                    security_token: None,
                };
                sign(&key, method, url, headers, body);
            }
        }
        Ok(())
    }
}

/// Signs now.
fn sign(key: &AccessKey, method: &str, url: &Url, headers: &mut HeaderMap, body: &[u8]) {
    let date = jiff::Timestamp::now().strftime(signer::DATE_FORMAT).to_string();
    signer::sign(key, method, url, headers, body, &date);
}

/// A secret kept in a file (e.g. a projected token or a mounted Secret), re-read when it
/// changes.
pub struct TokenFile {
    path: PathBuf,
    /// What the file holds, for errors.
    what: &'static str,
    cached: Mutex<Option<(Fingerprint, String)>>,
}

impl TokenFile {
    /// The file of an auth token.
    pub fn new(path: PathBuf) -> Self {
        Self::holding(path, "auth token file")
    }

    /// A file holding `what`.
    pub(crate) fn holding(path: PathBuf, what: &'static str) -> Self {
        TokenFile {
            path,
            what,
            cached: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<String, String> {
        let fp = Fingerprint::of(std::slice::from_ref(&self.path));
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, token)) = cached.as_ref()
            && *old == fp
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read the {} {}: {e}", self.what, self.path.display()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(format!("the {} {} is empty", self.what, self.path.display()));
        }
        *cached = Some((fp, token.clone()));
        Ok(token)
    }
}

/// Authentication to the cloud APIs: a token file, an access key from files, or (for
/// development) from the environment.
#[derive(clap::Args)]
#[group(id = "CloudAuthArgs")]
pub(crate) struct Args {
    /// File holding a token sent as X-Auth-Token (re-read when it changes). Without it,
    /// requests are signed with the access key from --access-key-file/--secret-key-file, else
    /// from HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK (and HUAWEICLOUD_SDK_SECURITY_TOKEN for
    /// temporary keys) in the environment.
    #[arg(
        long,
        env = "POD_IDENTITY_AUTH_TOKEN_FILE",
        conflicts_with = "access_key_file"
    )]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// File holding the access key id (AK), e.g. a mounted Secret; re-read when it changes.
    #[arg(long, env = "POD_IDENTITY_ACCESS_KEY_FILE", requires = "secret_key_file")]
    pub(crate) access_key_file: Option<PathBuf>,
    /// File holding the secret access key (SK); re-read when it changes.
    #[arg(long, env = "POD_IDENTITY_SECRET_KEY_FILE", requires = "access_key_file")]
    pub(crate) secret_key_file: Option<PathBuf>,
    /// Extra CA bundle (PEM) to trust for upstream HTTPS, besides the public roots.
    #[arg(long, env = "POD_IDENTITY_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Seconds an upstream call may take, its one retry included (default: the agent 4, the
    /// exchange 2.5, so that the exchange answers within the agent's deadline).
    #[arg(long)]
    pub(crate) upstream_timeout: Option<f64>,
}

impl Args {
    /// The token file, else the key files, else the access key from the environment.
    pub(crate) fn auth(&self) -> Result<CloudAuth, ArgError> {
        if let Some(path) = &self.auth_token_file {
            return Ok(CloudAuth::TokenFile(TokenFile::new(path.clone())));
        }
        if let (Some(ak), Some(sk)) = (&self.access_key_file, &self.secret_key_file) {
            return Ok(CloudAuth::AkSkFiles {
                ak: TokenFile::holding(ak.clone(), "access key file"),
                sk: TokenFile::holding(sk.clone(), "secret key file"),
            });
        }
        AccessKey::from_env().map(CloudAuth::AkSk).ok_or_else(|| {
            ArgError(
                "set --auth-token-file, or --access-key-file and --secret-key-file, or (for \
                 development) HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"
                    .into(),
            )
        })
    }

    /// The upstream client; `default_timeout` seconds per call unless the flag says otherwise.
    pub(crate) fn client(&self, default_timeout: f64) -> Result<Upstream, ArgError> {
        let timeout = seconds(
            "upstream-timeout",
            self.upstream_timeout.unwrap_or(default_timeout),
        )?;
        http_client(self.ca_file.as_deref(), timeout).map_err(|e| ArgError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_trimmed_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let auth = CloudAuth::TokenFile(TokenFile::new(path.clone()));
        let url = Url::parse("https://iam.example/v3").unwrap();
        let mut h = HeaderMap::new();
        let e = auth.apply("POST", &url, &mut h, b"").unwrap_err();
        assert!(e.to_string().contains("cannot read the auth token file"), "{e}");
        std::fs::write(&path, "tok-1\n").unwrap();
        auth.apply("POST", &url, &mut h, b"").unwrap();
        assert_eq!(h["x-auth-token"], "tok-1");
        std::fs::write(&path, "tok-22\n").unwrap();
        auth.apply("POST", &url, &mut h, b"").unwrap();
        assert_eq!(h["x-auth-token"], "tok-22");
        std::fs::write(&path, " \n").unwrap();
        assert!(auth.apply("POST", &url, &mut h, b"").is_err());
    }

    #[test]
    fn key_files_sign_like_the_same_key_and_are_re_read() {
        let dir = tempfile::tempdir().unwrap();
        let (ak, sk) = (dir.path().join("ak"), dir.path().join("sk"));
        let files = CloudAuth::AkSkFiles {
            ak: TokenFile::holding(ak.clone(), "access key file"),
            sk: TokenFile::holding(sk.clone(), "secret key file"),
        };
        assert!(files.is_signed());
        let url = Url::parse("https://iam.example/v3").unwrap();
        let e = files.apply("POST", &url, &mut HeaderMap::new(), b"").unwrap_err();
        assert!(e.to_string().contains("cannot read the access key file"), "{e}");
        let signed = |auth: &CloudAuth| {
            let mut h = HeaderMap::new();
            h.insert("x-sdk-date", HeaderValue::from_static("20261123T150000Z"));
            auth.apply("POST", &url, &mut h, b"{}").unwrap();
            h["authorization"].to_str().unwrap().to_owned()
        };
        for (a, s) in [("AK1", "sk-one"), ("AK22", "sk-two-2")] {
            std::fs::write(&ak, format!("{a}\n")).unwrap();
            std::fs::write(&sk, s).unwrap();
            let fixed = CloudAuth::AkSk(AccessKey {
                ak: a.into(),
                sk: s.into(),
                security_token: None,
            });
            assert_eq!(signed(&files), signed(&fixed));
            assert!(signed(&files).contains(&format!("Access={a}")));
        }
    }
}
