//! Seed 002 served by the exchange: botocore's own `eks-auth` client (boto3, from PyPI) against
//! it, with TokenReview on the stand-in API server and STS played by a recording stand-in (to
//! see the exact session name, tags and signature) or by moto's server mode (an independent
//! implementation of `AssumeRole`); and the agent's `eks` backend against a stand-in of AWS's
//! EKS Auth (its SigV4 checked with botocore's signer) and, end to end, against the exchange.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pod_identity_webhook::agent::backend::{Backend, EksBackend};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{CloudAuth, Reader, TokenFile, file, http_client};
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::python;
use crate::common::standin::StandIn;
use crate::common::{BIN, free_ports};

const EKS_AUD: &str = "pods.eks.amazonaws.com";
const EKS_CLUSTER: &str = "edge-1";
const APP_ROLE: &str = "arn:aws:iam::111122223333:role/app-role";

const TARGET_ROLE: &str = "arn:aws:iam::444455556666:role/target-role";
const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;

/// pi-demo/app may assume `app-role`; pi-demo/worker names a role STS refuses; pi-chain/app
/// chains to `target-role`; pi-policy/app has no session tags and a session policy.
fn associations(dir: &std::path::Path) -> Reader {
    let path = dir.join("associations.yaml");
    std::fs::write(
        &path,
        format!(
            "associations:\n\
             - {{namespace: pi-demo, serviceAccount: app, roleArn: \"{APP_ROLE}\", uid: a-1}}\n\
             - {{namespace: pi-demo, serviceAccount: worker, roleArn: \"arn:aws:iam::111122223333:role/denied\"}}\n\
             - {{namespace: pi-chain, serviceAccount: app, roleArn: \"{APP_ROLE}\", uid: c-1, \
                 targetRoleArn: \"{TARGET_ROLE}\"}}\n\
             - {{namespace: pi-policy, serviceAccount: app, roleArn: \"{APP_ROLE}\", \
                 disableSessionTags: true, policy: '{POLICY}'}}\n"
        ),
    )
    .unwrap();
    Reader::fixed(file::load(&path).unwrap())
}

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

/// The exchange for `edge-1` with TokenReview on the stand-in and the recording STS (its
/// calls), and the directory of its associations.
async fn exchange_with_recording_sts() -> (
    StandIn,
    Arc<Mutex<Vec<StsCall>>>,
    tempfile::TempDir,
    RunningExchange,
) {
    let api = StandIn::start(false).await;
    let (sts_url, calls) = recording_sts().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_eks_exchange(&api, &sts_url, EKS_CLUSTER, associations(dir.path())).await;
    (api, calls, dir, exchange)
}

/// Calls `assume_role_for_pod_identity` through boto3's `eks-auth` client for each token (the
/// agent's token as `X-Auth-Token`, added before signing as the agent's `eks` backend sends
/// it); each result is `{"ok": response}` or `{"error": class, "code", "status"}`.
fn botocore(url: &str, caller: Option<&str>, cluster: &str, tokens: &[&str]) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, os, boto3, botocore.config, botocore.exceptions
c = boto3.client("eks-auth", region_name="us-west-2", endpoint_url=os.environ["URL"],
                 aws_access_key_id="AKIDNODE", aws_secret_access_key="node-secret",
                 config=botocore.config.Config(retries={"total_max_attempts": 1}))
caller = os.environ.get("CALLER")
def add_caller(request, **kwargs):
    if caller:
        request.headers["X-Auth-Token"] = caller
