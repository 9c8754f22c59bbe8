//! The cloud's SDK-HMAC-SHA256 request signing (AK/SK), as the official SDKs do it.
//!
//! Canonical request = method, URI (each segment percent-encoded, trailing `/`), sorted query,
//! the signed headers (every header without `_`, lowercased, sorted) with trimmed values, their
//! names, and the hex SHA-256 of the body; the signature is the hex HMAC-SHA256 of
//! `SDK-HMAC-SHA256\n<X-Sdk-Date>\n<hex sha256 of the canonical request>` keyed by the SK.

use std::fmt;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HOST, HeaderMap, HeaderValue};
use ring::{digest, hmac};

const ALGORITHM: &str = "SDK-HMAC-SHA256";
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
    pub(crate) fn from_env() -> Option<Self> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(AccessKey {
            ak: get("HUAWEICLOUD_SDK_AK")?,
            sk: get("HUAWEICLOUD_SDK_SK")?,
            security_token: get("HUAWEICLOUD_SDK_SECURITY_TOKEN"),
        })
    }
}

/// Signs a request at `date` (formatted with [`DATE_FORMAT`]). `headers` must already hold
/// every header that will be sent: the signer adds `X-Security-Token` (temporary keys),
/// `X-Sdk-Date` and `Host` (derived from `url` as the HTTP client sends it) when absent, signs
/// them all, and adds `Authorization`. What is signed is exactly what is in `headers`.
pub fn sign(key: &AccessKey, method: &str, url: &Url, headers: &mut HeaderMap, body: &[u8], date: &str) {
    if let Some(t) = &key.security_token
        && let Ok(v) = HeaderValue::from_str(t)
    {
        headers.insert("x-security-token", v);
    }
    if !headers.contains_key("x-sdk-date")
        && let Ok(v) = HeaderValue::from_str(date)
    {
        headers.insert("x-sdk-date", v);
    }
    if !headers.contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(&host_of(url))
    {
        headers.insert(HOST, v);
    }
    // Names are lowercase in a HeaderMap; the SDK skips names with `_` and trims values.
    let mut signed: Vec<(&str, String)> = headers
        .iter()
        .filter(|(k, _)| !k.as_str().contains('_'))
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).trim().to_owned(),
            )
        })
        .collect();
    signed.sort();
    let names = signed.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(url.path()),
        canonical_query(&query),
        canonical_headers,
        names,
        hex(digest::digest(&digest::SHA256, body).as_ref()),
    );
    let to_sign = format!(
        "{ALGORITHM}\n{date}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.sk.as_bytes()),
        to_sign.as_bytes(),
    );
    let authorization = format!(
        "{ALGORITHM} Access={}, SignedHeaders={names}, Signature={}",
        key.ak,
        hex(mac.as_ref())
    );
    if let Ok(v) = HeaderValue::from_str(&authorization) {
        headers.insert(AUTHORIZATION, v);
    }
}

/// `host[:port]` as an HTTP client sends it: the port only when it is not the scheme's default.
fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
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

fn canonical_query(query: &[(String, String)]) -> String {
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
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_and_query_are_canonical() {
        assert_eq!(canonical_uri("/v3/a b/c"), "/v3/a%20b/c/");
        assert_eq!(canonical_uri("/v3/a%20b/"), "/v3/a%20b/");
        let q = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(canonical_query(&[q("b", "2"), q("a", "x y")]), "a=x%20y&b=2");
        assert_eq!(encode("a~b-c_d.e/f"), "a~b-c_d.e%2Ff");
    }

    #[test]
    fn signature_changes_with_every_input_and_covers_every_header() {
        let key = AccessKey {
            ak: "AK".into(),
            sk: "SK".into(),
            security_token: None,
        };
        let sign_with = |body: &[u8], path: &str, content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
            let url = Url::parse(&format!("https://h{path}")).unwrap();
            sign(&key, "POST", &url, &mut headers, body, "20260101T000000Z");
            assert_eq!(headers["host"], "h");
            headers[AUTHORIZATION].to_str().unwrap().to_owned()
        };
        let a = sign_with(b"{}", "/x", "application/json");
        assert!(
            a.starts_with(
                "SDK-HMAC-SHA256 Access=AK, SignedHeaders=content-type;host;x-sdk-date, Signature="
            ),
            "{a}"
        );
        assert_ne!(a, sign_with(b"{ }", "/x", "application/json"));
        assert_ne!(a, sign_with(b"{}", "/y", "application/json"));
        assert_ne!(a, sign_with(b"{}", "/x", "application/json;charset=utf8"));
        assert!(!format!("{key:?}").contains("SK"));
    }

    #[test]
    fn the_host_carries_a_port_only_when_it_is_not_the_default() {
        assert_eq!(host_of(&Url::parse("https://a.b/x").unwrap()), "a.b");
        assert_eq!(host_of(&Url::parse("https://a.b:443/x").unwrap()), "a.b");
        assert_eq!(
            host_of(&Url::parse("http://127.0.0.1:8080/x").unwrap()),
            "127.0.0.1:8080"
        );
    }
}
