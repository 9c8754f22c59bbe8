//! The agent's `eks` backend against a stand-in of AWS's EKS Auth (its SigV4 checked with
//! botocore's signer), and AWS credentials from the standard chain through the real binaries.
//! The exchange serving EKS Auth, with TokenReview on the real API server, is
//! `exchange::real::eks_auth`.

use std::sync::Arc;

use pod_identity_webhook::agent::backend::{Backend, EksBackend};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::http_client;
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::aws::*;
use crate::common::free_ports;
use crate::common::python;

/// The agent's `eks` backend towards `url`, signing with `AKIDNODE`.
fn sigv4_backend(url: &str) -> Arc<dyn Backend> {
    let client = http_client(None, std::time::Duration::from_secs(4)).unwrap();
    Arc::new(
        EksBackend::new(client, url, EKS_CLUSTER, "us-west-2", None)
            .unwrap()
            .with_key("AKIDNODE", "node-secret"),
    )
}

/// botocore's SigV4 `Authorization` for the same request, key (and session token), region,
/// service and time.
const SIGV4_SCRIPT: &str = r#"
import json, os
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
i = json.loads(os.environ["INPUT"])
headers = {"Content-Type": i["content_type"], "X-Amz-Date": i["date"]}
if i.get("token"):
    headers["X-Amz-Security-Token"] = i["token"]
req = AWSRequest(method="POST", url=i["url"], data=i["body"].encode(), headers=headers)
req.context["timestamp"] = i["date"]
key = i.get("key", ["AKIDNODE", "node-secret"])
auth = SigV4Auth(Credentials(key[0], key[1], i.get("token")), "eks-auth", "us-west-2")
canonical = auth.canonical_request(req)
signature = auth.signature(auth.string_to_sign(req, canonical), req)
signed = auth.signed_headers(auth.headers_to_sign(req))
print(f"AWS4-HMAC-SHA256 Credential={auth.scope(req)}, SignedHeaders={signed}, Signature={signature}")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_eks_requests_verify_with_botocores_sigv4_signer() {
    let (url, eks) = eks_auth_standin().await;
    let agent = AgentUnderTest::new(Provider::Eks, sigv4_backend(&url))
        .start()
        .await;
    let token = pod_token("pi-demo", "app", "app-1", EKS_AUD);
    let r = credentials_request(&agent.url, &token).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["AccessKeyId"], "ASIAEKS");
    assert_eq!(body["Token"], "eks-session-token");
    assert_eq!(body["AccountId"], "111122223333");
    let call = eks.calls.lock().unwrap()[0].clone();
    assert_eq!(call.path, "/clusters/edge-1/assume-role-for-pod-identity");
    assert_eq!(
        serde_json::from_str::<Value>(&call.body).unwrap(),
        json!({"token": token})
    );
    let got = call.header("authorization").unwrap();
    assert!(got.contains("/us-west-2/eks-auth/aws4_request"), "{got}");
    assert_eq!(
        got,
        botocore_signature(&url, &call, ("AKIDNODE", "node-secret"), None).await
    );
}

/// botocore's `Authorization` for `call` as EKS Auth's stand-in at `url` received it, signed
/// with `key` (and `token`, which the call must carry as `x-amz-security-token`).
async fn botocore_signature(url: &str, call: &EksCall, key: (&str, &str), token: Option<&str>) -> String {
    assert_eq!(call.header("x-amz-security-token"), token, "{call:?}");
    let input = json!({
        "url": format!("{url}{}", call.path),
        "body": call.body,
        "content_type": call.header("content-type").unwrap(),
        "date": call.header("x-amz-date").unwrap(),
        "key": [key.0, key.1],
        "token": token,
    })
    .to_string();
    let want = tokio::task::spawn_blocking(move || python::run(SIGV4_SCRIPT, &[("INPUT", &input)]))
        .await
        .unwrap();
    want.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_eks_auth_error_reaches_the_sdk_as_the_cache_treats_it() {
    let (url, eks) = eks_auth_standin().await;
    let agent = AgentUnderTest::new(Provider::Eks, sigv4_backend(&url))
        .start()
        .await;
    // 400s and 404 evict (the agent's 403 and 404); the rest are transient and kept as is.
    for (n, (kind, status, agent_status)) in [
        ("InvalidTokenException", 400, 403),
        ("ExpiredTokenException", 400, 403),
        ("AccessDeniedException", 400, 403),
        ("ResourceNotFoundException", 404, 404),
        ("ThrottlingException", 429, 429),
        ("InternalServerException", 500, 500),
        ("ServiceUnavailableException", 503, 503),
    ]
    .into_iter()
    .enumerate()
    {
        *eks.error.lock().unwrap() = Some((kind, status));
        let token = pod_token("pi-demo", "app", &format!("app-{n}"), EKS_AUD);
        let r = credentials_request(&agent.url, &token).await;
        assert_eq!(r.status().as_u16(), agent_status, "{kind}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!("{kind} from the stand-in")),
            "{kind}: {text}"
        );
    }
}

/// botocore's container credential provider → agent (`eks` backend, SigV4 with the node's key)
/// → a stand-in of AWS's EKS Auth, which receives a signature botocore's signer agrees with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_from_botocore_through_the_agent_to_aws_eks_auth() {
    let (url, eks) = eks_auth_standin().await;
    let agent = AgentUnderTest::new(Provider::Eks, sigv4_backend(&url))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = pod_token("pi-demo", "app", "app-1", EKS_AUD);
    let token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, &token).unwrap();
    let parsed = container_provider(&agent.url, &token_file).await;
    assert_eq!(parsed["ak"], "ASIAEKS", "{parsed}");
    assert_eq!(parsed["token"], "eks-session-token", "{parsed}");
    assert_eq!(parsed["method"], "container-role", "{parsed}");
    let call = eks.calls.lock().unwrap()[0].clone();
    assert_eq!(
        serde_json::from_str::<Value>(&call.body).unwrap(),
        json!({"token": token})
    );
    assert_eq!(
        call.header("authorization").unwrap(),
        botocore_signature(&url, &call, ("AKIDNODE", "node-secret"), None).await
    );
}