c.meta.events.register("before-sign.eks-auth.AssumeRoleForPodIdentity", add_caller)
out = []
for token in json.loads(os.environ["TOKENS"]):
    try:
        r = c.assume_role_for_pod_identity(clusterName=os.environ["CLUSTER"], token=token)
        r.pop("ResponseMetadata")
        r["credentials"]["expiration"] = r["credentials"]["expiration"].isoformat()
        out.append({"ok": r})
    except botocore.exceptions.ClientError as e:
        modeled = getattr(c.exceptions, type(e).__name__, None)
        out.append({"error": type(e).__name__ if modeled and isinstance(e, modeled) else "unmodeled",
                    "code": e.response["Error"]["Code"],
                    "message": e.response["Error"].get("Message", ""),
                    "status": e.response["ResponseMetadata"]["HTTPStatusCode"]})
print(json.dumps(out))
"#;
    let tokens = serde_json::to_string(tokens).unwrap();
    let mut env = vec![("URL", url), ("CLUSTER", cluster), ("TOKENS", tokens.as_str())];
    if let Some(c) = caller {
        env.push(("CALLER", c));
    }
    let out = python::run(SCRIPT, &env);
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_eks_auth_gets_the_roles_credentials_with_the_eks_session_and_tags() {
    let (_api, calls, _dir, exchange) = exchange_with_recording_sts().await;
    let out = call_as_app(&exchange, "pi-demo", "app-7f9c").await;
    let r = &out["ok"];
    assert_eq!(r["credentials"]["accessKeyId"], "ASIASTAND", "{out:?}");
    assert_eq!(r["credentials"]["secretAccessKey"], "sts-secret");
    assert_eq!(r["credentials"]["sessionToken"], "sts-session-token");
    // botocore parsed the epoch seconds as a timestamp.
    assert_eq!(r["credentials"]["expiration"], "2030-01-01T00:00:00+00:00");
    assert_eq!(
        r["subject"],
        json!({"namespace": "pi-demo", "serviceAccount": "app"})
    );
    assert_eq!(r["audience"], EKS_AUD);
    assert_eq!(
        r["podIdentityAssociation"],
        json!({"associationArn": "arn:aws:eks:us-west-2:111122223333:podidentityassociation/edge-1/a-1",
               "associationId": "a-1"})
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let session = call.get("RoleSessionName").unwrap();
    let pattern = regex::Regex::new(r"^eks-edge-1-app-7f9c-[0-9a-f]{8}$").unwrap();
    assert!(pattern.is_match(session), "{session}");
    assert_eq!(
        r["assumedRoleUser"]["arn"],
        format!("arn:aws:sts::111122223333:assumed-role/app-role/{session}")
    );
    assert_eq!(
        r["assumedRoleUser"]["assumeRoleId"],
        format!("AROASTAND:{session}")
    );
    assert_eq!(call.get("Action"), Some("AssumeRole"));
    assert_eq!(call.get("Version"), Some("2011-06-15"));
    assert_eq!(call.get("RoleArn"), Some(APP_ROLE));
    assert_eq!(call.get("DurationSeconds"), Some("3600"));
    assert_eq!(call.get("Policy"), None);
    let tags: Vec<(&str, &str)> = (1..=6)
        .map(|n| {
            (
                call.get(&format!("Tags.member.{n}.Key")).unwrap(),
                call.get(&format!("Tags.member.{n}.Value")).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            (
                "eks-cluster-arn",
                "arn:aws:eks:us-west-2:111122223333:cluster/edge-1"
            ),
            ("eks-cluster-name", "edge-1"),
            ("kubernetes-namespace", "pi-demo"),
            ("kubernetes-service-account", "app"),
            ("kubernetes-pod-name", "app-7f9c"),
            ("kubernetes-pod-uid", "app-7f9c-uid"),
        ]
    );
    assert_eq!(call.get("Tags.member.7.Key"), None);
    for (n, (key, _)) in tags.iter().enumerate() {
        assert_eq!(
            call.get(&format!("TransitiveTagKeys.member.{}", n + 1)),
            Some(*key)
        );
    }
    // Signed by the exchange's own key for STS in the region.
    assert!(
        call.authorization
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXCHANGE/")
            && call.authorization.contains("/us-west-2/sts/aws4_request"),
        "{}",
        call.authorization
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_raises_the_exception_eks_auth_would() {
    let (_api, calls, _dir, exchange) = exchange_with_recording_sts().await;
    let now = jiff::Timestamp::now().as_second();
    let unbound = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"aud": [EKS_AUD], "exp": now + 600, "sub": "system:serviceaccount:pi-demo:app"});
        format!("e30.{}.c2ln", b64.encode(claims.to_string()))
    };
    let wrong_audience = pod_token("pi-demo", "app", "app-1", "service.cce.pods");
    let no_association = pod_token("pi-demo", "default", "web-1", EKS_AUD);
    let sts_refuses = pod_token("pi-demo", "worker", "worker-1", EKS_AUD);
    let other_node = pod_token_on("node-b", "pi-demo", "app", "app-2", EKS_AUD);
    let agent = agent_token(crate::common::NODE);
    let url = exchange.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let tokens = [
            &*wrong_audience,
            &*unbound,
            &*no_association,
            &*sts_refuses,
            &*other_node,
        ];
        let mut out = botocore(&url, Some(&agent), EKS_CLUSTER, &tokens);
        out.extend(botocore(&url, Some(&agent), "other-cluster", &[tokens[0]]));
        out.extend(botocore(&url, None, EKS_CLUSTER, &[tokens[0]]));
        out
    })
    .await
    .unwrap();
    let got: Vec<(&str, &str, u64)> = out
        .iter()
        .map(|r| {
            (
                r["error"].as_str().unwrap_or("no error"),
                r["code"].as_str().unwrap_or_default(),
                r["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("InvalidTokenException", "InvalidTokenException", 400),
            ("InvalidTokenException", "InvalidTokenException", 400),
            ("ResourceNotFoundException", "ResourceNotFoundException", 404),
            ("AccessDeniedException", "AccessDeniedException", 400),
            ("AccessDeniedException", "AccessDeniedException", 400),
            ("ResourceNotFoundException", "ResourceNotFoundException", 404),
            ("AccessDeniedException", "AccessDeniedException", 400),
        ],
        "{out:?}"
    );
    // Only the association STS refused reached STS.
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].get("RoleArn").unwrap().ends_with("/denied"));
}

