//! How this project authenticates to the cloud's APIs (CCE, IAM): an `X-Auth-Token` read
//! from a file, or an SDK-HMAC-SHA256 signature with an access key.

use std::path::PathBuf;
use std::sync::Mutex;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};

use super::UpstreamError;
use super::signer::{self, AccessKey};
use crate::watch::Fingerprint;

/// How requests to a cloud API are authenticated.
pub enum CloudAuth {
    /// `X-Auth-Token` read from a file, re-read when the file changes.
    TokenFile(TokenFile),
    /// SDK-HMAC-SHA256 signature with an access key.
    AkSk(AccessKey),
}

impl CloudAuth {
    pub(crate) fn is_signed(&self) -> bool {
        matches!(self, CloudAuth::AkSk(_))
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
                        "the auth token file {} holds characters a header cannot carry",
                        file.path.display()
                    ))
                })?;
                headers.insert("x-auth-token", value);
            }
            CloudAuth::AkSk(key) => {
                let date = jiff::Timestamp::now().strftime(signer::DATE_FORMAT).to_string();
                signer::sign(key, method, url, headers, body, &date);
            }
        }
        Ok(())
    }
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

    fn read(&self) -> Result<String, String> {
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
}
