//! The tokens the tests present: unsigned ones shaped as the kubelet's projected tokens (for
//! doubles that do not check signatures), forged ones (a real token's claims, another
//! signature), and foreign ones (signed by a key of the test's own); and the real issuer's
//! keys to check them against.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use pod_identity_webhook::testing::{IssuerKeys, IssuerMetrics};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use super::apiserver::ApiServer;
use super::{NODE, eventually};

/// A service-account token with these claims and a dummy signature, shaped as the kubelet's
/// projected tokens are, for a pod on [`NODE`].
pub fn unsigned(namespace: &str, service_account: &str, pod: &str, audience: &str, exp: i64) -> String {
    unsigned_on(Some(NODE), namespace, service_account, pod, audience, exp)
}

/// The same for a pod on `node` (none: a token without the node claim, as Kubernetes before
/// 1.30 issued them).
pub fn unsigned_on(
    node: Option<&str>,
    namespace: &str,
    service_account: &str,
    pod: &str,
    audience: &str,
    exp: i64,
) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","kid":"test"}"#);
    let mut payload = json!({
        "aud": [audience],
        "exp": exp,
        "iat": exp - 3600,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod, "uid": format!("{pod}-uid")},
            "serviceaccount": {"name": service_account, "uid": format!("{service_account}-uid")},
        },
    });
    if let Some(node) = node {
        payload["kubernetes.io"]["node"] = json!({"name": node, "uid": format!("{node}-uid")});
    }
    format!("{header}.{}.c2lnbmF0dXJl", b64.encode(payload.to_string()))
}

/// A token with the claims of `common::unsigned` but a forged signature.
pub fn forged(n: usize) -> String {
    let genuine = super::agents::pod_token("pi-demo", "app", &format!("garbage-{n}"), "service.cce.pods");
    let (claims, _) = genuine.rsplit_once('.').unwrap();
    format!("{claims}.Zm9yZ2VkLXtufQ")
}

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const AUD: &str = "service.cce.pods";

/// The issuer's keys read with a service account's own token (as the agent and the exchange
/// read them in a cluster), once read.
pub async fn keys_of(api: &ApiServer, interval: Duration) -> (Arc<IssuerKeys>, Arc<IssuerMetrics>) {
    let ns = api.namespace("issuer", &[]).await;
    api.service_account(&ns, "reader").await;
    let token = api.token(&ns, "reader", None, ISSUER, 3600).await;
    let metrics = Arc::new(IssuerMetrics::default());
    let keys = IssuerKeys::start(api.client_as(&token), interval, metrics.clone());
    eventually("the issuer keys read", Duration::from_secs(10), async || {
        keys.loaded()
    })
    .await;
    (keys, metrics)
}

/// A token with the right issuer, audience and lifetime, signed by a key of the test's own
/// under key id `kid`: only the key can tell it from a real one.
pub fn foreign(kid: &str, audience: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "ES256", "kid": kid});
    let claims = json!({"iss": ISSUER, "aud": [audience], "exp": now + 3600, "nbf": now, "iat": now,
        "sub": "system:serviceaccount:pi-demo:app",
        "kubernetes.io": {"namespace": "pi-demo", "serviceaccount": {"name": "app", "uid": "u"},
            "pod": {"name": "p", "uid": "pu"}, "node": {"name": NODE, "uid": "nu"}}});
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = pair.sign(&rng, signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(sig.as_ref()))
}