// AWS credentials from the standard chain, through the real binaries: each spawned with no
// AWS setting of the developer's (every `AWS_*` variable dropped, the shared files pointed at
// an empty directory, instance metadata off unless a test serves it on loopback).

/// The agent binary with the `eks` backend signing for EKS Auth at `eks_url`; its credential
/// endpoint once ready.
async fn spawn_eks_agent(
    dir: &std::path::Path,
    eks_url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (String, Spawned) {
    let [port, admin] = free_ports::<2>();
    let (listen, admin) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let mut args = vec![
        "agent",
        "--provider",
        "eks",
        "--backend",
        "eks",
        "--cluster-name",
        EKS_CLUSTER,
        "--region",
        "us-west-2",
        "--eks-endpoint",
        eks_url,
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
    ];
    args.extend(extra);
    let agent = spawn_isolated(dir, "agent", &args, env);
    crate::common::until_ready(
        &reqwest::Client::new(),
        &format!("http://{admin}/readyz"),
        std::time::Instant::now() + std::time::Duration::from_secs(30),
    )
    .await;
    (format!("http://{listen}/v1/credentials"), agent)
}

/// Asks the agent at `url` for the credentials of pod `pod` (pi-demo/app): status and body.
async fn ask_agent(url: &str, pod: &str) -> (u16, Value) {
    let token = pod_token("pi-demo", "app", pod, EKS_AUD);
    let r = credentials_request(url, &token).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_signs_with_the_profile_of_a_shared_credentials_file() {
    let (url, eks) = eks_auth_standin().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aws-credentials"),
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n\
         [node]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let (agent_url, agent) = spawn_eks_agent(dir.path(), &url, &[], &[("AWS_PROFILE", "node")]).await;
    let (status, body) = ask_agent(&agent_url, "app-1").await;
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    assert_eq!(body["AccessKeyId"], "ASIAEKS");
    let call = eks.calls.lock().unwrap()[0].clone();
    let got = call.header("authorization").unwrap();
    assert!(
        got.starts_with("AWS4-HMAC-SHA256 Credential=AKIDPROFILE/"),
        "{got}"
    );
    assert_eq!(
        got,
        botocore_signature(&url, &call, ("AKIDPROFILE", "profile-secret"), None).await
    );
    assert!(agent.log().contains("ProfileFile"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_signs_with_instance_metadata_credentials_fetched_once() {
    let (url, eks) = eks_auth_standin().await;
    let (imds, seen) = credential_sources().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.as_str()),
    ];
    let (agent_url, agent) = spawn_eks_agent(dir.path(), &url, &[], &env).await;
    for pod in ["app-1", "app-2"] {
        let (status, body) = ask_agent(&agent_url, pod).await;
        assert_eq!(status, 200, "{body}\n{}", agent.log());
    }
    let calls = eks.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        let want = botocore_signature(&url, call, ("ASIAIMDS", "imds-secret"), Some("imds-session")).await;
        assert_eq!(call.header("authorization"), Some(want.as_str()));
    }
    // IMDSv2 (a session token first), and the role's credentials once: cached between calls.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("PUT /latest/api/token"),
        "{seen:?}"
    );
    let fetched = seen
        .iter()
        .filter(|s| s.ends_with("/security-credentials/node-role"))
        .count();
    assert_eq!(fetched, 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_aws_credentials_the_agents_answer_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    // The agent signing for EKS Auth: nothing reaches it, and the SDK reads what to set.
    let (url, eks) = eks_auth_standin().await;
    let (agent_url, agent) = spawn_eks_agent(dir.path(), &url, &[], &[]).await;
    let (status, body) = ask_agent(&agent_url, "app-1").await;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    for needle in [
        "no AWS credentials",
        "AWS_ACCESS_KEY_ID",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "IMDSv2",
    ] {
        assert!(message.contains(needle), "{needle}: {body}");
    }
    assert!(eks.calls.lock().unwrap().is_empty());
    assert!(
        agent.log().contains("no AWS credentials in the standard chain"),
        "{}",
        agent.log()
    );
}

/// A credential source that never answers (instance metadata that accepts and stays silent)
/// cannot hold a call beyond the upstream deadline (1 s here): the answer says the deadline cut
/// the lookup short. (Without the bound the chain's IMDS client gives up by itself, after its
/// own timeouts, about 2 s here, and the answer is a plain "no AWS credentials".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_credential_source_cannot_hold_a_call_beyond_its_deadline() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let (url, eks) = eks_auth_standin().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.as_str()),
    ];
    let (agent_url, _agent) = spawn_eks_agent(dir.path(), &url, &["--upstream-timeout", "1"], &env).await;
    let started = std::time::Instant::now();
    let (status, body) = ask_agent(&agent_url, "app-1").await;
    let took = started.elapsed();
    assert_eq!(status, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no AWS credentials within the call's deadline"),
        "{body}"
    );
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    assert!(eks.calls.lock().unwrap().is_empty());
}