/// moto's server mode on a free loopback port, stopped when dropped.
struct Moto {
    url: String,
    child: std::process::Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(python::sdk_python())
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto {
        url: format!("http://127.0.0.1:{port}"),
        child,
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(std::time::Instant::now() < until, "moto did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    moto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_sts_assumes_the_associated_role() {
    let api = StandIn::start(false).await;
    let sts = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_eks_exchange(&api, &sts.url, EKS_CLUSTER, associations(dir.path())).await;
    let out = call_as_app(&exchange, "pi-demo", "app-7f9c").await;
    let r = &out["ok"];
    let key = r["credentials"]["accessKeyId"].as_str().unwrap_or_default();
    assert!(key.starts_with("ASIA") && key.len() >= 16, "{out:?}");
    assert!(!r["credentials"]["sessionToken"].as_str().unwrap().is_empty());
    let arn = r["assumedRoleUser"]["arn"].as_str().unwrap();
    assert!(
        arn.starts_with("arn:aws:sts::111122223333:assumed-role/app-role/eks-edge-1-app-7f9c-"),
        "{arn}"
    );
    let expires: jiff::Timestamp = r["credentials"]["expiration"].as_str().unwrap().parse().unwrap();
    let left = expires.as_second() - jiff::Timestamp::now().as_second();
    assert!((3500..=3700).contains(&left), "{left}");
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

/// botocore's container credential provider → agent (`eks` backend, its token as
/// `X-Auth-Token`) → exchange (seed 002) → TokenReview stand-in + recording STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_from_botocore_through_the_agent_to_the_exchange_and_sts() {
    let (api, calls, dir, exchange) = exchange_with_recording_sts().await;
    let agent_token_file = dir.path().join("agent-token");
    std::fs::write(&agent_token_file, agent_token(crate::common::NODE)).unwrap();
    let client = http_client(None, std::time::Duration::from_secs(4)).unwrap();
    let backend = EksBackend::new(
        client,
        &exchange.url,
        EKS_CLUSTER,
        "us-west-2",
        Some(CloudAuth::TokenFile(TokenFile::new(agent_token_file))),
    )
    .unwrap();
    let agent = start_agent(Provider::Eks, Arc::new(backend), |_| {}).await;
    let pod_token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&pod_token_file, pod_token("pi-demo", "app", "app-7f9c", EKS_AUD)).unwrap();
    let parsed = container_provider(&agent.url, &pod_token_file).await;
    assert_eq!(
        parsed,
        json!({"ak": "ASIASTAND", "sk": "sts-secret", "token": "sts-session-token", "method": "container-role"})
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].get("RoleArn"), Some(APP_ROLE));
    // The agent's token, then the pod's.
    assert_eq!(api.reviews_for("pod-identity-exchange"), 1);
    assert_eq!(api.reviews_for(EKS_AUD), 1);
}

