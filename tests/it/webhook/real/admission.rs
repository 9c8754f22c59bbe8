//! The webhook on a real API server: it follows the `PodIdentityAssociation` objects stored
//! there, and kube-apiserver itself calls it through the shipped MutatingWebhookConfiguration,
//! so `kubectl apply --dry-run=server` (and a real create) shows the injection.

use std::time::Duration;

use base64::Engine;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::AssociationSource;
use serde_json::{Value, json};

use crate::common::apiserver::{ApiServer, association_yaml};
use crate::common::*;

/// Whether the webhook injects a pod of service account `sa` in `namespace`.
async fn injects(server: &TestServer, c: &reqwest::Client, namespace: &str, sa: &str) -> bool {
    let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]}});
    let review = review_of(&pod, namespace, "uid-1");
    server.review(c, review).await.get("patch").is_some()
}

/// A webhook serving the associations of `api`.
async fn webhook_on(api: &ApiServer) -> TestServer {
    TestServer::start_in(Some(api.client()), Provider::Cce, |c| {
        c.source = AssociationSource::Kubernetes {
            cluster_id: Some("c-1".into()),
        };
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_follows_the_associations_stored_in_the_api_server() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    let ns = api.namespace("wh-follow", &[]).await;
    api.apply(&association_yaml(&ns, "app", "demo-agency"));
    let server = webhook_on(api).await;
    let c = server.h2();
    eventually("ready", Duration::from_secs(20), async || {
        c.get(server.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(injects(&server, &c, &ns, "app").await, "listed at start");
    assert!(!injects(&server, &c, &ns, "worker").await, "worker has none yet");

    // Created, repointed and deleted through the API server: the watch follows.
    api.apply(&association_yaml(&ns, "worker", "worker-agency"));
    eventually("worker injected", Duration::from_secs(10), async || {
        injects(&server, &c, &ns, "worker").await
    })
    .await;
    // The pod is annotated with the stored object's uid, as the API server assigned it.
    let (ok, uid, err) = api.kubectl(
        &[
            "get",
            "pia",
            "-n",
            &ns,
            "worker",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    assert!(ok && !uid.is_empty(), "{err}");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "worker", "containers": [{"name": "c", "image": "i"}]}});
    let (patched, _) = apply(&server.review(&c, review_of(&pod, &ns, "u")).await, &pod);
    assert_eq!(
        patched["metadata"]["annotations"]["podidentity.io/association"],
        uid.as_str()
    );
    let (ok, out, err) = api.kubectl(&["delete", "pia", "-n", &ns, "app"], None);
    assert!(ok, "{out}{err}");
    eventually("app no longer injected", Duration::from_secs(10), async || {
        !injects(&server, &c, &ns, "app").await
    })
    .await;
    assert!(injects(&server, &c, &ns, "worker").await);
}

/// The shipped MutatingWebhookConfiguration, pointed at `server` (by URL, with its CA) instead
/// of the in-cluster Service.
fn shipped_configuration(server: &TestServer) -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/webhook.yaml"),
    )
    .unwrap();
    let mut config: Value = serde_yaml::from_str(&text).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD.encode(server.ca_pem());
    config["webhooks"][0]["clientConfig"] = json!({
        "url": format!("https://127.0.0.1:{}/mutate", server.addr.port()),
        "caBundle": bundle,
    });
    serde_json::to_string(&config).unwrap()
}

fn pod_manifest(namespace: &str, name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "registry.example/app:1"}]}})
    .to_string()
}

/// The env var `name` of the first container of `pod`.
fn env(pod: &Value, name: &str) -> Option<String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_calls_the_webhook_and_dry_run_server_shows_the_injection() {
    // A MutatingWebhookConfiguration acts on every pod of the cluster: an API server of its own.
    let Some(api) = ApiServer::start_own("webhook-config", &[]) else {
        return;
    };
    api.install_crd();
    let server = webhook_on(&api).await;
    let c = server.h2();
    eventually("ready", Duration::from_secs(20), async || {
        c.get(server.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    for (ns, labels) in [
        ("opted-in", vec![("podidentity.io/injection", "enabled")]),
        ("not-opted-in", vec![]),
    ] {
        api.create_namespace(ns, &labels).await;
        api.service_account(ns, "app").await;
        api.apply(&association_yaml(ns, "app", "demo-agency"));
    }
    api.apply(&shipped_configuration(&server));
    eventually(
        "the webhook sees the associations",
        Duration::from_secs(10),
        async || {
            injects(&server, &c, "opted-in", "app").await && injects(&server, &c, "not-opted-in", "app").await
        },
    )
    .await;

    let dry_run = |ns: &str, labels: Value| {
        let (ok, out, err) = api.kubectl(
            &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&pod_manifest(ns, "web", labels)),
        );
        assert!(ok, "kubectl apply --dry-run=server: {out}{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    // The API server calls the webhook (the configuration's webhook may take a moment to load).
    let mut pod = Value::Null;
    for _ in 0..100 {
        pod = dry_run("opted-in", json!({}));
        if env(&pod, "HC_CONTAINER_CREDENTIALS_FULL_URI").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(
        pod["metadata"]["annotations"]
            .to_string()
            .contains("podidentity.io/association"),
        "dry-run=server shows the injection: {pod:#}"
    );
    assert!(
        volumes.contains("service.cce.pods"),
        "the projected token's audience: {volumes}"
    );
    let mount = pod["spec"]["containers"][0]["volumeMounts"].to_string();
    assert_eq!(
        env(&pod, "HC_CONTAINER_CREDENTIALS_FULL_URI").as_deref(),
        Some("http://169.254.170.23/v1/credentials"),
        "{pod:#}"
    );
    assert!(
        env(&pod, "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some(),
        "{pod:#}"
    );
    assert!(
        mount.contains("/var/run/secrets"),
        "the token is mounted: {mount}"
    );

    // Not opted in, or opted out: the API server does not send it, nothing is injected.
    let plain = dry_run("not-opted-in", json!({}));
    assert!(
        !plain.to_string().contains("podidentity.io/association"),
        "{plain:#}"
    );
    let opted_out = dry_run("opted-in", json!({"podidentity.io/inject": "false"}));
    assert!(
        !opted_out.to_string().contains("podidentity.io/association"),
        "{opted_out:#}"
    );

    // Dry runs leave nothing behind; a real create stores the injected pod.
    let (ok, out, _) = api.kubectl(&["get", "pods", "-n", "opted-in", "-o", "name"], None);
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out, err) = api.kubectl(
        &["create", "-o", "json", "-f", "-"],
        Some(&pod_manifest("opted-in", "web", json!({}))),
    );
    assert!(ok, "{out}{err}");
    let (ok, stored, err) = api.kubectl(&["get", "pod", "-n", "opted-in", "web", "-o", "json"], None);
    assert!(ok, "{err}");
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(
        stored["metadata"]["annotations"]
            .to_string()
            .contains("podidentity.io/association")
    );
    assert_eq!(
        stored["spec"]["containers"][0]["env"], pod["spec"]["containers"][0]["env"],
        "the stored pod carries what the dry run showed"
    );
}
