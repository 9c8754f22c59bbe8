//! Doubles of AWS: a recording STS (the Query API's XML), a stand-in of EKS Auth, the standard
//! credential chain's HTTP sources (container endpoint, IMDSv2); botocore's container provider
//! as a pod runs it; and the binary run with no AWS settings of the caller's.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::common::BIN;
use crate::common::python;

pub const EKS_AUD: &str = "pods.eks.amazonaws.com";
pub const EKS_CLUSTER: &str = "edge-1";

/// One `AssumeRole` as STS received it: the form and the headers.
#[derive(Clone, Debug)]
pub struct StsCall {
    pub form: Vec<(String, String)>,
    pub authorization: String,
    pub security_token: Option<String>,
}

impl StsCall {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A recording STS: answers `AssumeRole` in the Query API's XML, refusing roles named
/// `denied` with `AccessDenied` as STS does.
pub async fn recording_sts() -> (String, Arc<Mutex<Vec<StsCall>>>) {
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
pub struct EksCall {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl EksCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct EksStandIn {
    pub calls: Arc<Mutex<Vec<EksCall>>>,
    /// The error EKS Auth answers with, if any: its type and status.
    pub error: Arc<Mutex<Option<(&'static str, u16)>>>,
}

/// A stand-in of AWS's EKS Auth: records each request and answers seed 002, or the error set.
pub async fn eks_auth_standin() -> (String, EksStandIn) {
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

/// What botocore's container credential provider in a pod loads from the agent at `url`, with
/// the pod's token in `token_file`: its access key, secret key, token and method.
pub async fn container_provider(url: &str, token_file: &std::path::Path) -> Value {
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

/// The binary, running; its log (stderr) is in a file, for the assertions' messages.
pub struct Spawned {
    _process: crate::common::Reaped,
    log: std::path::PathBuf,
}

impl Spawned {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the binary with `args` and `env` and nothing of the caller's AWS settings: `dir` holds
/// the shared config and credentials files (absent unless the test wrote them) and the log.
pub fn spawn_isolated(dir: &std::path::Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
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

/// A stand-in of the chain's HTTP sources on loopback, recording `METHOD path` of each
/// request: the container credentials endpoint (`GET /container`, which wants
/// `Authorization: container-auth`) and IMDSv2 (a session token from `PUT /latest/api/token`,
/// then the role and its credentials under `/latest/meta-data/iam/security-credentials/`).
pub async fn credential_sources() -> (String, Arc<Mutex<Vec<String>>>) {
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
