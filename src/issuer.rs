//! The cluster's service-account issuer: its signing keys, read from the API server
//! (`/.well-known/openid-configuration` and `/openid/v1/jwks`, which every service account may
//! read), cached and refreshed, and local verification of service-account tokens against them.
//!
//! Checking a token here costs one signature verification and no request: a forged or foreign
//! token is refused before it can spend an upstream budget or a TokenReview. A token that
//! passes still goes to TokenReview, which alone knows about revocation and bound objects.
//! Until keys have been read (the API server unreachable at start, the endpoint forbidden),
//! tokens are not checked here and TokenReview decides alone, as without this module.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use ring::signature;
use serde::Deserialize;
use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{ByResult, Page};

/// At most one read of the keys per this interval for tokens naming a key not known (a key
/// rotated in, or a forgery).
pub const KEY_READ_INTERVAL: Duration = Duration::from_secs(10);
/// How often the keys are read again when nothing asks for an unknown one.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// How soon after a failed read the keys are read again, while none are known.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// Tolerance for a token's not-before time (clocks of the API server and this node differ).
const NOT_BEFORE_LEEWAY: i64 = 60;

/// Why a token was refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the token is not a signed JWT")]
    Malformed,
    #[error("the token is signed with an algorithm service-account tokens do not use")]
    Algorithm,
    #[error("the token was issued by another issuer than this cluster's service accounts")]
    Issuer,
    #[error("the token is not for this audience")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is signed with a key this cluster does not have")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
}

impl Unverified {
    const ALL: [Unverified; 8] = [
        Unverified::Malformed,
        Unverified::Algorithm,
        Unverified::Issuer,
        Unverified::Audience,
        Unverified::Expired,
        Unverified::NotYetValid,
        Unverified::UnknownKey,
        Unverified::Signature,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Unverified::Malformed => "malformed",
            Unverified::Algorithm => "algorithm",
            Unverified::Issuer => "issuer",
            Unverified::Audience => "audience",
            Unverified::Expired => "expired",
            Unverified::NotYetValid => "not_yet_valid",
            Unverified::UnknownKey => "unknown_key",
            Unverified::Signature => "signature",
        }
    }
}

/// What local verification says of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by one of the cluster's keys, for the audience, within its lifetime.
    Valid,
    /// Not judged here: no keys known yet, or (with no audience asked) a token of another
    /// issuer, which only the API server's other authenticators can judge.
    NotChecked,
    Refused(Unverified),
}

/// What verification did, for `/metrics`.
#[derive(Debug, Default)]
pub struct IssuerMetrics {
    /// By result: `valid`, `not_checked`, or why a token was refused.
    verifications: Family<ResultLabel, Counter>,
    fetches: ByResult,
    keys: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::NotChecked => "not_checked",
            Verdict::Refused(r) => r.as_str(),
        }
    }
}

impl IssuerMetrics {
    fn count(&self, v: Verdict) {
        self.row(v).inc();
    }

    fn row(&self, v: Verdict) -> Counter {
        let result = v.as_str();
        self.verifications.get_or_create(&ResultLabel { result }).clone()
    }

    /// Tokens refused here for `reason` (its metric label).
    pub fn refused(&self, reason: &str) -> u64 {
        Unverified::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .map_or(0, |r| self.row(Verdict::Refused(r)).get())
    }

    /// Reads of the keys from the API server, successful or not.
    pub fn fetches(&self) -> u64 {
        self.fetches.total()
    }

    pub(crate) fn add_to(&self, page: &mut Page) {
        let every = [Verdict::Valid, Verdict::NotChecked]
            .into_iter()
            .chain(Unverified::ALL.map(Verdict::Refused));
        for v in every {
            self.row(v);
        }
        page.add(
            "podidentity_token_verifications_total",
            "Service-account tokens checked against the cluster's signing keys before any upstream call, by result.",
            self.verifications.clone(),
        );
        self.fetches.add_to(
            page,
            "podidentity_issuer_key_fetches_total",
            "Reads of the service-account issuer's keys from the API server, by result.",
        );
        page.add(
            "podidentity_issuer_keys",
            "Signing keys of the service-account issuer known (0: tokens are left to TokenReview).",
            self.keys.clone(),
        );
    }
}

/// A public key of the issuer.
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        alg: &'static signature::EcdsaVerificationAlgorithm,
        point: Vec<u8>,
    },
}

