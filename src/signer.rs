//! The cloud's SDK-HMAC-SHA256 request signing (AK/SK), as the official SDKs do it.
//!
//! Canonical request = method, URI (each segment percent-encoded, trailing `/`), sorted query,
//! the signed headers (every header without `_`, lowercased, sorted) with trimmed values, their
//! names, and the hex SHA-256 of the body; the signature is the hex HMAC-SHA256 of
//! `SDK-HMAC-SHA256\n<X-Sdk-Date>\n<hex sha256 of the canonical request>` keyed by the SK.

use std::fmt;

use ring::{digest, hmac};

pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// Format of the `X-Sdk-Date` header.
pub const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// An access key pair, possibly temporary (with a security token).
#[derive(Clone)]
pub struct AccessKey {
    pub ak: String,
    pub sk: String,
    pub security_token: Option<String>,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret parts.
        f.debug_struct("AccessKey")
            .field("ak", &self.ak)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    /// From `HUAWEICLOUD_SDK_AK`, `HUAWEICLOUD_SDK_SK` and optional `HUAWEICLOUD_SDK_SECURITY_TOKEN`.
    pub fn from_env() -> Option<Self> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(AccessKey {
            ak: get("HUAWEICLOUD_SDK_AK")?,
            sk: get("HUAWEICLOUD_SDK_SK")?,
            security_token: get("HUAWEICLOUD_SDK_SECURITY_TOKEN"),
        })
    }
}

/// A request to sign. `headers` must already hold every header that will be sent and signed
/// (the signer adds `X-Sdk-Date`, `Host`, and `X-Security-Token` for temporary keys).
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// Signs `req` at `date` (formatted with [`DATE_FORMAT`]); returns the headers to send,
/// `Authorization` included.
pub fn sign(key: &AccessKey, mut req: Request<'_>, date: &str) -> Vec<(String, String)> {
    if let Some(t) = &key.security_token {
        req.headers.push(("X-Security-Token".into(), t.clone()));
    }
    if !has(&req.headers, "x-sdk-date") {
        req.headers.push(("X-Sdk-Date".into(), date.into()));
    }
    if !has(&req.headers, "host") {
        req.headers.push(("Host".into(), req.host.into()));
    }
    let mut signed: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| !k.contains('_'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    signed.sort();
    let names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        canonical_uri(req.path),
        canonical_query(req.query),
        canonical_headers,
        names,
        hex(digest::digest(&digest::SHA256, req.body).as_ref()),
    );
    let to_sign = format!(
        "{ALGORITHM}\n{date}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.sk.as_bytes()),
        to_sign.as_bytes(),
    );
    req.headers.push((
        "Authorization".into(),
        format!(
            "{ALGORITHM} Access={}, SignedHeaders={names}, Signature={}",
            key.ak,
            hex(mac.as_ref())
        ),
    ));
    req.headers
}

fn has(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

fn canonical_uri(path: &str) -> String {
    let mut out = path
        .split('/')
        .map(|seg| encode(&percent_decode(seg)))
        .collect::<Vec<_>>()
        .join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut q: Vec<_> = query.to_vec();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes all but unreserved characters (Python's `quote(s, safe='~')`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(pair) = bytes.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_and_query_are_canonical() {
        assert_eq!(canonical_uri("/v3/a b/c"), "/v3/a%20b/c/");
        assert_eq!(canonical_uri("/v3/a%20b/"), "/v3/a%20b/");
        assert_eq!(canonical_query(&[("b", "2"), ("a", "x y")]), "a=x%20y&b=2");
        assert_eq!(encode("a~b-c_d.e/f"), "a~b-c_d.e%2Ff");
    }

    #[test]
    fn signature_changes_with_every_input() {
        let key = AccessKey {
            ak: "AK".into(),
            sk: "SK".into(),
            security_token: None,
        };
        let sign_with = |body: &[u8], path: &str| {
            let req = Request {
                method: "POST",
                host: "h",
                path,
                query: &[],
                headers: vec![],
                body,
            };
            let h = sign(&key, req, "20260101T000000Z");
            h.into_iter().find(|(k, _)| k == "Authorization").unwrap().1
        };
        let a = sign_with(b"{}", "/x");
        assert!(a.starts_with("SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature="));
        assert_ne!(a, sign_with(b"{ }", "/x"));
        assert_ne!(a, sign_with(b"{}", "/y"));
        assert!(!format!("{key:?}").contains("SK"));
    }
}
