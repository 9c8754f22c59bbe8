//! The chart's rendering run: the agent and the exchange of the EKS rendering started with the
//! rendered arguments, the exchange's TokenReview and association watch on the real API server.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::agents::credentials_request;
use crate::common::apiserver::ApiServer;
use crate::common::deploy::args_of;
use crate::common::{BIN, NODE, free_ports};
use crate::eks_auth::{recording_sts, spawn_isolated};
use crate::helm::{CIDRS, container, env_of, flag_of, render, under};

/// The agent and the exchange the chart renders for backend eks, started with exactly the
/// rendered arguments and environment (only addresses and the pods' mount paths moved to this
/// machine): a pod's token goes through the agent, over TLS to the exchange, which signs STS
/// with the key of the profile in the files Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_the_exchange_of_the_eks_rendering_serve_a_pod() {
    let Some(api) = ApiServer::shared() else { return };
    crate::common::crypto();
    api.install_crd();
    // A namespace of this test's: its association (cluster-scoped, named after it) is its own.
    let ns = api.namespace("helm-eks", &[]).await;
    api.apply(&format!(
        "apiVersion: podidentity.io/v1alpha1\nkind: PodIdentityAssociation\nmetadata:\n  name: {ns}.app\n\
         spec:\n  namespace: {ns}\n  serviceAccount: app\n  roleArn: arn:aws:iam::111122223333:role/app-role\n"
    ));
    let (sts_url, calls) = recording_sts().await;
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    let values = json!({"provider": "eks", "backend": "eks", "awsRegion": "us-west-2",
        "eks": {"clusterName": "edge-1", "stsEndpoint": sts_url}, "networkPolicies": cidrs,
        "exchange": {"aws": {"filesSecret": "pod-identity-aws", "profile": "exchange"}}});
    let docs = render(&values).docs;
    let (_, exchange) = container(&docs, "Deployment", "pod-identity-exchange");
    let (_, agent) = container(&docs, "DaemonSet", "pod-identity-agent");

    // What the volumes would hold: the profile's files, the exchange's pair and its CA, the
    // agent's token.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let env = env_of(exchange);
    let credentials = PathBuf::from(under(root, &env["AWS_SHARED_CREDENTIALS_FILE"]));
    std::fs::create_dir_all(credentials.parent().unwrap()).unwrap();
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n\
         [exchange]\naws_access_key_id = AKIDCHART\naws_secret_access_key = chart-secret\n",
    )
    .unwrap();
    let exchange_args: Vec<&str> = args_of(exchange);
    let cert_dir = PathBuf::from(under(root, flag_of(&exchange_args, "--cert-dir").unwrap()));
    let out = Command::new(BIN)
        .args(["certs", "--dns", "localhost", "--out"])
        .arg(&cert_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let agent_args: Vec<&str> = args_of(agent);
    let ca_file = PathBuf::from(under(root, flag_of(&agent_args, "--ca-file").unwrap()));
    std::fs::create_dir_all(ca_file.parent().unwrap()).unwrap();
    std::fs::copy(cert_dir.join("ca.crt"), &ca_file).unwrap();
    let token_file = PathBuf::from(under(root, flag_of(&agent_args, "--auth-token-file").unwrap()));
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, api.agent_token(NODE).await).unwrap();
    // The chart's RBAC is not applied here (its ClusterRoles are cluster-wide, the API server
    // shared): both run as the admin.
    let kubeconfig = api.kubeconfig(root, "admin-token");

    let [xport, aport, admin] = free_ports::<3>();
    let moved = |args: &[&str], to: &[(&str, String)]| -> Vec<String> {
        args.iter()
            .map(|a| {
                let flag = a.split('=').next().unwrap();
                match to.iter().find(|(f, _)| *f == flag) {
                    Some((_, value)) => format!("{flag}={value}"),
                    None => under(root, a),
                }
            })
            .collect()
    };
    let args = moved(&exchange_args, &[("--listen", format!("127.0.0.1:{xport}"))]);
    let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), under(root, v))).collect();
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let exchange = spawn_isolated(root, "exchange", &arg_refs, &env_refs);
    let ca = std::fs::read(cert_dir.join("ca.crt")).unwrap();
    crate::common::until_ready(
        &crate::common::client(&[&ca], crate::common::Http::H1),
        &format!("https://localhost:{xport}/readyz"),
        std::time::Instant::now() + std::time::Duration::from_secs(30),
    )
    .await;

    let args = moved(
        &agent_args,
        &[
            ("--listen", format!("127.0.0.1:{aport}")),
            ("--admin-listen", format!("127.0.0.1:{admin}")),
            ("--eks-endpoint", format!("https://localhost:{xport}")),
        ],
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The downward API's spec.nodeName.
    assert_eq!(agent["env"][0]["name"], "POD_IDENTITY_NODE_NAME");
    let env = [
        ("POD_IDENTITY_NODE_NAME", NODE),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];
    let agent = spawn_isolated(root, "agent", &arg_refs, &env);
    crate::common::until_ready(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{admin}/readyz"),
        std::time::Instant::now() + std::time::Duration::from_secs(30),
    )
    .await;

    let token = api
        .pod_token(&ns, "app", "app-1", NODE, "pods.eks.amazonaws.com")
        .await;
    let r = credentials_request(&format!("http://127.0.0.1:{aport}/v1/credentials"), &token).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(
        status,
        200,
        "{body}\nagent:\n{}\nexchange:\n{}",
        agent.log(),
        exchange.log()
    );
    assert_eq!(body["AccessKeyId"], "ASIASTAND");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].get("RoleArn"),
        Some("arn:aws:iam::111122223333:role/app-role")
    );
    assert!(
        calls[0]
            .authorization
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDCHART/"),
        "{}",
        calls[0].authorization
    );
}
