//! The real SDKs against the agent: huaweicloudsdkcore's PodIdentityCredentialProvider and
//! botocore's container credential provider obtain credentials, and the request signer agrees
//! with the SDK's for the same inputs. (Through the exchange, with TokenReview on the real API
//! server: `exchange::real::sdk`.)

use std::time::Duration;

use crate::common::agents::*;
use crate::common::doubles;
use crate::common::python::{self, HC_SCRIPT, assert_sdk_signature, sdk, write_token};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{AccessKey, signer};
use serde_json::Value;

const BOTO_SCRIPT: &str = r#"
import json
from botocore.credentials import ContainerProvider
c = ContainerProvider().load()
f = c.get_frozen_credentials()
print(json.dumps({"ak": f.access_key, "sk": f.secret_key, "token": f.token, "method": c.method}))
"#;

async fn direct(url: &str, token: &str) -> Value {
    let r = reqwest::Client::new()
        .get(url)
        .header("Authorization", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huaweicloud_sdk_reads_the_cce_shape() {
    let agent = AgentUnderTest::new(Provider::Cce, local_backend(Provider::Cce))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = pod_token("pi-demo", "app", "app-1", "service.cce.pods");
    let file = write_token(dir.path(), &token);
    let parsed = sdk(HC_SCRIPT, Provider::Cce, &agent.url, &file).await;
    // The agent's cache answers the same credentials to a direct call.
    let body = direct(&agent.url, &token).await;
    let c = &body["credentials"];
    assert_eq!(parsed["ak"], c["accessKeyId"]);
    assert_eq!(parsed["sk"], c["secretAccessKey"]);
    assert_eq!(parsed["token"], c["securityToken"]);
    let expires: jiff::Timestamp = c["expiration"].as_str().unwrap().parse().unwrap();
    // The SDK reads the time as local time (time.mktime); the venv runs with TZ=UTC.
    assert_eq!(
        parsed["expires"].as_f64(),
        Some(expires.as_second() as f64),
        "the SDK parsed the expiration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_reads_the_eks_shape() {
    let agent = AgentUnderTest::new(Provider::Eks, local_backend(Provider::Eks))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = pod_token("pi-demo", "worker", "w-1", "pods.eks.amazonaws.com");
    let file = write_token(dir.path(), &token);
    let parsed = sdk(BOTO_SCRIPT, Provider::Eks, &agent.url, &file).await;
    let body = direct(&agent.url, &token).await;
    assert_eq!(parsed["ak"], body["AccessKeyId"]);
    assert_eq!(parsed["sk"], body["SecretAccessKey"]);
    assert_eq!(parsed["token"], body["Token"]);
    assert_eq!(parsed["method"], "container-role");
}

const SIGN_SCRIPT: &str = r#"
import json, sys
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
i = json.loads(sys.argv[1])
creds = BasicCredentials(i["ak"], i["sk"], i["project"])
if i.get("token"):
    creds = creds.with_security_token(i["token"])
req = SdkRequest(method="POST", schema="https", host=i["host"], resource_path=i["path"],
                 query_params=[tuple(q) for q in i["query"]],
                 header_params={"Content-Type": "application/json", "X-Sdk-Date": i["date"]},
                 body=i["body"])
req = creds.sign_request(req)
print(req.header_params["Authorization"])
"#;

#[test]
fn signature_matches_the_sdk_signer() {
    let cases = [
        (
            "AKEXAMPLE",
            "sk-secret",
            None,
            "cce.example.com",
            "/api/v3/projects/p1/clusters/c1/assume-agency-for-pod-identity",
            vec![],
            r#"{"token":"abc"}"#,
        ),
        (
            "AK2",
            "another/secret+key",
            Some("temporary-security-token"),
            "127.0.0.1:8443",
            "/v3.0/OS-CREDENTIAL/securitytokens",
            vec![("b", "2"), ("a", "x y")],
            "{}",
        ),
    ];
    for (ak, sk, token, host, path, query, body) in cases {
        let date = "20261123T101500Z";
        let input = serde_json::json!({"ak": ak, "sk": sk, "project": "p1", "token": token, "host": host, "path": path,
            "query": query, "date": date, "body": body});
        let out = std::process::Command::new(python::sdk_python())
            .args(["-c", SIGN_SCRIPT, &input.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let expected = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let key = AccessKey {
            ak: ak.into(),
            sk: sk.into(),
            security_token: token.map(str::to_owned),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("Content-Type", "application/json".parse().unwrap());
        headers.insert("X-Sdk-Date", date.parse().unwrap());
        headers.insert("X-Project-Id", "p1".parse().unwrap());
        let mut url = reqwest::Url::parse(&format!("https://{host}{path}")).unwrap();
        for (k, v) in &query {
            url.query_pairs_mut().append_pair(k, v);
        }
        signer::sign(&key, "POST", &url, &mut headers, body.as_bytes(), date);
        let ours = headers["authorization"].to_str().unwrap();
        assert_eq!(ours, expected, "for {ak}");
    }
}

/// The agent's `cce` backend with AK/SK: the request the CCE double received carries a
/// signature the SDK's signer reproduces from the same headers and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_requests_signed_with_ak_sk_verify_with_the_sdk() {
    use pod_identity_webhook::agent::backend::CceBackend;
    use pod_identity_webhook::testing::{CloudAuth, http_client};
    let cce = doubles::cce().await;
    let key = AccessKey {
        ak: "AKSIGNED".into(),
        sk: "sk/with+chars".into(),
        security_token: Some("temp-token".into()),
    };
    let client = http_client(None, Duration::from_secs(4)).unwrap();
    let backend = CceBackend::new(client, &cce.url, PROJECT, CLUSTER, CloudAuth::AkSk(key)).unwrap();
    let agent = AgentUnderTest::new(Provider::Cce, std::sync::Arc::new(backend))
        .start()
        .await;
    let token = pod_token("pi-demo", "app", "a", "service.cce.pods");
    direct(&agent.url, &token).await;
    let call = &cce.calls()[0];
    assert_eq!(call.header("X-Project-Id"), Some(PROJECT));
    assert_eq!(call.header("X-Security-Token"), Some("temp-token"));
    assert_sdk_signature(call, "AKSIGNED", "sk/with+chars");
}
