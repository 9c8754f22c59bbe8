//! Seed 002 without the Kubernetes API: the agent's `eks` backend against a stand-in of AWS's
//! EKS Auth (its SigV4 checked with botocore's signer), AWS credentials from the standard
//! chain through the real binaries, and the recording STS and helpers the exchange's tests
//! share. The exchange serving seed 002, with TokenReview on the real API server, is
//! `real::eks_auth`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pod_identity_webhook::agent::backend::{Backend, EksBackend};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::http_client;
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::python;
use crate::common::{BIN, free_ports};

pub(crate) const EKS_AUD: &str = "pods.eks.amazonaws.com";
pub(crate) const EKS_CLUSTER: &str = "edge-1";

/// One `AssumeRole` as STS received it: the form and the headers.
#[derive(Clone, Debug)]
pub(crate) struct StsCall {
    pub(crate) form: Vec<(String, String)>,
    pub(crate) authorization: String,
    pub(crate) security_token: Option<String>,
}

impl StsCall {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A recording STS: answers `AssumeRole` in the Query API's XML, refusing roles named
/// `denied` with `AccessDenied` as STS does.
pub(crate) async fn recording_sts() -> (String, Arc<Mutex<Vec<StsCall>>>) {
    async fn handler(
        State(calls): State<Arc<Mutex<Vec<StsCall>>>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let call = StsCall {
            form,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            security_token: headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        calls.lock().unwrap().push(call.clone());
        let role = call.get("RoleArn").unwrap_or_default().to_owned();
        if role.ends_with("/denied") {
            let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                       <Message>not authorized to perform: sts:AssumeRole</Message></Error></ErrorResponse>";
            return (StatusCode::FORBIDDEN, xml).into_response();
        }
        let session = call.get("RoleSessionName").unwrap_or_default();
        let name = role.rsplit('/').next().unwrap_or_default();
        let xml = format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
             <Credentials><AccessKeyId>ASIASTAND</AccessKeyId><SecretAccessKey>sts-secret</SecretAccessKey>\
             <SessionToken>sts-session-token</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROASTAND:{session}</AssumedRoleId>\
             <Arn>arn:aws:sts::111122223333:assumed-role/{name}/{session}</Arn></AssumedRoleUser>\
             </AssumeRoleResult></AssumeRoleResponse>"
        );
        (StatusCode::OK, xml).into_response()
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/", post(handler)).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// One request EKS Auth's stand-in received.
#[derive(Clone, Debug)]
struct EksCall {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl EksCall {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct EksStandIn {
    calls: Arc<Mutex<Vec<EksCall>>>,
    /// The error EKS Auth answers with, if any: its type and status.
    error: Arc<Mutex<Option<(&'static str, u16)>>>,
}

/// A stand-in of AWS's EKS Auth: records each request and answers seed 002, or the error set.
async fn eks_auth_standin() -> (String, EksStandIn) {
    async fn handler(
        State(s): State<EksStandIn>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        s.calls.lock().unwrap().push(EksCall {
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        if let Some((kind, status)) = *s.error.lock().unwrap() {
            let body = json!({"message": format!("{kind} from the stand-in")}).to_string();
            return (
                StatusCode::from_u16(status).unwrap(),
                [("x-amzn-ErrorType", kind)],
                body,
            )
                .into_response();
        }
        let exp = jiff::Timestamp::now().as_second() + 3600;
        let body = json!({
            "subject": {"namespace": "pi-demo", "serviceAccount": "app"},
            "audience": EKS_AUD,
            "podIdentityAssociation": {"associationArn": "arn:aws:eks:us-west-2:111122223333:podidentityassociation/edge-1/a-9", "associationId": "a-9"},
            "assumedRoleUser": {"arn": "arn:aws:sts::111122223333:assumed-role/app-role/eks-edge-1-app-1", "assumeRoleId": "AROA:eks-edge-1-app-1"},
            "credentials": {"sessionToken": "eks-session-token", "secretAccessKey": "eks-secret", "accessKeyId": "ASIAEKS", "expiration": exp},
        });
        (StatusCode::OK, body.to_string()).into_response()
    }
    let s = EksStandIn::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/clusters/{name}/assume-role-for-pod-identity", post(handler))
        .with_state(s.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, s)
}

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
    let agent = start_agent(Provider::Eks, sigv4_backend(&url), |_| {}).await;
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
    let agent = start_agent(Provider::Eks, sigv4_backend(&url), |_| {}).await;
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

/// What botocore's container credential provider in a pod loads from the agent at `url`, with
/// the pod's token in `token_file`: its access key, secret key, token and method.
pub(crate) async fn container_provider(url: &str, token_file: &std::path::Path) -> Value {
    const SCRIPT: &str = r#"
import json
from botocore.credentials import ContainerProvider
c = ContainerProvider().load()
f = c.get_frozen_credentials()
print(json.dumps({"ak": f.access_key, "sk": f.secret_key, "token": f.token, "method": c.method}))
"#;
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.to_owned()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap().to_owned(),
        ),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        python::run(SCRIPT, &env)
    })
    .await
    .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// botocore's container credential provider → agent (`eks` backend, SigV4 with the node's key)
/// → a stand-in of AWS's EKS Auth, which receives a signature botocore's signer agrees with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_from_botocore_through_the_agent_to_aws_eks_auth() {
    let (url, eks) = eks_auth_standin().await;
    let agent = start_agent(Provider::Eks, sigv4_backend(&url), |_| {}).await;
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

/// The binary, running; its log (stderr) is in a file, for the assertions' messages.
pub(crate) struct Spawned {
    _process: crate::common::Reaped,
    log: std::path::PathBuf,
}

impl Spawned {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the binary with `args` and `env` and nothing of the caller's AWS settings: `dir` holds
/// the shared config and credentials files (absent unless the test wrote them) and the log.
pub(crate) fn spawn_isolated(
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Spawned {
    // The tests' reqwest clients use the process-wide provider.
    crate::common::crypto();
    let mut command = std::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    let log = dir.join(format!("{name}.log"));
    command
        .args(args)
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        // Never the link-local 169.254.169.254 from a test; a test serving IMDS on loopback
        // turns it back on.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Spawned {
        _process: crate::common::Reaped::new(command.spawn().unwrap()),
        log,
    }
}

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

/// A stand-in of the chain's HTTP sources on loopback, recording `METHOD path` of each
/// request: the container credentials endpoint (`GET /container`, which wants
/// `Authorization: container-auth`) and IMDSv2 (a session token from `PUT /latest/api/token`,
/// then the role and its credentials under `/latest/meta-data/iam/security-credentials/`).
pub(crate) async fn credential_sources() -> (String, Arc<Mutex<Vec<String>>>) {
    async fn handler(
        State(seen): State<Arc<Mutex<Vec<String>>>>,
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
    ) -> Response {
        let path = uri.path().to_owned();
        seen.lock().unwrap().push(format!("{method} {path}"));
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600)
            .unwrap()
            .to_string();
        let imds = header("x-aws-ec2-metadata-token") == "imds-session-token";
        match (method.as_str(), path.as_str()) {
            ("GET", "/container") if header("authorization") == "container-auth" => json!({
                "AccessKeyId": "ASIACONTAINER", "SecretAccessKey": "container-secret",
                "Token": "container-session", "Expiration": expires,
            })
            .to_string()
            .into_response(),
            ("PUT", "/latest/api/token") if !header("x-aws-ec2-metadata-token-ttl-seconds").is_empty() => {
                let ttl = header("x-aws-ec2-metadata-token-ttl-seconds").to_owned();
                (
                    [("x-aws-ec2-metadata-token-ttl-seconds", ttl)],
                    "imds-session-token",
                )
                    .into_response()
            }
            ("GET", "/latest/meta-data/iam/security-credentials/") if imds => "node-role".into_response(),
            ("GET", "/latest/meta-data/iam/security-credentials/node-role") if imds => json!({
                "Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAIMDS", "SecretAccessKey": "imds-secret",
                "Token": "imds-session", "Expiration": expires,
            })
            .to_string()
            .into_response(),
            _ => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(handler).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
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
