//! Association lifecycle on the node against a real API server: cached credentials follow
//! the `PodIdentityAssociation` objects (deleted or pointed at another agency: the next answer
//! is the new one), and the pods of the agent's node, watched with the `spec.nodeName` field
//! selector (a pod that is gone loses its credentials and is not refreshed again). The pods
//! are real pods on (node objects of) nodes of the test's own, their tokens the real pod-bound
//! TokenRequest tokens; the agent and the exchange act as service accounts with the
//! manifests' ClusterRoles, and the agent without `list` on pods is refused by real RBAC.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use pod_identity_webhook::agent::NodePods;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{PodIdentityAssociation, watch_associations};
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::apiserver::{Acting, ApiServer, association_yaml, manifest_rules};
use crate::common::{Logs, doubles, eventually};

const AUD: &str = "service.cce.pods";
const AGENT_RULES: (&str, &str) = ("manifests/agent/agent.yaml", "pod-identity-agent");
const EXCHANGE_RULES: (&str, &str) = ("manifests/agent/exchange.yaml", "pod-identity-exchange");

/// What an SDK gets from the agent for `token`: the status and the agency of the answer.
async fn ask(c: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let r = c.get(url).header("Authorization", token).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    // sts::<domain>::assumed-agency:<agency>/<session>
    let agency = body["assumedAgency"]["urn"]
        .as_str()
        .and_then(|u| u.split("assumed-agency:").nth(1))
        .and_then(|a| a.split('/').next())
        .unwrap_or("")
        .to_owned();
    (status, agency)
}

/// The bound the tests hold revocation to, from the API server's event to the SDK's answer.
const BOUND: Duration = Duration::from_secs(2);