impl Key {
    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), Unverified> {
        let ok = match (self, alg) {
            (Key::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Key::Ec { alg: a, point }, "ES256" | "ES384") => {
                let wanted: &signature::EcdsaVerificationAlgorithm = if alg == "ES256" {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                std::ptr::eq(*a, wanted)
                    && signature::UnparsedPublicKey::new(*a, point)
                        .verify(message, sig)
                        .is_ok()
            }
            _ => false,
        };
        ok.then_some(()).ok_or(Unverified::Signature)
    }
}

/// The keys read at one time, with the issuer they sign for.
struct KeySet {
    issuer: String,
    keys: HashMap<String, Key>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The keys of a JWKS document that can verify tokens (others are skipped).
fn parse_keys(jwks: &[u8]) -> Result<HashMap<String, Key>, String> {
    let doc: Jwks = serde_json::from_slice(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for k in doc.keys {
        let Some(kid) = k.kid else { continue };
        let key = match (k.kty.as_str(), k.crv.as_deref()) {
            ("RSA", _) => match (k.n.as_deref().and_then(b64), k.e.as_deref().and_then(b64)) {
                (Some(n), Some(e)) => Key::Rsa { n, e },
                _ => continue,
            },
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (Some(x), Some(y)) = (k.x.as_deref().and_then(b64), k.y.as_deref().and_then(b64)) else {
                    continue;
                };
                let alg: &'static signature::EcdsaVerificationAlgorithm = if crv == "P-256" {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                Key::Ec { alg, point }
            }
            _ => continue,
        };
        keys.insert(kid, key);
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

/// A JWT's `aud`: absent, one string, or a list.
#[derive(Deserialize, Default)]
#[serde(untagged)]
pub(crate) enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, a: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(s) => s == a,
            Audience::Many(v) => v.iter().any(|s| s == a),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Audience::None => vec![],
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        }
    }
}

/// A token split and decoded: what is checked before any key is looked up.
struct Parsed<'t> {
    header: Header,
    claims: Claims,
    signed: &'t [u8],
    signature: Vec<u8>,
}

fn parse(token: &str) -> Result<Parsed<'_>, Unverified> {
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Unverified::Malformed);
    };
    let json = |part: &str| b64(part).ok_or(Unverified::Malformed);
    let header: Header = serde_json::from_slice(&json(h)?).map_err(|_| Unverified::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json(p)?).map_err(|_| Unverified::Malformed)?;
    Ok(Parsed {
        header,
        claims,
        signed: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: json(s)?,
    })
}

/// The issuer's keys, kept fresh, and the checks against them.
pub struct IssuerKeys {
    client: kube::Client,
    keys: ArcSwapOption<KeySet>,
    /// When the keys were last read (or tried); held while a read is under way, so that
    /// concurrent requests for an unknown key share one read.
    last_read: tokio::sync::Mutex<Option<Instant>>,
    /// At most one read per this interval for tokens naming an unknown key.
    min_interval: Duration,
    metrics: Arc<IssuerMetrics>,
}

