//! Seed 002 served by the exchange, with TokenReview on the real API server of real bound
//! tokens: botocore's own `eks-auth` client (boto3, from PyPI) against it, with STS played by
//! a recording stand-in (to see the exact session name, tags and signature) or by moto's
//! server mode (an independent implementation of `AssumeRole`); end to end from botocore's
//! container provider through the agent; and the exchange binary's AWS credentials from the
//! standard chain.
//!
//! Pods are in the associations' namespaces (pi-demo, pi-chain, pi-policy), named uniquely per
//! test: the API server is shared.

use std::sync::{Arc, Mutex};

use pod_identity_webhook::agent::backend::EksBackend;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{CloudAuth, Reader, TokenFile, file, http_client};
use serde_json::{Value, json};

use super::cce::{suffix, unbound_token};
use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::aws::{
    EKS_AUD, EKS_CLUSTER, Spawned, StsCall, container_provider, credential_sources, recording_sts,
    spawn_isolated,
};
use crate::common::{NODE, free_ports, python};

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

/// The exchange for `edge-1` with TokenReview on `api` and the recording STS (its calls), and
/// the directory of its associations.
async fn exchange_with_recording_sts(
    api: &ApiServer,
) -> (Arc<Mutex<Vec<StsCall>>>, tempfile::TempDir, RunningExchange) {
    let (sts_url, calls) = recording_sts().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .eks(&sts_url, EKS_CLUSTER)
        .associations(associations(dir.path()))
        .start()
        .await;
    (calls, dir, exchange)
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
    let Some(api) = ApiServer::shared() else { return };
    let (calls, _dir, exchange) = exchange_with_recording_sts(api).await;
    let pod = format!("app-7f9c-{}", suffix());
    let (out, pod_uid) = call_as_app(api, &exchange, "pi-demo", &pod).await;
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
    let pattern = regex::Regex::new(&format!("^eks-edge-1-{}-[0-9a-f]{{8}}$", regex::escape(&pod))).unwrap();
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
            ("kubernetes-pod-name", pod.as_str()),
            ("kubernetes-pod-uid", pod_uid.as_str()),
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
    let Some(api) = ApiServer::shared() else { return };
    let (calls, _dir, exchange) = exchange_with_recording_sts(api).await;
    let s = suffix();
    let unbound = unbound_token(api, "pi-demo", "app", EKS_AUD).await;
    let wrong_audience = api
        .pod_token("pi-demo", "app", &format!("app-1-{s}"), NODE, "service.cce.pods")
        .await;
    let no_association = api
        .pod_token("pi-demo", "default", &format!("web-1-{s}"), NODE, EKS_AUD)
        .await;
    let sts_refuses = api
        .pod_token("pi-demo", "worker", &format!("worker-1-{s}"), NODE, EKS_AUD)
        .await;
    let other_node = api
        .pod_token("pi-demo", "app", &format!("app-2-{s}"), "node-b", EKS_AUD)
        .await;
    let agent = api.agent_token(NODE).await;
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
    let Some(api) = ApiServer::shared() else { return };
    let sts = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .eks(&sts.url, EKS_CLUSTER)
        .associations(associations(dir.path()))
        .start()
        .await;
    let pod = format!("app-7f9c-{}", suffix());
    let (out, _) = call_as_app(api, &exchange, "pi-demo", &pod).await;
    let r = &out["ok"];
    let key = r["credentials"]["accessKeyId"].as_str().unwrap_or_default();
    assert!(key.starts_with("ASIA") && key.len() >= 16, "{out:?}");
    assert!(!r["credentials"]["sessionToken"].as_str().unwrap().is_empty());
    let arn = r["assumedRoleUser"]["arn"].as_str().unwrap();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::111122223333:assumed-role/app-role/eks-edge-1-{pod}-"
        )),
        "{arn}"
    );
    let expires: jiff::Timestamp = r["credentials"]["expiration"].as_str().unwrap().parse().unwrap();
    let left = expires.as_second() - jiff::Timestamp::now().as_second();
    assert!((3500..=3700).contains(&left), "{left}");
}

/// botocore's container credential provider → agent (`eks` backend, its token as
/// `X-Auth-Token`) → exchange (seed 002) → TokenReview stand-in + recording STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_from_botocore_through_the_agent_to_the_exchange_and_sts() {
    let Some(api) = ApiServer::shared() else { return };
    let (calls, dir, exchange) = exchange_with_recording_sts(api).await;
    let agent_token_file = dir.path().join("agent-token");
    std::fs::write(&agent_token_file, api.agent_token(NODE).await).unwrap();
    let client = http_client(None, std::time::Duration::from_secs(4)).unwrap();
    let backend = EksBackend::new(
        client,
        &exchange.url,
        EKS_CLUSTER,
        "us-west-2",
        Some(CloudAuth::TokenFile(TokenFile::new(agent_token_file))),
    )
    .unwrap();
    let agent = AgentUnderTest::new(Provider::Eks, Arc::new(backend))
        .start()
        .await;
    let pod_token_file = dir.path().join("eks-pod-identity-token");
    let pod = format!("app-7f9c-{}", suffix());
    let token = api.pod_token("pi-demo", "app", &pod, NODE, EKS_AUD).await;
    std::fs::write(&pod_token_file, token).unwrap();
    let parsed = container_provider(&agent.url, &pod_token_file).await;
    assert_eq!(
        parsed,
        json!({"ak": "ASIASTAND", "sk": "sts-secret", "token": "sts-session-token", "method": "container-role"})
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].get("RoleArn"), Some(APP_ROLE));
    // The agent's token, then the pod's.
    assert_eq!(exchange.reviews_for("pod-identity-exchange"), 1);
    assert_eq!(exchange.reviews_for(EKS_AUD), 1);
}

