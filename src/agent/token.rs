//! The pod's service-account token: taken from the `Authorization` header, its claims read.
//!
//! The claims are read without verifying the signature: the agent only uses them to reject
//! obviously bad tokens early (and the `local` backend to find the service account); whoever
//! issues credentials verifies the token (TokenReview in the exchange).

use base64::Engine;
use serde::Deserialize;

use crate::issuer::Audience;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing Authorization header: send the service account token from the token file")]
    Missing,
    #[error("empty Authorization header")]
    Empty,
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token expired at {0} (unix time); the kubelet rotates it in the token file: read it again")]
    Expired(i64),
}

/// The token from an `Authorization` header value: whitespace trimmed, a `Bearer ` prefix
/// tolerated (some SDKs send the raw token, some the bearer form).
pub(crate) fn from_header(value: Option<&[u8]>) -> Result<&str, TokenError> {
    let raw = value.ok_or(TokenError::Missing)?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| TokenError::Malformed("not UTF-8".into()))?
        .trim();
    let token = match text.get(..6) {
        Some(scheme)
            if scheme.eq_ignore_ascii_case("bearer")
                && text[6..].chars().next().is_none_or(char::is_whitespace) =>
        {
            text[6..].trim()
        }
        _ => text,
    };
    if token.is_empty() {
        Err(TokenError::Empty)
    } else {
        Ok(token)
    }
}

/// What a Kubernetes projected service-account token says about its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    /// The uid of the pod the token is bound to: tells a pod from its same-named successor.
    pub pod_uid: Option<String>,
    pub audiences: Vec<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubeClaims>,
}

#[derive(Deserialize)]
struct KubeClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

/// Reads the claims of `token` and checks it has not expired at `now` (unix seconds).
pub fn claims(token: &str, now: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("payload is not base64url: {e}")))?;
    let raw: RawClaims = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("payload is not JSON claims: {e}")))?;
    if let Some(exp) = raw.exp
        && exp <= now
    {
        return Err(TokenError::Expired(exp));
    }
    let k = raw.kubernetes.as_ref();
    // `sub` is system:serviceaccount:<namespace>:<name> for every service-account token.
    let from_sub = raw
        .sub
        .as_deref()
        .and_then(|s| s.strip_prefix("system:serviceaccount:"))
        .and_then(|s| s.split_once(':'));
    let namespace = k
        .and_then(|k| k.namespace.clone())
        .or(from_sub.map(|(ns, _)| ns.to_owned()));
    let service_account = k
        .and_then(|k| k.serviceaccount.as_ref()?.name.clone())
        .or(from_sub.map(|(_, sa)| sa.to_owned()));
    let (Some(namespace), Some(service_account)) = (namespace, service_account) else {
        return Err(TokenError::Malformed(
            "not a Kubernetes service account token (no namespace/service account)".into(),
        ));
    };
    let pod = k.and_then(|k| k.pod.as_ref());
    Ok(Claims {
        namespace,
        service_account,
        pod_name: pod.and_then(|p| p.name.clone()),
        pod_uid: pod.and_then(|p| p.uid.clone()),
        audiences: raw.aud.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned(namespace: &str, service_account: &str, pod: &str, audience: &str, exp: i64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = serde_json::json!({
            "aud": [audience], "exp": exp,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {"namespace": namespace, "pod": {"name": pod, "uid": format!("{pod}-uid")}, "serviceaccount": {"name": service_account}},
        });
        format!("e30.{}.c2ln", b64.encode(payload.to_string()))
    }

    #[test]
    fn header_forms() {
        assert_eq!(from_header(Some(b" abc \n")), Ok("abc"));
        assert_eq!(from_header(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(from_header(None), Err(TokenError::Missing));
        assert_eq!(from_header(Some(b"  ")), Err(TokenError::Empty));
        assert_eq!(from_header(Some(b"Bearer ")), Err(TokenError::Empty));
    }

    #[test]
    fn reads_kubernetes_claims() {
        let t = unsigned("pi-demo", "app", "app-1", "service.cce.pods", 2_000_000_000);
        let c = claims(&t, 1_900_000_000).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str()),
            ("pi-demo", "app")
        );
        assert_eq!(c.pod_name.as_deref(), Some("app-1"));
        assert_eq!(c.pod_uid.as_deref(), Some("app-1-uid"));
        assert_eq!(c.audiences, ["service.cce.pods"]);
        assert_eq!(claims(&t, 2_000_000_000), Err(TokenError::Expired(2_000_000_000)));
    }

    #[test]
    fn rejects_what_is_not_a_service_account_jwt() {
        for bad in ["abc", "a.b", "a.!!!.c", "a.e30.c", "a.bm90IGpzb24.c", "a.b.c.d"] {
            assert!(matches!(claims(bad, 0), Err(TokenError::Malformed(_))), "{bad}");
        }
    }
}
