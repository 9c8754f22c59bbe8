//! The whole flow through the real binaries at debug level, the exchange's TokenReview and
//! association watch on the real API server and every token a real one: no token, secret key
//! or security token may appear in any log.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::agents::{CLUSTER, PROJECT};
use crate::common::apiserver::{ApiServer, association_yaml};
use crate::common::{BIN, NODE, Reaped, doubles, free_ports, until_ready};
use serde_json::Value;

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Reaped {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails before it collects the logs.
    Reaped::new(child)
}

/// Polls `url` (with `client`) for up to 30 s until it answers 200.
async fn wait_ready(client: &reqwest::Client, url: &str) {
    until_ready(client, url, Instant::now() + Duration::from_secs(30)).await;
}

/// Stops the process and returns everything it logged.
fn logs(child: Reaped) -> String {
    let mut child = child.into_inner();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut out = String::new();
    child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let Some(api) = ApiServer::shared() else { return };
    crate::common::crypto();
    api.install_crd();
    // A namespace of this test's, so that its association (cluster-scoped, named after it)
    // is its own.
    let ns = api.namespace("secrets", &[]).await;
    api.apply(&association_yaml(&ns, "app", "demo-agency"));
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A kubeconfig for the exchange's TokenReview and watch: the admin's (system:masters),
    // whose bearer token must not reach the log either.
    let kube_secret = "admin-token";
    let kubeconfig = api.kubeconfig(d, kube_secret);
    // The IAM operator's key pair as a mounted Secret would hold it.
    std::fs::write(d.join("access-key"), "AKOPERATOR\n").unwrap();
    std::fs::write(d.join("secret-key"), "operator-secret-key-value").unwrap();
    let agent_auth = api.agent_token(NODE).await;
    std::fs::write(d.join("agent-token"), &agent_auth).unwrap();

    let [xport, aport, admin, wport] = free_ports::<4>();
    let exchange = spawn(
        &[
            "exchange",
            "--listen",
            &format!("127.0.0.1:{xport}"),
            "--project-id",
            PROJECT,
            "--cluster-id",
            CLUSTER,
            "--iam-endpoint",
            &iam.url,
            "--domain-id",
            "domain-1",
            "--source",
            "kubernetes",
            "--access-key-file",
            d.join("access-key").to_str().unwrap(),
            "--secret-key-file",
            d.join("secret-key").to_str().unwrap(),
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let agent = spawn(
        &[
            "agent",
            "--listen",
            &format!("127.0.0.1:{aport}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--backend",
            "cce",
            "--cce-endpoint",
            &format!("http://127.0.0.1:{xport}"),
            "--project-id",
            PROJECT,
            "--cluster-id",
            CLUSTER,
            "--auth-token-file",
            d.join("agent-token").to_str().unwrap(),
        ],
        &[],
    );
    // The webhook too, with a fixture admission, at debug level.
    let certs = d.join("certs");
    let webhook = spawn(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{wport}"),
            "--cert-dir",
            certs.to_str().unwrap(),
            "--associations",
            "tests/fixtures/associations.yaml",
        ],
        &[],
    );
    wait_ready(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{xport}/readyz"),
    )
    .await;
    wait_ready(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{admin}/readyz"),
    )
    .await;

    let token = api.pod_token(&ns, "app", "app-1", NODE, "service.cce.pods").await;
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{aport}/v1/credentials"))
        .header("Authorization", &token)
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    let creds = &body["credentials"];
    // A refused token (a service account without association) takes the error paths too.
    let bad = api.pod_token(&ns, "x", "p", NODE, "service.cce.pods").await;
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{aport}/v1/credentials"))
        .header("Authorization", &bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A pod calling the exchange directly, with no caller token: refused, and logged.
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{xport}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity"
        ))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let end = Instant::now() + Duration::from_secs(20);
    while !certs.join("ca.crt").exists() {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = crate::common::client(
        &[&std::fs::read(certs.join("ca.crt")).unwrap()],
        crate::common::Http::H2,
    );
    wait_ready(&c, &format!("https://127.0.0.1:{wport}/readyz")).await;
    let r = c
        .post(format!("https://127.0.0.1:{wport}/mutate"))
        .body(crate::common::fixture("01-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let exchange_log = logs(exchange);
    assert!(
        exchange_log.contains("exchange refused") && exchange_log.contains("no_caller_token"),
        "{exchange_log}"
    );
    let signed = iam.calls()[0]
        .header("Authorization")
        .unwrap_or_default()
        .to_owned();
    assert!(
        signed.contains("Access=AKOPERATOR"),
        "IAM calls signed with the key files: {signed}"
    );
    let all = [logs(agent), exchange_log, logs(webhook)].join("\n");
    assert!(all.contains("DEBUG"), "debug logging was on");
    assert!(all.contains("agency credentials issued"), "the flow ran");
    let secrets = [
        token.as_str(),
        bad.as_str(),
        creds["secretAccessKey"].as_str().unwrap(),
        creds["securityToken"].as_str().unwrap(),
        "operator-secret-key-value",
        agent_auth.as_str(),
        kube_secret,
    ];
    for s in secrets {
        // The JWT payload alone would identify the token too.
        let payload = s.split('.').nth(1).unwrap_or(s);
        assert!(
            !all.contains(s) && !all.contains(payload),
            "a secret leaked into the logs: {}...",
            &s[..12.min(s.len())]
        );
    }
}