/// What botocore's container credential provider in a pod loads from the agent at `url`, with
/// the pod's token in `token_file`: its access key, secret key, token and method.
async fn container_provider(url: &str, token_file: &std::path::Path) -> Value {
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

/// Runs botocore's `eks-auth` call for `pod` of `namespace/app` against `exchange`.
async fn call_as_app(exchange: &RunningExchange, namespace: &str, pod: &str) -> Value {
    let token = pod_token(namespace, "app", pod, EKS_AUD);
    let agent = agent_token(crate::common::NODE);
    let url = exchange.url.clone();
    let mut out = tokio::task::spawn_blocking(move || botocore(&url, Some(&agent), EKS_CLUSTER, &[&token]))
        .await
        .unwrap();
    out.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_role_chaining_and_a_session_policy_without_tags_reach_sts() {
    let (_api, calls, _dir, exchange) = exchange_with_recording_sts().await;
    let out = call_as_app(&exchange, "pi-chain", "chain-1").await;
    assert_eq!(
        out["ok"]["assumedRoleUser"]["arn"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1),
        Some("target-role"),
        "{out}"
    );
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        let (first, second) = (&calls[0], &calls[1]);
        assert_eq!(first.get("RoleArn"), Some(APP_ROLE));
        assert_eq!(first.get("Tags.member.3.Value"), Some("pi-chain"));
        assert_eq!(first.get("ExternalId"), None);
        // The target role, with the first session's key and the association's external id;
        // the transitive tags are not sent again.
        assert_eq!(second.get("RoleArn"), Some(TARGET_ROLE));
        assert_eq!(second.get("ExternalId"), Some("c-1"));
        assert_eq!(second.get("RoleSessionName"), first.get("RoleSessionName"));
        assert_eq!(second.get("Tags.member.1.Key"), None);
        assert!(
            second
                .authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=ASIASTAND/"),
            "{}",
            second.authorization
        );
    }
    let out = call_as_app(&exchange, "pi-policy", "policy-1").await;
    assert!(out["ok"].is_object(), "{out}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].get("Policy"), Some(POLICY));
    assert_eq!(calls[2].get("Tags.member.1.Key"), None);
    assert_eq!(calls[2].get("TransitiveTagKeys.member.1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_sts_chains_to_the_target_role() {
    let api = StandIn::start(false).await;
    let sts = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = start_eks_exchange(&api, &sts.url, EKS_CLUSTER, associations(dir.path())).await;
    let out = call_as_app(&exchange, "pi-chain", "chain-1").await;
    let arn = out["ok"]["assumedRoleUser"]["arn"].as_str().unwrap_or_default();
    assert!(
        arn.starts_with("arn:aws:sts::444455556666:assumed-role/target-role/eks-edge-1-chain-1-"),
        "{out}"
    );
    assert!(
        out["ok"]["credentials"]["accessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
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
async fn credential_sources() -> (String, Arc<Mutex<Vec<String>>>) {
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

/// The exchange binary for `edge-1` with TokenReview on `api` and STS at `sts_url`; its URL.
async fn spawn_eks_exchange(
    dir: &std::path::Path,
    api: &StandIn,
    sts_url: &str,
    env: &[(&str, &str)],
) -> (String, Spawned) {
    let kubeconfig = api.kubeconfig(dir, "kube-bearer-token");
    associations(dir);
    let [port] = free_ports::<1>();
    let listen = format!("127.0.0.1:{port}");
    let associations = dir.join("associations.yaml");
    let args = [
        "exchange",
        "--listen",
        &listen,
        "--cluster-name",
        EKS_CLUSTER,
        "--region",
        "us-west-2",
        "--sts-endpoint",
        sts_url,
        "--associations",
        associations.to_str().unwrap(),
    ];
    let mut env = env.to_vec();
    env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    let exchange = spawn_isolated(dir, "exchange", &args, &env);
    crate::common::until_ready(
        &reqwest::Client::new(),
        &format!("http://{listen}/readyz"),
        std::time::Instant::now() + std::time::Duration::from_secs(30),
    )
    .await;
    (format!("http://{listen}"), exchange)
}

/// botocore's `eks-auth` call for pods `pods` of pi-demo/app against the exchange at `url`.
async fn botocore_for_pods(url: &str, pods: &[&str]) -> Vec<Value> {
    let tokens: Vec<String> = pods
        .iter()
        .map(|pod| pod_token("pi-demo", "app", pod, EKS_AUD))
        .collect();
    let (url, agent) = (url.to_owned(), agent_token(crate::common::NODE));
    tokio::task::spawn_blocking(move || {
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        botocore(&url, Some(&agent), EKS_CLUSTER, &tokens)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_assumes_roles_with_the_container_endpoints_credentials() {
    let api = StandIn::start(false).await;
    let (sts_url, calls) = recording_sts().await;
    let (sources, seen) = credential_sources().await;
    let dir = tempfile::tempdir().unwrap();
    let full_uri = format!("{sources}/container");
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth"),
    ];
    let (url, exchange) = spawn_eks_exchange(dir.path(), &api, &sts_url, &env).await;
    let out = botocore_for_pods(&url, &["app-1", "app-2"]).await;
    for r in &out {
        assert_eq!(
            r["ok"]["credentials"]["accessKeyId"],
            "ASIASTAND",
            "{r}\n{}",
            exchange.log()
        );
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert!(
            call.authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=ASIACONTAINER/"),
            "{}",
            call.authorization
        );
        assert_eq!(call.security_token.as_deref(), Some("container-session"));
    }
    assert_eq!(*seen.lock().unwrap(), ["GET /container"]);
    assert!(exchange.log().contains("EcsContainer"), "{}", exchange.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_aws_credentials_the_answer_says_what_to_set() {
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
    // The exchange: EKS Auth's InternalServerException, with the same advice; STS not called.
    let api = StandIn::start(false).await;
    let (sts_url, calls) = recording_sts().await;
    let (url, exchange) = spawn_eks_exchange(dir.path(), &api, &sts_url, &[]).await;
    let out = botocore_for_pods(&url, &["app-1"]).await;
    let r = &out[0];
    assert_eq!(r["error"], "InternalServerException", "{r}\n{}", exchange.log());
    assert_eq!(r["status"], 500);
    let message = r["message"].as_str().unwrap();
    assert!(
        message.contains("the exchange has no usable AWS credentials")
            && message.contains("AWS_SHARED_CREDENTIALS_FILE"),
        "{message}"
    );
    assert!(calls.lock().unwrap().is_empty());
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