/// A client of the API server as service account `namespace/name` with the rules of the
/// manifests' ClusterRole `rules` (those whose resources include `without` left out).
async fn acting_as(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    rules: (&str, &str),
    without: Option<&str>,
) -> String {
    let mut rules = manifest_rules(rules.0, rules.1);
    if let Some(resource) = without {
        rules
            .as_array_mut()
            .unwrap()
            .retain(|r| !r["resources"].as_array().unwrap().iter().any(|x| x == resource));
    }
    api.service_account_with(namespace, name, rules).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_repointed_association_changes_the_next_answer_within_two_seconds() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    let ns = api.namespace("lc-assoc", &[]).await;
    let node = format!("{ns}-node");
    api.apply(&association_yaml(&ns, "app", "app-agency"));
    api.apply(&association_yaml(&ns, "worker", "worker-agency"));
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    // The exchange and the agent each follow the cluster with their own watch, as deployed,
    // each as its own service account.
    let exchange_token = acting_as(api, &ns, "pod-identity-exchange", EXCHANGE_RULES, None).await;
    let agent_kube = acting_as(api, &ns, "agent-kube-api", AGENT_RULES, None).await;
    let (exchange_index, _w1) = watch_associations(api.client_as(&exchange_token));
    let exchange_api = Acting {
        api,
        token: exchange_token,
    };
    let exchange = ExchangeUnderTest::new(&exchange_api)
        .iam(&iam.url, dir.path())
        .associations(exchange_index)
        .start()
        .await;
    let (agent_index, _w2) = watch_associations(api.client_as(&agent_kube));
    let agent_token = api.agent_token(&node).await;
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend_as(
            &exchange.url,
            dir.path(),
            Duration::from_secs(4),
            None,
            &agent_token,
        ),
    )
    .following(Some(agent_index))
    .start()
    .await;
    let c = reqwest::Client::new();
    eventually("the agent ready", Duration::from_secs(10), async || {
        let r = c.get(format!("{}/readyz", agent.admin)).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let app = api.pod_token(&ns, "app", "app-1", &node, AUD).await;
    let worker = api.pod_token(&ns, "worker", "worker-1", &node, AUD).await;
    assert_eq!(ask(&c, &agent.url, &app).await, (200, "app-agency".into()));
    assert_eq!(ask(&c, &agent.url, &worker).await, (200, "worker-agency".into()));
    let before = iam.calls().len();
    assert_eq!(ask(&c, &agent.url, &app).await.0, 200);
    assert_eq!(iam.calls().len(), before, "answered from the cache");

    let pias: Api<DynamicObject> = Api::namespaced_with(
        api.client(),
        &ns,
        &ApiResource::erase::<PodIdentityAssociation>(&()),
    );
    let start = Instant::now();
    pias.delete("app", &DeleteParams::default()).await.unwrap();
    let repoint = json!({"spec": {"agencyName": "other-agency"}});
    pias.patch("worker", &PatchParams::default(), &Patch::Merge(&repoint))
        .await
        .unwrap();
    // SDK-like clients keep asking, each change timed from the API server's first write.
    let (mut revoked, mut repointed) = (None, None);
    while revoked.is_none() || repointed.is_none() {
        assert!(
            start.elapsed() < BOUND,
            "after {:?}: app {:?}, worker {:?}",
            start.elapsed(),
            ask(&c, &agent.url, &app).await,
            ask(&c, &agent.url, &worker).await
        );
        if revoked.is_none() && ask(&c, &agent.url, &app).await.0 != 200 {
            revoked = Some(start.elapsed());
        }
        if repointed.is_none() && ask(&c, &agent.url, &worker).await == (200, "other-agency".into()) {
            repointed = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("measured: refused after {revoked:?}, new agency after {repointed:?} (bound {BOUND:?})");
    // And it stays that way: nothing cached under the old associations comes back.
    assert_eq!(ask(&c, &agent.url, &app).await.0, 404);
    assert_eq!(ask(&c, &agent.url, &worker).await, (200, "other-agency".into()));
    let agencies: Vec<String> = iam
        .calls()
        .iter()
        .map(|call| call.body["auth"]["identity"]["assume_role"]["agency_name"].to_string())
        .collect();
    assert_eq!(
        agencies.last().map(String::as_str),
        Some("\"other-agency\""),
        "{agencies:?}"
    );
}

/// Seed 000's assume-agency API, recording the pod token of every call and issuing
/// two-second credentials. (The shared CCE double takes only the tests' unsigned tokens; the
/// tokens here are the API server's, and what is under test is which the agent sends.)
#[derive(Clone, Default)]
struct Upstream {
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start() -> (Self, String) {
        async fn handler(State(u): State<Upstream>, body: axum::body::Bytes) -> String {
            let token = serde_json::from_slice::<Value>(&body).unwrap_or_default()["token"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let n = {
                let mut tokens = u.tokens.lock().unwrap();
                tokens.push(token);
                tokens.len()
            };
            let expiration = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2))
                .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            json!({
                "assumedAgency": {"urn": "sts::acct::assumed-agency:demo-agency/cce-c-p-1", "id": "agencyid:cce-c-p-1"},
                "audience": AUD,
                "credentials": {
                    "accessKeyId": format!("CCEAK{n:05}"),
                    "secretAccessKey": format!("cce-secret-{n}"),
                    "securityToken": format!("cce-security-token-{n}"),
                    "expiration": expiration,
                },
                "podIdentityAssociationId": "81f143f5-f469-4fb6-b17c-8f52af73184c",
                "subject": {"namespace": "pi-demo", "serviceAccount": "app"},
            })
            .to_string()
        }
        let u = Upstream::default();
        let app = axum::Router::new()
            .route(
                "/api/v3/projects/{p}/clusters/{c}/assume-agency-for-pod-identity",
                post(handler),
            )
            .with_state(u.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (u, url)
    }

    /// The calls that carried `token`.
    fn calls_for(&self, token: &str) -> usize {
        self.tokens.lock().unwrap().iter().filter(|t| *t == token).count()
    }
}

/// The agent on `node` following its pods as service account `namespace/agent-kube-api` with
/// the manifests' agent ClusterRole (less the rules on `without`), its upstream issuing
/// two-second credentials, refreshed after one.
async fn agent_on_node(
    api: &ApiServer,
    namespace: &str,
    node: &str,
    without: Option<&str>,
) -> (Upstream, RunningAgent, tempfile::TempDir) {
    let kube_token = acting_as(api, namespace, "agent-kube-api", AGENT_RULES, without).await;
    let (upstream, url) = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = api.client_as(&kube_token);
    let agent_token = api.agent_token(node).await;
    let node = node.to_owned();
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend_as(&url, dir.path(), Duration::from_secs(4), None, &agent_token),
    )
    .tweak(|c| {
        c.cache.min_remaining = Duration::from_millis(100);
        c.refresh_interval = Duration::from_millis(100);
        c.pods = Some(NodePods { client, node });
    })
    .start()
    .await;
    (upstream, agent, dir)
}

/// Deletes pod `namespace/name` as the kubelet finally does (grace period 0: gone at once).
async fn delete_pod(api: &ApiServer, namespace: &str, name: &str) {
    let pods = Api::<Pod>::namespaced(api.client(), namespace);
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_credentials_are_dropped_and_never_refreshed() {
    let Some(api) = ApiServer::shared() else { return };
    let ns = api.namespace("lc-pods", &[]).await;
    let (node, other_node) = (format!("{ns}-node"), format!("{ns}-other"));
    let stays = api.pod_token(&ns, "app", "stays", &node, AUD).await;
    let goes = api.pod_token(&ns, "app", "goes", &node, AUD).await;
    let elsewhere = api.pod_token(&ns, "app", "elsewhere", &other_node, AUD).await;
    let (upstream, agent, _dir) = agent_on_node(api, &ns, &node, None).await;
    let c = reqwest::Client::new();
    assert_eq!(ask(&c, &agent.url, &stays).await.0, 200);
    assert_eq!(ask(&c, &agent.url, &goes).await.0, 200);
    assert_eq!(agent.cache.len(), 2);

    delete_pod(api, &ns, "goes").await;
    eventually("the gone pod's credentials dropped", BOUND, async || {
        agent.cache.len() == 1
    })
    .await;
    assert!(agent.cache.fetched_at(&goes).is_none());
    let calls_after_delete = upstream.calls_for(&goes);
    // A pod of another node is not this agent's to follow: its going changes nothing here.
    delete_pod(api, &ns, "elsewhere").await;
    // Several refresh periods: the pod that stays is refreshed, the one that went is not.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(upstream.calls_for(&stays) >= 2, "the live pod is refreshed");
    assert_eq!(upstream.calls_for(&goes), 1, "one call, before the pod went");
    assert_eq!(upstream.calls_for(&goes), calls_after_delete);
    assert_eq!(upstream.calls_for(&elsewhere), 0);
    assert_eq!(agent.cache.len(), 1);
    assert!(agent.cache.fetched_at(&stays).is_some());
}

/// Tests that read the log run on a current-thread runtime: the agent's tasks run on the
/// test's thread, whose log events [`Logs`] captures.
#[tokio::test(flavor = "current_thread")]
async fn without_permission_to_list_pods_the_agent_says_so_and_keeps_refreshing() {
    let (logs, _guard) = Logs::capture();
    let Some(api) = ApiServer::shared() else { return };
    let ns = api.namespace("lc-forbidden", &[]).await;
    let node = format!("{ns}-node");
    // A pod that is gone already: its token stays valid where nobody checks the pod.
    let token = api.pod_token(&ns, "app", "gone-already", &node, AUD).await;
    delete_pod(api, &ns, "gone-already").await;
    let kube_user = format!("system:serviceaccount:{ns}:agent-kube-api");
    let (upstream, agent, _dir) = agent_on_node(api, &ns, &node, Some("pods")).await;
    let groups = ["system:serviceaccounts", "system:authenticated"];
    assert!(!api.may(&kube_user, &groups, "list", "", "pods").await);
    let c = reqwest::Client::new();
    assert_eq!(ask(&c, &agent.url, &token).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !logs.lines_with(&["may not list pods", &node]).is_empty(),
        "{}",
        logs.text()
    );
    assert!(upstream.calls_for(&token) >= 2, "refreshed as before");
    assert!(agent.cache.fetched_at(&token).is_some());
}