/// Runs botocore's `eks-auth` call for pod `pod` of `namespace/app` (made on [`NODE`])
/// against `exchange`, the agent's token as the caller's: the result and the pod's uid.
async fn call_as_app(
    api: &ApiServer,
    exchange: &RunningExchange,
    namespace: &str,
    pod: &str,
) -> (Value, String) {
    api.create_namespace(namespace, &[]).await;
    let p = api.pod(namespace, pod, "app", NODE).await;
    let token = api.token(namespace, "app", Some(&p), EKS_AUD, 3600).await;
    let agent = api.agent_token(NODE).await;
    let url = exchange.url.clone();
    let mut out = tokio::task::spawn_blocking(move || botocore(&url, Some(&agent), EKS_CLUSTER, &[&token]))
        .await
        .unwrap();
    (out.remove(0), p.metadata.uid.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_role_chaining_and_a_session_policy_without_tags_reach_sts() {
    let Some(api) = ApiServer::shared() else { return };
    let (calls, _dir, exchange) = exchange_with_recording_sts(api).await;
    let s = suffix();
    let (out, _) = call_as_app(api, &exchange, "pi-chain", &format!("chain-1-{s}")).await;
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
    let (out, _) = call_as_app(api, &exchange, "pi-policy", &format!("policy-1-{s}")).await;
    assert!(out["ok"].is_object(), "{out}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].get("Policy"), Some(POLICY));
    assert_eq!(calls[2].get("Tags.member.1.Key"), None);
    assert_eq!(calls[2].get("TransitiveTagKeys.member.1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_sts_chains_to_the_target_role() {
    let Some(api) = ApiServer::shared() else { return };
    let sts = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .eks(&sts.url, EKS_CLUSTER)
        .associations(associations(dir.path()))
        .start()
        .await;
    let pod = format!("chain-1-{}", suffix());
    let (out, _) = call_as_app(api, &exchange, "pi-chain", &pod).await;
    let arn = out["ok"]["assumedRoleUser"]["arn"].as_str().unwrap_or_default();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::444455556666:assumed-role/target-role/eks-edge-1-{pod}-"
        )),
        "{out}"
    );
    assert!(
        out["ok"]["credentials"]["accessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
    );
}

/// The exchange binary for `edge-1` with TokenReview on `api` (as the admin: it needs to
/// create TokenReviews) and STS at `sts_url`; its URL.
async fn spawn_eks_exchange(
    dir: &std::path::Path,
    api: &ApiServer,
    sts_url: &str,
    env: &[(&str, &str)],
) -> (String, Spawned) {
    let kubeconfig = api.kubeconfig(dir, "admin-token");
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

/// botocore's `eks-auth` call for pods `pods` of pi-demo/app (made on [`NODE`], their names
/// suffixed with `suffix`) against the exchange at `url`.
async fn botocore_for_pods(api: &ApiServer, url: &str, pods: &[&str], suffix: &str) -> Vec<Value> {
    let mut tokens = Vec::new();
    for pod in pods {
        let pod = format!("{pod}-{suffix}");
        tokens.push(api.pod_token("pi-demo", "app", &pod, NODE, EKS_AUD).await);
    }
    let (url, agent) = (url.to_owned(), api.agent_token(NODE).await);
    tokio::task::spawn_blocking(move || {
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        botocore(&url, Some(&agent), EKS_CLUSTER, &tokens)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_assumes_roles_with_the_container_endpoints_credentials() {
    let Some(api) = ApiServer::shared() else { return };
    let (sts_url, calls) = recording_sts().await;
    let (sources, seen) = credential_sources().await;
    let dir = tempfile::tempdir().unwrap();
    let full_uri = format!("{sources}/container");
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth"),
    ];
    let (url, exchange) = spawn_eks_exchange(dir.path(), api, &sts_url, &env).await;
    let out = botocore_for_pods(api, &url, &["app-1", "app-2"], &suffix()).await;
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
async fn without_aws_credentials_the_exchanges_answer_says_what_to_set() {
    let Some(api) = ApiServer::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    // EKS Auth's InternalServerException, with the advice the agent gives
    // (`agent::eks_backend::without_aws_credentials_the_agents_answer_says_what_to_set`); STS not called.
    let (sts_url, calls) = recording_sts().await;
    let (url, exchange) = spawn_eks_exchange(dir.path(), api, &sts_url, &[]).await;
    let out = botocore_for_pods(api, &url, &["app-1"], &suffix()).await;
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