impl IssuerKeys {
    /// Keys read with `client` (whose deadline bounds each read), refreshed in the background
    /// until the returned value is dropped; a token naming an unknown key reads them again at
    /// most once per `min_interval`.
    pub fn start(client: kube::Client, min_interval: Duration, metrics: Arc<IssuerMetrics>) -> Arc<Self> {
        let keys = Arc::new(IssuerKeys {
            client,
            keys: ArcSwapOption::empty(),
            last_read: tokio::sync::Mutex::new(None),
            min_interval,
            metrics,
        });
        let weak = Arc::downgrade(&keys);
        tokio::spawn(async move {
            loop {
                let Some(keys) = weak.upgrade() else { return };
                keys.read_keys().await;
                let wait = if keys.keys.load().is_some() {
                    REFRESH_EVERY
                } else {
                    RETRY_EVERY
                };
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
        keys
    }

    /// Whether keys have been read.
    pub fn loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Checks `token` for `audience` at unix time `now`. With no audience (a token for the API
    /// server itself), a token of another issuer is left to TokenReview.
    pub async fn verify(&self, token: &str, audience: Option<&str>, now: i64) -> Verdict {
        let verdict = self.judge(token, audience, now).await;
        self.metrics.count(verdict);
        verdict
    }

    async fn judge(&self, token: &str, audience: Option<&str>, now: i64) -> Verdict {
        let Some(set) = self.keys.load_full() else {
            return Verdict::NotChecked;
        };
        let t = match parse(token) {
            Ok(t) => t,
            Err(_) if audience.is_none() => return Verdict::NotChecked,
            Err(e) => return Verdict::Refused(e),
        };
        if t.claims.iss.as_deref() != Some(set.issuer.as_str()) {
            return match audience {
                None => Verdict::NotChecked,
                Some(_) => Verdict::Refused(Unverified::Issuer),
            };
        }
        if !matches!(t.header.alg.as_str(), "RS256" | "ES256" | "ES384") {
            return Verdict::Refused(Unverified::Algorithm);
        }
        if let Some(a) = audience
            && !t.claims.aud.contains(a)
        {
            return Verdict::Refused(Unverified::Audience);
        }
        match t.claims.exp {
            Some(exp) if exp > now => {}
            _ => return Verdict::Refused(Unverified::Expired),
        }
        if t.claims.nbf.is_some_and(|nbf| nbf > now + NOT_BEFORE_LEEWAY) {
            return Verdict::Refused(Unverified::NotYetValid);
        }
        let Some(kid) = t.header.kid.as_deref() else {
            return Verdict::Refused(Unverified::UnknownKey);
        };
        let set = if set.keys.contains_key(kid) {
            set
        } else {
            // A key rotated in since the last read, or a forgery: read again, boundedly.
            self.read_keys_for_unknown().await;
            match self.keys.load_full() {
                Some(s) if s.keys.contains_key(kid) => s,
                _ => return Verdict::Refused(Unverified::UnknownKey),
            }
        };
        match set.keys[kid].verify(&t.header.alg, t.signed, &t.signature) {
            Ok(()) => Verdict::Valid,
            Err(e) => Verdict::Refused(e),
        }
    }

    /// Reads the keys again unless they were read within `min_interval`; a read under way is
    /// waited for and shared.
    async fn read_keys_for_unknown(&self) {
        let last = self.last_read.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return;
        }
        self.read_locked(last).await;
    }

    async fn read_keys(&self) {
        let last = self.last_read.lock().await;
        self.read_locked(last).await;
    }

    async fn read_locked(&self, mut last: tokio::sync::MutexGuard<'_, Option<Instant>>) {
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                self.metrics.fetches.record(true);
                self.metrics
                    .keys
                    .set(i64::try_from(set.keys.len()).unwrap_or(i64::MAX));
                if !self.loaded() {
                    tracing::info!(
                        issuer = set.issuer,
                        keys = set.keys.len(),
                        "service-account issuer keys read: tokens are verified before any upstream call"
                    );
                }
                self.keys.store(Some(Arc::new(set)));
            }
            Err(e) => {
                self.metrics.fetches.record(false);
                tracing::warn!(error = %e, kept = self.loaded(), "reading the service-account issuer keys failed");
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let get = |path: &str| {
            let request = axum::http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| e.to_string());
            let client = self.client.clone();
            let path = path.to_owned();
            async move {
                client
                    .request_text(request?)
                    .await
                    .map_err(|e| format!("GET {path}: {e} (the service account needs get on it; the default ClusterRoleBinding system:service-account-issuer-discovery grants it)"))
            }
        };
        let discovery: Discovery = serde_json::from_str(&get("/.well-known/openid-configuration").await?)
            .map_err(|e| format!("/.well-known/openid-configuration: {e}"))?;
        let keys = parse_keys(get("/openid/v1/jwks").await?.as_bytes())?;
        if keys.is_empty() {
            return Err("/openid/v1/jwks holds no RSA or EC P-256/P-384 key".into());
        }
        Ok(KeySet {
            issuer: discovery.issuer,
            keys,
        })
    }

    #[cfg(test)]
    fn with_keys(issuer: &str, jwks: &[u8], client: kube::Client) -> Arc<Self> {
        let keys = IssuerKeys {
            client,
            keys: ArcSwapOption::empty(),
            last_read: tokio::sync::Mutex::new(Some(Instant::now())),
            min_interval: Duration::from_secs(3600),
            metrics: Arc::default(),
        };
        keys.keys.store(Some(Arc::new(KeySet {
            issuer: issuer.into(),
            keys: parse_keys(jwks).unwrap(),
        })));
        Arc::new(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// An ES256 key pair and its JWKS entry under `kid`.
    fn key(kid: &str) -> (EcdsaKeyPair, serde_json::Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": enc(&point[1..33]), "y": enc(&point[33..])});
        (pair, jwk)
    }

    fn sign(pair: &EcdsaKeyPair, header: serde_json::Value, claims: serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", enc(sig.as_ref()))
    }

    fn claims(aud: &str, exp: i64) -> serde_json::Value {
        json!({"iss": ISS, "aud": [aud], "exp": exp, "nbf": exp - 3600, "iat": exp - 3600,
            "sub": "system:serviceaccount:a:b"})
    }

    fn client() -> kube::Client {
        // Never used: the keys are given and the interval forbids a read.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn tokens_are_checked_for_signature_issuer_audience_and_lifetime() {
        let (pair, jwk) = key("k1");
        let (other, _) = key("k1");
        let keys = IssuerKeys::with_keys(ISS, json!({"keys": [jwk]}).to_string().as_bytes(), client());
        let now = 1_800_000_000;
        let h = json!({"alg": "ES256", "kid": "k1"});
        let good = sign(&pair, h.clone(), claims("aud-a", now + 600));
        assert_eq!(keys.verify(&good, Some("aud-a"), now).await, Verdict::Valid);
        assert_eq!(
            keys.verify(&good, Some("aud-b"), now).await,
            Verdict::Refused(Unverified::Audience)
        );
        assert_eq!(
            keys.verify(&good, Some("aud-a"), now + 600).await,
            Verdict::Refused(Unverified::Expired)
        );
        let early = sign(
            &pair,
            h.clone(),
            json!({"iss": ISS, "aud": "aud-a", "exp": now + 9000, "nbf": now + 3600}),
        );
        assert_eq!(
            keys.verify(&early, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::NotYetValid)
        );
        let forged = sign(&other, h.clone(), claims("aud-a", now + 600));
        assert_eq!(
            keys.verify(&forged, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::Signature)
        );
        let unknown = sign(
            &pair,
            json!({"alg": "ES256", "kid": "k2"}),
            claims("aud-a", now + 600),
        );
        assert_eq!(
            keys.verify(&unknown, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::UnknownKey)
        );
        let none = format!(
            "{}.{}.",
            enc(br#"{"alg":"none","kid":"k1"}"#),
            enc(claims("aud-a", now + 600).to_string().as_bytes())
        );
        assert_eq!(
            keys.verify(&none, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::Algorithm)
        );
        let mut foreign = claims("aud-a", now + 600);
        foreign["iss"] = json!("https://elsewhere");
        let foreign = sign(&pair, h.clone(), foreign);
        assert_eq!(
            keys.verify(&foreign, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::Issuer)
        );
        // For the API server's own audience, other issuers' and non-JWT tokens are its to judge.
        assert_eq!(keys.verify(&foreign, None, now).await, Verdict::NotChecked);
        assert_eq!(keys.verify("static-token", None, now).await, Verdict::NotChecked);
        assert_eq!(keys.verify(&good, None, now).await, Verdict::Valid);
        assert_eq!(
            keys.verify(&forged, None, now).await,
            Verdict::Refused(Unverified::Signature)
        );
        assert_eq!(
            keys.verify("a.b", Some("aud-a"), now).await,
            Verdict::Refused(Unverified::Malformed)
        );
        // A signature moved onto other claims does not verify.
        let (head, rest) = good.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let mut more = claims("aud-a", now + 600);
        more["sub"] = json!("system:serviceaccount:kube-system:admin");
        let swapped = format!("{head}.{}.{sig}", enc(more.to_string().as_bytes()));
        assert_eq!(
            keys.verify(&swapped, Some("aud-a"), now).await,
            Verdict::Refused(Unverified::Signature)
        );
        assert_eq!(keys.metrics.refused("signature"), 3);
    }

    #[test]
    fn jwks_keep_the_keys_that_can_verify() {
        let (_, ec) = key("ec");
        let jwks = json!({"keys": [
            ec,
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "secret", "k": "AAAA"},
            {"kty": "EC", "crv": "P-521", "kid": "big", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse_keys(jwks.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["ec", "rsa"]);
        assert!(parse_keys(b"[]").is_err());
    }

    #[test]
    fn an_ec_key_does_not_verify_rs256_nor_a_p256_key_es384() {
        let (pair, jwk) = key("k");
        let keys = parse_keys(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        let msg = b"m";
        let sig = pair.sign(&SystemRandom::new(), msg).unwrap();
        assert!(keys["k"].verify("ES256", msg, sig.as_ref()).is_ok());
        assert!(keys["k"].verify("RS256", msg, sig.as_ref()).is_err());
        assert!(keys["k"].verify("ES384", msg, sig.as_ref()).is_err());
    }
}
