//! The missed-injection report on a real API server: webhook replicas (the binary, with
//! `KUBECONFIG` and a service-account token bound by the shipped RBAC) share a real
//! coordination.k8s.io Lease (server-side apply, one field manager per replica), watch real
//! pods, judge by the real MutatingWebhookConfiguration and send real events.k8s.io Events,
//! read back from the API server. A pod created before its association (or admitted while the
//! webhook was unreachable) gets one Event and is counted by namespace; injected, opted-out,
//! finished, unselected and association-less pods are not.
//!
//! The tests that report own their API server: the report watches every pod of the cluster
//! and reads the one cluster-wide webhook configuration.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use pod_identity_webhook::testing::PodIdentityAssociation;
use serde_json::{Value, json};

use crate::common::apiserver::ApiServer;
use crate::common::*;

/// Where the shipped manifests put the webhook, its service account and its Lease.
const SYSTEM: &str = "pod-identity-system";
const WEBHOOK_SA: &str = "pod-identity-webhook";
const LEASE: &str = "pod-identity-webhook-report";
/// The audience the API server accepts tokens for (its issuer, without `--api-audiences`).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const OPTED_IN: (&str, &str) = ("podidentity.io/injection", "enabled");

fn manifest(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// An own API server with the CRD, the webhook's namespace and the shipped RBAC applied.
async fn cluster(name: &str) -> Option<ApiServer> {
    let api = ApiServer::start_own(name, &[])?;
    api.install_crd();
    api.apply(&manifest("manifests/base/namespace.yaml"));
    api.apply(&manifest("manifests/base/rbac.yaml"));
    Some(api)
}

/// The token of webhook replica `name` as its pod would have it: service account
/// `namespace/sa`, bound to pod `namespace/name`.
/// The pod meets the restricted Pod Security level the shipped namespace enforces.
async fn replica_token(api: &ApiServer, namespace: &str, sa: &str, name: &str) -> String {
    let restricted = json!({
        "runAsNonRoot": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    let pod = json!({"metadata": {"name": name}, "spec": {
        "nodeName": NODE, "serviceAccountName": sa,
        "containers": [{"name": "webhook", "image": "registry.example/pod-identity-webhook:1",
            "securityContext": restricted}]}});
    let pod = api.pod_with(namespace, pod).await;
    api.token(namespace, sa, Some(&pod), API_AUDIENCE, 3600).await
}

/// A webhook replica named `name` in `namespace` with `kubeconfig`, its log in `dir`.
fn replica(kubeconfig: &Path, dir: &Path, namespace: &str, name: &str, port: u16) -> Reaped {
    spawn(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cert-dir",
            dir.join("certs").to_str().unwrap(),
            "--source",
            "kubernetes",
            "--report-lease-seconds",
            "3",
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", name),
            ("POD_NAMESPACE", namespace),
            ("RUST_LOG", "info"),
        ],
        &dir.join(format!("{name}.log")),
    )
}

/// One ready webhook replica (`replica-0` in `namespace`, acting with `token`), and a client
/// trusting it.
struct Single {
    _webhook: Reaped,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    base: String,
}

impl Single {
    async fn start(api: &ApiServer, namespace: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = local_certs(dir.path());
        let port = free_port();
        let kubeconfig = api.kubeconfig(dir.path(), token);
        let webhook = replica(&kubeconfig, dir.path(), namespace, "replica-0", port);
        let client = client(&[&ca], Http::H1);
        let base = format!("https://localhost:{port}");
        let ready = format!("{base}/readyz");
        until_ready(&client, &ready, Instant::now() + Duration::from_secs(30)).await;
        Single {
            _webhook: webhook,
            dir,
            client,
            base,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("replica-0.log")
    }

    async fn metrics(&self) -> String {
        let r = self.client.get(format!("{}/metrics", self.base)).send().await;
        r.unwrap().text().await.unwrap()
    }
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Who holds the report's Lease.
async fn holder(api: &ApiServer) -> Option<String> {
    let lease = Api::<Lease>::namespaced(api.client(), SYSTEM)
        .get(LEASE)
        .await
        .unwrap();
    lease.spec.and_then(|s| s.holder_identity)
}

/// The sum of the API server's `series` samples whose labels include all of `labels`.
fn api_metric(page: &str, series: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The API server's own metrics, as the admin.
async fn api_metrics(api: &ApiServer) -> String {
    let c = client(&[&api.ca], Http::H1);
    let r = c
        .get(format!("{}/metrics", api.url))
        .bearer_auth("admin-token")
        .send()
        .await;
    r.unwrap().text().await.unwrap()
}

/// Cluster-wide pod lists served, and pod watches open, on `api`.
async fn pod_requests(api: &ApiServer) -> (f64, f64) {
    let m = api_metrics(api).await;
    let pods = ["resource=\"pods\"", "scope=\"cluster\"", "subresource=\"\""];
    let lists = api_metric(
        &m,
        "apiserver_request_total",
        &[&pods[..], &["verb=\"LIST\""]].concat(),
    );
    let watches = api_metric(
        &m,
        "apiserver_longrunning_requests",
        &[&pods[..], &["verb=\"WATCH\""]].concat(),
    );
    (lists, watches)
}

/// Pod `namespace/name` of service account `sa`, with `extra` merged into it.
async fn pod_of(api: &ApiServer, ns: &str, name: &str, sa: &str, extra: Value) -> Pod {
    let mut p = json!({"metadata": {"name": name}, "spec": {
        "nodeName": NODE, "serviceAccountName": sa,
        "containers": [{"name": "app", "image": "registry.example/app:1"}]}});
    json_patch::merge(&mut p, &extra);
    api.pod_with(ns, p).await
}

/// The association `namespace/sa` → `agency`, created as the admin.
async fn associate(api: &ApiServer, ns: &str, sa: &str, agency: &str) {
    let ar = ApiResource::erase::<PodIdentityAssociation>(&());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "iam.podidentity.io/v1beta1", "kind": "PodIdentityAssociation",
        "metadata": {"name": sa, "namespace": ns},
        "spec": {"serviceAccount": sa, "agencyName": agency}}))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(api.client(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

/// The report's Events in `namespaces`, as the API server holds them.
async fn events(api: &ApiServer, namespaces: &[&str]) -> Vec<Event> {
    let mut all = vec![];
    for ns in namespaces {
        let list = Api::<Event>::namespaced(api.client(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        all.extend(
            list.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("PodIdentityNotInjected")),
        );
    }
    all
}

/// `namespace/name` of the pods the report's Events are about, sorted, each checked to name
/// the live pod's uid.
async fn reported(api: &ApiServer, namespaces: &[&str]) -> Vec<String> {
    let mut out = vec![];
    for e in events(api, namespaces).await {
        let r = e.regarding.unwrap_or_default();
        let (ns, name) = (r.namespace.unwrap_or_default(), r.name.unwrap_or_default());
        let live = Api::<Pod>::namespaced(api.client(), &ns)
            .get_opt(&name)
            .await
            .unwrap();
        let uid = live.and_then(|p| p.metadata.uid);
        assert_eq!(r.uid, uid, "the Event names the pod {ns}/{name} by its uid");
        out.push(format!("{ns}/{name}"));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_before_its_association_is_reported_once_by_one_of_two_replicas() {
    let Some(api) = cluster("report-lease").await else {
        return;
    };
    let api = &api;
    api.create_namespace("team-a", &[OPTED_IN]).await;
    api.create_namespace("team-off", &[]).await;
    let early = pod_of(api, "team-a", "early", "app", json!({})).await;
    let annotated = json!({"metadata": {"annotations": {"podidentity.io/association": "x"}}});
    pod_of(api, "team-a", "injected", "app", annotated).await;
    let opted_out = json!({"metadata": {"labels": {"podidentity.io/inject": "false"}}});
    pod_of(api, "team-a", "opted-out", "app", opted_out).await;
    pod_of(api, "team-a", "finished", "app", json!({})).await;
    Api::<Pod>::namespaced(api.client(), "team-a")
        .patch_status(
            "finished",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
    pod_of(api, "team-a", "stranger", "nobody", json!({})).await;
    pod_of(api, "team-off", "elsewhere", "app", json!({})).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = local_certs(d);
    let c = client(&[&ca], Http::H1);
    let ports = [free_port(), free_port()];
    let before = pod_requests(api).await;
    let mut replicas = vec![];
    let mut kubeconfigs = vec![];
    for (i, port) in ports.iter().enumerate() {
        let name = format!("replica-{i}");
        let token = replica_token(api, SYSTEM, WEBHOOK_SA, &name).await;
        kubeconfigs.push(api.kubeconfig(d, &token));
        replicas.push(Some(replica(&kubeconfigs[i], d, SYSTEM, &name, *port)));
    }
    for p in ports {
        let url = format!("https://localhost:{p}/readyz");
        until_ready(&c, &url, Instant::now() + Duration::from_secs(30)).await;
    }
    let metrics = async |port: u16| {
        let url = format!("https://localhost:{port}/metrics");
        match c.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };

    // Associations created after the pods: only team-a/early is missed.
    associate(api, "team-a", "app", "app-agency").await;
    associate(api, "team-off", "app", "app-agency").await;
    let ns = ["team-a", "team-off"];
    eventually(
        "the Event for team-a/early",
        Duration::from_secs(15),
        async || !events(api, &ns).await.is_empty(),
    )
    .await;
    let event = events(api, &ns).await.remove(0);
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.action.as_deref(), Some("Report"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("podidentity.io/pod-identity-webhook")
    );
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.namespace.as_deref(), Some("team-a"));
    assert_eq!(regarding.name.as_deref(), Some("early"));
    assert_eq!(regarding.uid, early.metadata.uid);
    let note = event.note.clone().unwrap();
    assert!(
        note.contains("team-a/app") && note.contains("app-agency") && note.contains("Recreate the pod"),
        "{note}"
    );

    // One replica holds the Lease and counts; the other does nothing.
    let mut leader = None;
    eventually("the count on the leader", Duration::from_secs(10), async || {
        for (i, p) in ports.iter().enumerate() {
            let m = metrics(*p).await;
            if metric(&m, "podidentity_report_leader") == 1
                && metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 1
            {
                leader = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let leader = leader.unwrap();
    let follower = 1 - leader;
    assert_eq!(event.reporting_instance, Some(format!("replica-{leader}")));
    let lease = Api::<Lease>::namespaced(api.client(), SYSTEM)
        .get(LEASE)
        .await
        .unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity, Some(format!("replica-{leader}")));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    // The holder took it with server-side apply.
    let fields = lease.metadata.managed_fields.unwrap_or_default();
    assert!(
        fields.iter().any(|f| f.operation.as_deref() == Some("Apply")),
        "{fields:?}"
    );
    let m = metrics(ports[leader]).await;
    assert!(!m.contains("namespace=\"team-off\""), "{m}");
    assert_eq!(metric(&m, "podidentity_missed_injection_events_total"), 1, "{m}");
    let m = metrics(ports[follower]).await;
    assert_eq!(metric(&m, "podidentity_report_leader"), 0, "{m}");
    assert_eq!(metric(&m, "podidentity_missed_injection_events_total"), 0, "{m}");
    // What the two replicas cost the API server in pods: each one permission check (a list of
    // one), and the leader's one watch with the list it starts from.
    let after = pod_requests(api).await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (3.0, 1.0));

    // A pod admitted while the webhook was unreachable is reported too, and nothing twice.
    pod_of(api, "team-a", "late", "app", json!({})).await;
    eventually("the Event for team-a/late", Duration::from_secs(10), async || {
        events(api, &ns).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reported(api, &ns).await, ["team-a/early", "team-a/late"]);

    // The leader stops and releases the Lease: the other takes over, counts the same pods
    // and sends no second Event for them (the API server refuses one of the same name).
    let mut stopped = replicas[leader].take().unwrap().into_inner();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &stopped.id().to_string()])
        .status();
    assert!(stopped.wait().unwrap().success());
    let log = std::fs::read_to_string(d.join(format!("replica-{leader}.log"))).unwrap();
    assert!(log.contains("released the report's Lease"), "{log}");
    eventually(
        "the other replica taking over",
        Duration::from_secs(15),
        async || {
            let m = metrics(ports[follower]).await;
            metric(&m, "podidentity_report_leader") == 1
                && metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 2
        },
    )
    .await;
    assert_eq!(holder(api).await, Some(format!("replica-{follower}")));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reported(api, &ns).await, ["team-a/early", "team-a/late"]);
    assert_eq!(
        metric(
            &metrics(ports[follower]).await,
            "podidentity_missed_injection_events_total"
        ),
        0
    );

    // A recreated pod (the old one deleted) is no longer counted.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    Api::<Pod>::namespaced(api.client(), "team-a")
        .delete("early", &now)
        .await
        .unwrap();
    eventually("the count to drop", Duration::from_secs(10), async || {
        let m = metrics(ports[follower]).await;
        metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 1
    })
    .await;

    // The stopped replica comes back and waits; the holder crashes without releasing the
    // Lease, whose fields its field manager still owns: the other takes it over when it ends.
    replicas[leader] = Some(replica(
        &kubeconfigs[leader],
        d,
        SYSTEM,
        &format!("replica-{leader}"),
        ports[leader],
    ));
    let url = format!("https://localhost:{}/readyz", ports[leader]);
    until_ready(&c, &url, Instant::now() + Duration::from_secs(30)).await;
    let mut crashed = replicas[follower].take().unwrap().into_inner();
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    eventually(
        "the restarted replica taking over",
        Duration::from_secs(20),
        async || {
            let m = metrics(ports[leader]).await;
            metric(&m, "podidentity_report_leader") == 1
                && metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 1
        },
    )
    .await;
    assert_eq!(holder(api).await, Some(format!("replica-{leader}")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events(api, &ns).await.len(), 2);
    let m = metrics(ports[leader]).await;
    assert_eq!(metric(&m, "podidentity_missed_injection_events_total"), 0, "{m}");
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_on_pods_the_webhook_says_so_and_keeps_admitting() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    // The webhook's namespace and a service account granted all the shipped RBAC grants but
    // pods.
    let ns = api.namespace("report-no-pods", &[]).await;
    api.service_account(&ns, "webhook").await;
    let role = format!("{ns}-webhook");
    api.apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {role}}}
rules:
- {{apiGroups: [iam.podidentity.io, podidentity.io], resources: [podidentityassociations], verbs: [get, list, watch]}}
- {{apiGroups: [""], resources: [namespaces], verbs: [get]}}
- {{apiGroups: [events.k8s.io], resources: [events], verbs: [create]}}
- {{apiGroups: [admissionregistration.k8s.io], resources: [mutatingwebhookconfigurations], verbs: [get]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects: [{{kind: ServiceAccount, name: webhook, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: webhook, namespace: {ns}}}
rules:
- {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [create, get, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: webhook, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: webhook}}
subjects: [{{kind: ServiceAccount, name: webhook, namespace: {ns}}}]
"#
    ));
    let token = replica_token(api, &ns, "webhook", "replica-0").await;
    let one = Single::start(api, &ns, &token).await;
    let log = one.log();
    eventually("the warning", Duration::from_secs(10), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("may not list pods")
    })
    .await;
    let answer = one
        .client
        .post(format!("{}/mutate", one.base))
        .header("content-type", "application/json")
        .body(fixture("01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let review: Value = answer.json().await.unwrap();
    assert_eq!(review["response"]["allowed"], true, "{review}");
    // It did not take part in the Lease, which it could have.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lease = Api::<Lease>::namespaced(api.client(), &ns)
        .get_opt(LEASE)
        .await
        .unwrap();
    assert!(lease.is_none(), "{lease:?}");
    let m = one.metrics().await;
    assert_eq!(metric(&m, "podidentity_report_leader"), 0, "{m}");
}

/// The shipped MutatingWebhookConfiguration, its namespace selector replaced by `selector`.
/// Its Service does not exist: `failurePolicy: Ignore` admits the pods it selects without the
/// injection, as while the webhook is unreachable.
fn configuration(selector: Option<Value>) -> String {
    let mut c: Value = serde_yaml::from_str(&manifest("manifests/base/webhook.yaml")).unwrap();
    if let Some(s) = selector {
        c["webhooks"][0]["namespaceSelector"] = s;
    }
    c["webhooks"][0]["failurePolicy"] = json!("Ignore");
    c.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_judges_by_the_webhook_configuration_in_the_cluster() {
    let Some(api) = cluster("report-selectors").await else {
        return;
    };
    let api = &api;
    // The cluster's configuration selects namespaces by a label of the user's own.
    api.apply(&configuration(Some(json!({"matchLabels": {"team": "payments"}}))));
    api.create_namespace("payments", &[("team", "payments")]).await;
    api.create_namespace("opted", &[OPTED_IN]).await;
    pod_of(api, "payments", "p1", "app", json!({})).await;
    pod_of(api, "opted", "o1", "app", json!({})).await;
    associate(api, "payments", "app", "pay-agency").await;
    associate(api, "opted", "app", "opted-agency").await;

    let token = replica_token(api, SYSTEM, WEBHOOK_SA, "replica-0").await;
    let one = Single::start(api, SYSTEM, &token).await;
    let ns = ["payments", "opted"];

    // Only the pod the cluster's selectors take is missed, not the one the shipped ones would.
    eventually("the Event for payments/p1", Duration::from_secs(15), async || {
        reported(api, &ns).await == ["payments/p1"]
    })
    .await;
    let m = one.metrics().await;
    assert_eq!(
        metric(&m, "podidentity_missed_injections{namespace=\"payments\"}"),
        1,
        "{m}"
    );
    assert!(!m.contains("namespace=\"opted\""), "{m}");

    // The configuration changes back to the shipped selectors: every pod is judged again.
    api.apply(&configuration(None));
    eventually("the Event for opted/o1", Duration::from_secs(30), async || {
        reported(api, &ns).await == ["opted/o1", "payments/p1"]
    })
    .await;
    eventually("the counts to follow", Duration::from_secs(10), async || {
        let m = one.metrics().await;
        metric(&m, "podidentity_missed_injections{namespace=\"opted\"}") == 1
            && !m.contains("namespace=\"payments\"")
    })
    .await;
    let log = std::fs::read_to_string(one.log()).unwrap();
    assert!(log.contains("selectors changed"), "{log}");
}
