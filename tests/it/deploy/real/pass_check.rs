//! Who may grant which agency or role, decided on a real API server with real RBAC: the shipped
//! `pod-identity-pass` ValidatingAdmissionPolicy (manifests/base/pass-policy.yaml) holds every
//! writer of an association to `pass` on `agencies` (or `roles`) named for what it grants, in
//! the namespace it grants it to; the association API writes with its caller's own token, so the
//! same policy (and RBAC, and the audit log) sees the caller, while the exchange runs as its
//! service account with the shipped, read-only ClusterRole. The policy acts on every
//! association write of its cluster, so these tests share an API server of their own, not the
//! shared one.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::KubeApi;
use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::python;

/// The API server's own audience (tokens for it act as their service account).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

static OWN: OnceLock<Option<ApiServer>> = OnceLock::new();

/// This module's API server: the CRD, the shipped policy and its binding, enforced; bob may
/// write associations and pass nothing (the probe that the policy is in force).
fn own() -> Option<&'static ApiServer> {
    OWN.get_or_init(|| {
        let api = ApiServer::start_own("pass", &[])?;
        api.install_crd();
        api.apply(&rendered_policy(&api));
        api.apply(&writer_binding("bob-writes", "User", "bob"));
        // The API server loads policies asynchronously: wait until bob's dry run is refused.
        let started = Instant::now();
        let probe = association("default", "probe", "agencyName: probe");
        loop {
            let (ok, out, err) = api.kubectl_as(
                "bob-token",
                &["create", "--dry-run=server", "-f", "-"],
                Some(&probe),
            );
            if !ok && err.contains("pod-identity-pass") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the policy is not enforced: {ok} {out}{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "pass_check: the policy was enforced {:?} after it was applied",
            started.elapsed()
        );
        Some(api)
    })
    .as_ref()
}

/// The policy and its binding as `kubectl kustomize manifests/base` renders them (the chart
/// renders the same objects: `helm::chart_renders_the_objects_the_overlays_render`).
fn rendered_policy(api: &ApiServer) -> String {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base");
    let (ok, out, err) = api.kubectl(&["kustomize", base.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let docs: Vec<String> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Value| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
        })
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{out}");
    docs.join("---\n")
}

/// A ClusterRoleBinding `name` of a ClusterRole writing associations (as the example's) to a
/// subject.
fn writer_binding(name: &str, kind: &str, subject: &str) -> String {
    let ns = if kind == "ServiceAccount" {
        let (ns, sa) = subject.split_once('/').unwrap();
        format!("{{kind: ServiceAccount, namespace: {ns}, name: {sa}}}")
    } else {
        format!("{{kind: {kind}, name: {subject}, apiGroup: rbac.authorization.k8s.io}}")
    };
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: association-writer}}\n\
         rules:\n- {{apiGroups: [iam.podidentity.io, podidentity.io], resources: [podidentityassociations], verbs: [get, list, watch, create, update, patch]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: association-writer}}\n\
         subjects: [{ns}]\n"
    )
}

/// A Role in `namespace` letting `subject` pass `resource` named `names`, and its binding.
fn pass_role(namespace: &str, resource: &str, names: &[&str], subject: &str) -> String {
    let names = serde_json::to_string(names).unwrap();
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: pass-{resource}, namespace: {namespace}}}\n\
         rules:\n- {{apiGroups: [podidentity.io], resources: [{resource}], resourceNames: {names}, verbs: [pass]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: pass-{resource}, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pass-{resource}}}\nsubjects: [{subject}]\n"
    )
}

/// An association of `namespace/sa` with the spec fields `grant` (YAML flow).
fn association(namespace: &str, sa: &str, grant: &str) -> String {
    format!(
        "apiVersion: iam.podidentity.io/v1beta1\nkind: PodIdentityAssociation\nmetadata: {{name: {sa}, namespace: {namespace}}}\n\
         spec: {{serviceAccount: {sa}, {grant}}}\n"
    )
}

/// The same as an old cluster-scoped object (`<namespace>.<sa>`), which the policy still checks.
fn legacy_association(namespace: &str, sa: &str, grant: &str) -> String {
    format!(
        "apiVersion: podidentity.io/v1alpha1\nkind: PodIdentityAssociation\nmetadata: {{name: {namespace}.{sa}}}\n\
         spec: {{namespace: {namespace}, serviceAccount: {sa}, {grant}}}\n"
    )
}

/// `kubectl get pia` of `<namespace>.<sa>` (the namespaced object `sa` in `namespace`).
fn get_pia(api: &ApiServer, name: &str) -> (bool, String) {
    let (ns, sa) = name.split_once('.').unwrap();
    let (ok, _, err) = api.kubectl(&["get", "pia", "-n", ns, sa], None);
    (ok, err)
}

/// `kubectl apply` of `yaml` as `token`: `Ok(stdout)` or `Err(stderr)`.
fn apply_as(api: &ApiServer, token: &str, yaml: &str) -> Result<String, String> {
    let (ok, out, err) = api.kubectl_as(token, &["apply", "-f", "-"], Some(yaml));
    if ok { Ok(out) } else { Err(err) }
}

/// `apply_as`, again until it succeeds (RBAC just applied reaches the authorizer within
/// moments), at most 10 s.
fn apply_eventually(api: &ApiServer, token: &str, yaml: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match apply_as(api, token, yaml) {
            Ok(out) => return out,
            Err(err) if Instant::now() > end => panic!("{err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The refusal names the user, the permission it lacks and the Role to ask for.
fn assert_names_missing_pass(err: &str, user: &str, resource: &str, name: &str, namespace: &str) {
    assert!(
        err.contains("ValidatingAdmissionPolicy 'pod-identity-pass'"),
        "{err}"
    );
    let lacks = format!("{user} may not pass {resource}.podidentity.io \"{name}\" in namespace {namespace}");
    assert!(err.contains(&lacks), "{err:?} lacks {lacks:?}");
    let grant = format!(
        "ask for a Role in {namespace} granting apiGroups [podidentity.io], resources [{resource}], resourceNames [\"{name}\"], verbs [pass]"
    );
    assert!(err.contains(&grant), "{err:?} lacks {grant:?}");
}

/// A spec field of the namespaced object `<namespace>.<sa>`.
fn spec_field(api: &ApiServer, name: &str, field: &str) -> String {
    let (ns, sa) = name.split_once('.').unwrap();
    let (ok, out, err) = api.kubectl(
        &[
            "get",
            "pia",
            "-n",
            ns,
            sa,
            "-o",
            &format!("jsonpath={{.spec.{field}}}"),
        ],
        None,
    );
    assert!(ok, "{err}");
    out
}

/// The example's Roles (examples/rbac/team-a-pass.yaml), bound to alice instead of the group
/// team-a-admins, through `kubectl apply` as alice: team-a's agencies to team-a only; an update
/// needs the pass only when it changes the agency; a delete needs RBAC alone; the admin
/// (`system:masters`) passes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_roles_let_team_a_grant_its_agencies_to_team_a_only() {
    let Some(api) = own() else { return };
    api.create_namespace("team-a", &[]).await;
    api.create_namespace("team-b", &[]).await;
    let example = repo_file("examples/rbac/team-a-pass.yaml").replace(
        "- kind: Group\n  name: team-a-admins",
        "- kind: User\n  name: alice",
    );
    assert_eq!(
        example.matches("name: alice").count(),
        1,
        "the binding bound to alice"
    );
    api.apply(&example);
    let alice = "alice-token";

    // Granted: a-reader to team-a.
    let out = apply_eventually(api, alice, &association("team-a", "app", "agencyName: a-reader"));
    assert!(
        out.contains("podidentityassociation.iam.podidentity.io/app created"),
        "{out}"
    );
    // Another agency: refused, naming the permission.
    let err = apply_as(api, alice, &association("team-a", "web", "agencyName: other")).unwrap_err();
    assert_names_missing_pass(&err, "alice", "agencies", "other", "team-a");
    // team-a's agency to another namespace: refused, by RBAC already (the Role is team-a's).
    let err = apply_as(api, alice, &association("team-b", "app", "agencyName: a-reader")).unwrap_err();
    assert!(err.contains("forbidden") && err.contains("\"team-b\""), "{err}");
    // Re-pointed to the other agency of the Role: allowed; to one it does not name: refused,
    // and the object keeps its agency.
    apply_as(api, alice, &association("team-a", "app", "agencyName: a-writer")).unwrap();
    let err = apply_as(api, alice, &association("team-a", "app", "agencyName: other")).unwrap_err();
    assert_names_missing_pass(&err, "alice", "agencies", "other", "team-a");
    assert_eq!(spec_field(api, "team-a.app", "agencyName"), "a-writer");
    for name in ["team-a.web", "team-b.app"] {
        let (ok, err) = get_pia(api, name);
        assert!(!ok && err.contains("NotFound"), "{name}: {err}");
    }

    // An association the admin granted with an agency alice may not pass: she may change what
    // it does not grant (the token lifetime), not re-point it.
    api.apply(&association("team-a", "legacy", "agencyName: legacy-agency"));
    apply_as(
        api,
        alice,
        &association(
            "team-a",
            "legacy",
            "agencyName: legacy-agency, tokenExpirationSeconds: 3600",
        ),
    )
    .unwrap();
    assert_eq!(spec_field(api, "team-a.legacy", "tokenExpirationSeconds"), "3600");
    let err = apply_as(api, alice, &association("team-a", "legacy", "agencyName: other")).unwrap_err();
    assert_names_missing_pass(&err, "alice", "agencies", "other", "team-a");

    // Delete: RBAC alone. The example's Role grants it in team-a, for any association there
    // (the namespace is the team's), and nowhere else.
    api.apply(&association("team-b", "other", "agencyName: b-agency"));
    let (ok, _, err) = api.kubectl_as(alice, &["delete", "pia", "-n", "team-b", "other"], None);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, out, err) = api.kubectl_as(alice, &["delete", "pia", "-n", "team-a", "legacy"], None);
    assert!(ok, "{out}{err}");
    let (ok, err) = get_pia(api, "team-a.legacy");
    assert!(!ok && err.contains("NotFound"), "{err}");

    // The old cluster-scoped kind is held to the same rule: alice has no RBAC on it (it is
    // cluster-scoped); bob may write it cluster-wide but passes nothing.
    let err = apply_as(
        api,
        alice,
        &legacy_association("team-a", "old", "agencyName: a-reader"),
    )
    .unwrap_err();
    assert!(err.contains("forbidden"), "{err}");
    let err = apply_as(
        api,
        "bob-token",
        &legacy_association("team-a", "old", "agencyName: a-reader"),
    )
    .unwrap_err();
    assert_names_missing_pass(&err, "bob", "agencies", "a-reader", "team-a");

    // bob writes associations and passes nothing; the admin passes everything.
    let err = apply_as(
        api,
        "bob-token",
        &association("team-a", "bob", "agencyName: a-reader"),
    )
    .unwrap_err();
    assert_names_missing_pass(&err, "bob", "agencies", "a-reader", "team-a");
    api.apply(&association("team-b", "admin", "agencyName: anything"));
}

/// roleArn (and the role it chains to, targetRoleArn) needs `pass` on `roles`, granted here to
/// a group: a Role passing agencies of the same name does not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_the_roles_they_chain_to_need_pass_on_roles() {
    let Some(api) = own() else { return };
    let ns = api.namespace("eks", &[]).await;
    let role = "arn:aws:iam::111122223333:role/app";
    let other = "arn:aws:iam::111122223333:role/other";
    let target = "arn:aws:iam::444455556666:role/target";
    let group = "{kind: Group, name: team-c, apiGroup: rbac.authorization.k8s.io}";
    api.apply(&writer_binding("team-c-writes", "Group", "team-c"));
    api.apply(&pass_role(&ns, "roles", &[role], group));
    api.apply(&pass_role(&ns, "agencies", &[other, target], group));
    let carol = "carol-token";

    let out = apply_eventually(
        api,
        carol,
        &association(&ns, "app", &format!("roleArn: '{role}'")),
    );
    assert!(out.contains("created"), "{out}");
    let err = apply_as(
        api,
        carol,
        &association(&ns, "web", &format!("roleArn: '{other}'")),
    )
    .unwrap_err();
    assert_names_missing_pass(&err, "carol", "roles", other, &ns);
    // Chaining to a role carol may not pass: refused, naming the target role.
    let chained = format!("roleArn: '{role}', targetRoleArn: '{target}'");
    let err = apply_as(api, carol, &association(&ns, "app", &chained)).unwrap_err();
    assert_names_missing_pass(&err, "carol", "roles", target, &ns);
    assert_eq!(spec_field(api, &format!("{ns}.app"), "targetRoleArn"), "");
    // Once she may pass it, the chain is hers to grant.
    api.apply(&pass_role(&ns, "roles", &[role, target], group));
    apply_eventually(api, carol, &association(&ns, "app", &chained));
    assert_eq!(spec_field(api, &format!("{ns}.app"), "targetRoleArn"), target);
}

/// The API server as `token` (a service account's): what the exchange runs with.
struct Acting<'a>(&'a ApiServer, String);

impl KubeApi for Acting<'_> {
    fn kube_config(&self) -> kube::Config {
        self.0.config_as(&self.1)
    }
}

/// The shipped exchange's ServiceAccount, ClusterRole and ClusterRoleBinding
/// (manifests/agent/exchange.yaml) with the ClusterRole's rules changed by `rules`; the
/// exchange's token for the API server.
async fn shipped_exchange_identity(api: &ApiServer, rules: impl Fn(&mut Value)) -> String {
    api.create_namespace("pod-identity-system", &[]).await;
    let text = repo_file("manifests/agent/exchange.yaml");
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let mut v: Value = serde::Deserialize::deserialize(d).unwrap();
        if v["kind"] == "ClusterRole" {
            rules(&mut v["rules"]);
        }
        if ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"].contains(&v["kind"].as_str().unwrap()) {
            docs.push(serde_yaml::to_string(&v).unwrap());
        }
    }
    assert_eq!(docs.len(), 3);
    api.apply(&docs.join("\n---\n"));
    api.token(
        "pod-identity-system",
        "pod-identity-exchange",
        None,
        API_AUDIENCE,
        3600,
    )
    .await
}

fn collection(exchange: &RunningExchange) -> String {
    format!(
        "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/pod-identity-associations",
        exchange.url
    )
}

async fn call(url: &str, token: &str, method: Method, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_api_refused_pass(got: &(u16, Value), user: &str, name: &str, namespace: &str) {
    assert_eq!(got.0, 403, "{}", got.1);
    assert_eq!(got.1["error_code"], "CCE.01403006", "{}", got.1);
    let msg = got.1["error_msg"].as_str().unwrap();
    let lacks = format!("{user} may not pass agencies.podidentity.io \"{name}\" in namespace {namespace}");
    assert!(msg.contains(&lacks), "{msg:?} lacks {lacks:?}");
    let grant =
        format!("resources [agencies], resourceNames [\"{name}\"], verbs [pass] (docs/permissions.md)");
    assert!(msg.contains(&grant), "{msg:?} lacks {grant:?}");
}

const SDK_SCRIPT: &str = r#"
import json, os
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcce.v3 import *
i = json.loads(os.environ["SDK_INPUT"])
def token(request, logger):
    request.header_params["X-Auth-Token"] = i["token"]
client = (CceClient.new_builder()
    .with_credentials(BasicCredentials("AKEXAMPLE", "SKEXAMPLE", i["project"]))
    .with_endpoints([i["endpoint"]])
    .with_http_handler(HttpHandler().add_request_handler(token))
    .build())
out = {}
for key, ns, agency in i["requests"]:
    body = PodIdentityAssociation(namespace=ns, service_account="sdk", agency_name=agency)
    try:
        r = client.create_pod_identity_association(CreatePodIdentityAssociationRequest(cluster_id=i["cluster"], body=body))
        out[key] = [type(r).__name__, r.agency_name]
    except exceptions.ClientRequestException as e:
        out[key] = [type(e).__name__, e.status_code, e.error_code, e.error_msg]
print(json.dumps(out))
"#;

/// The association API (the exchange as its service account, with the shipped ClusterRole):
/// a caller that may write associations creates one only for an agency it may pass in that
/// namespace, re-points one only to such an agency, and is told which permission it lacks in the
/// cloud's error body; the same through the cloud's own SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_association_api_holds_its_callers_to_the_pass_rule() {
    let Some(api) = own() else { return };
    let exchange_token = shipped_exchange_identity(api, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(&Acting(api, exchange_token))
        .iam("http://127.0.0.1:9", dir.path())
        .start()
        .await;
    let url = collection(&exchange);
    let (a, b) = (
        api.namespace("api-a", &[]).await,
        api.namespace("api-b", &[]).await,
    );
    // The caller: a deployer service account that may write associations and pass a-reader in a.
    let platform = api.namespace("platform", &[]).await;
    api.service_account(&platform, "deployer").await;
    let deployer_name = format!("system:serviceaccount:{platform}:deployer");
    api.apply(&writer_binding(
        &format!("{platform}-deployer"),
        "ServiceAccount",
        &format!("{platform}/deployer"),
    ));
    api.apply(&pass_role(
        &a,
        "agencies",
        &["a-reader"],
        &format!("{{kind: ServiceAccount, namespace: {platform}, name: deployer}}"),
    ));
    let deployer = api.token(&platform, "deployer", None, API_AUDIENCE, 3600).await;
    let request = |ns: &str, sa: &str, agency: &str| {
        Some(json!({"namespace": ns, "serviceAccount": sa, "agencyName": agency, "tags": []}))
    };

    // Retried while the RBAC just applied is not yet in force (503: the exchange may not review
    // yet; 403 CCE.01403004: the deployer may not write yet).
    let end = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let got = call(&url, &deployer, Method::POST, request(&a, "app", "a-reader")).await;
        if got.0 == 201 || Instant::now() > end {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(spec_field(api, &format!("{a}.app"), "agencyName"), "a-reader");
    let other = call(&url, &deployer, Method::POST, request(&a, "web", "other")).await;
    assert_api_refused_pass(&other, &deployer_name, "other", &a);
    let elsewhere = call(&url, &deployer, Method::POST, request(&b, "app", "a-reader")).await;
    assert_api_refused_pass(&elsewhere, &deployer_name, "a-reader", &b);
    for name in [format!("{a}.web"), format!("{b}.app")] {
        let (ok, err) = get_pia(api, &name);
        assert!(!ok && err.contains("NotFound"), "{name}: {err}");
    }

    // Update: re-pointing to an agency it may not pass is refused; the object keeps its agency.
    let uid = created.1["uid"].as_str().unwrap();
    let repoint = call(
        &format!("{url}/{uid}"),
        &deployer,
        Method::PUT,
        Some(json!({"agencyName": "other"})),
    )
    .await;
    assert_api_refused_pass(&repoint, &deployer_name, "other", &a);
    assert_eq!(spec_field(api, &format!("{a}.app"), "agencyName"), "a-reader");
    // One the admin granted with an agency the deployer may not pass: an update keeping it is
    // no new grant, and goes through (the deployer's own write, which the policy judges).
    api.apply(&association(&a, "legacy", "agencyName: legacy-agency"));
    let (_, list) = call(&url, &deployer, Method::GET, None).await;
    let legacy = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == a.as_str() && r["serviceAccount"] == "legacy")
        .unwrap_or_else(|| panic!("{list}"));
    let legacy_url = format!("{url}/{}", legacy["uid"].as_str().unwrap());
    let kept = call(
        &legacy_url,
        &deployer,
        Method::PUT,
        Some(json!({"agencyName": "legacy-agency"})),
    )
    .await;
    assert_eq!(kept.0, 200, "{}", kept.1);
    let repoint = call(
        &legacy_url,
        &deployer,
        Method::PUT,
        Some(json!({"agencyName": "a-reader2"})),
    )
    .await;
    assert_api_refused_pass(&repoint, &deployer_name, "a-reader2", &a);

    // The cloud's SDK sees the refusal as its typed exception with the code and the message.
    let input = json!({"endpoint": exchange.url, "project": PROJECT, "cluster": CLUSTER, "token": deployer,
        "requests": [["elsewhere", b.clone(), "a-reader"], ["passable", a.clone(), "a-reader"]]})
    .to_string();
    let out = tokio::task::spawn_blocking(move || python::run(SDK_SCRIPT, &[("SDK_INPUT", &input)]))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    let refused = &out["elsewhere"];
    assert_eq!(
        (&refused[0], &refused[1], &refused[2]),
        (
            &json!("ClientRequestException"),
            &json!(403),
            &json!("CCE.01403006")
        ),
        "{out}"
    );
    assert!(
        refused[3].as_str().unwrap().contains(&format!(
            "may not pass agencies.podidentity.io \"a-reader\" in namespace {b}"
        )),
        "{out}"
    );
    assert_eq!(
        out["passable"],
        json!(["CreatePodIdentityAssociationResponse", "a-reader"]),
        "{out}"
    );
}

/// The association API's writes are the caller's: on an API server with its audit log on, the
/// log names the caller (never the exchange) on each create the real `huaweicloudsdkcce` client
/// asked for, the granted one and the two the pass policy refused, while the exchange runs with
/// the shipped ClusterRole, which writes nothing. (An API server of its own: its audit flags.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_the_caller_of_the_association_api() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, log) = (dir.path().join("audit-policy.yaml"), dir.path().join("audit.log"));
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  resources:\n  - {group: iam.podidentity.io, resources: [podidentityassociations]}\n\
         - level: None\n",
    )
    .unwrap();
    let flags = [
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", log.display()),
    ];
    let Some(api) = ApiServer::start_own("audit", &flags) else {
        return;
    };
    api.install_crd();
    api.apply(&rendered_policy(&api));
    // The shipped ClusterRole, as it is: on the associations it reads, and it passes nothing.
    let exchange_token = shipped_exchange_identity(&api, |rules| {
        for rule in rules.as_array().unwrap() {
            if rule["resources"] == json!(["podidentityassociations"]) {
                assert_eq!(
                    rule["apiGroups"],
                    json!(["iam.podidentity.io", "podidentity.io"]),
                    "{rule}"
                );
                assert_eq!(rule["resources"], json!(["podidentityassociations"]), "{rule}");
                assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
            }
        }
    })
    .await;
    let exchange = ExchangeUnderTest::new(&Acting(&api, exchange_token))
        .iam("http://127.0.0.1:9", dir.path())
        .start()
        .await;
    let (a, b) = (
        api.namespace("audit-a", &[]).await,
        api.namespace("audit-b", &[]).await,
    );
    let platform = api.namespace("platform", &[]).await;
    api.service_account(&platform, "deployer").await;
    let caller = format!("system:serviceaccount:{platform}:deployer");
    api.apply(&writer_binding(
        "audit-deployer",
        "ServiceAccount",
        &format!("{platform}/deployer"),
    ));
    api.apply(&pass_role(
        &a,
        "agencies",
        &["a-reader"],
        &format!("{{kind: ServiceAccount, namespace: {platform}, name: deployer}}"),
    ));
    let deployer = api.token(&platform, "deployer", None, API_AUDIENCE, 3600).await;
    // Until the policy and the RBAC just applied are in force, a dry run through kubectl says so.
    let probe = association(&b, "probe", "agencyName: a-reader");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = api.kubectl_as(
            &deployer,
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe),
        );
        if !ok && err.contains("pod-identity-pass") {
            break;
        }
        assert!(Instant::now() < end, "the policy is not in force: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let input = json!({"endpoint": exchange.url, "project": PROJECT, "cluster": CLUSTER, "token": deployer,
        "requests": [["other", a.clone(), "other"], ["elsewhere", b.clone(), "a-reader"], ["passable", a.clone(), "a-reader"]]})
    .to_string();
    let out = tokio::task::spawn_blocking(move || python::run(SDK_SCRIPT, &[("SDK_INPUT", &input)]))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        out["passable"],
        json!(["CreatePodIdentityAssociationResponse", "a-reader"]),
        "{out}"
    );
    for (key, ns, agency) in [("other", &a, "other"), ("elsewhere", &b, "a-reader")] {
        let r = &out[key];
        assert_eq!(
            (&r[1], &r[2]),
            (&json!(403), &json!("CCE.01403006")),
            "{key}: {out}"
        );
        let lacks = format!("{caller} may not pass agencies.podidentity.io \"{agency}\" in namespace {ns}");
        assert!(r[3].as_str().unwrap().contains(&lacks), "{key}: {out}");
    }

    // The audit log: each create, by name and answer, made by the caller.
    let creates = |text: &str| -> Vec<(String, String, u64)> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "podidentityassociations")
            .map(|e| {
                (
                    format!(
                        "{}.{}",
                        e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                        e["objectRef"]["name"].as_str().unwrap_or_default()
                    ),
                    e["user"]["username"].as_str().unwrap_or_default().to_owned(),
                    e["responseStatus"]["code"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let wanted = [
        (format!("{a}.sdk"), 403),
        (format!("{b}.sdk"), 403),
        (format!("{a}.sdk"), 201),
    ];
    let end = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let logged = creates(&std::fs::read_to_string(&log).unwrap_or_default());
        let found = wanted
            .iter()
            .all(|(name, code)| logged.iter().any(|(n, _, c)| n == name && c == code));
        if found || Instant::now() > end {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (name, code) in &wanted {
        assert!(
            logged
                .iter()
                .any(|(n, u, c)| n == name && u == &caller && c == code),
            "no create of {name} by {caller} answered {code} in the audit log: {logged:?}"
        );
    }
    let exchange_user = "system:serviceaccount:pod-identity-system:pod-identity-exchange";
    assert!(logged.iter().all(|(_, u, _)| u != exchange_user), "{logged:?}");
    let (ok, err) = get_pia(&api, &format!("{b}.sdk"));
    assert!(!ok && err.contains("NotFound"), "{err}");
}

/// `migrate-associations --delete-old` as `token`: exit status and output.
fn migrate_as(api: &ApiServer, token: &str) -> (i32, String) {
    api.run_as(token, &["migrate-associations", "--delete-old"])
}

/// The chart's upgrade hook (migration.enabled) runs `migrate-associations --delete-old` as a
/// service account whose rendered RBAC suffices under the pass policy; a writer who passes
/// nothing has its conversion refused, naming the permission, and the old object kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_upgrade_hook_may_migrate_under_the_pass_policy() {
    let Some(api) = own() else { return };
    let ns = api.namespace("hook", &[]).await;
    api.apply(&legacy_association(&ns, "app", "agencyName: hook-agency"));
    let old = format!("{ns}.app");

    let (code, out) = migrate_as(api, "bob-token");
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{old}:")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!("the API server refused {ns}/app")),
        "{line}"
    );
    assert_names_missing_pass(line, "bob", "agencies", "hook-agency", &ns);
    assert!(get_old(api, &old).is_ok(), "the old object is kept");

    let docs = crate::deploy::helm::render(&json!({"migration": {"enabled": true}})).docs;
    let hook: Vec<&Value> = docs
        .iter()
        .filter(|d| d["metadata"]["name"] == "pod-identity-migrate")
        .collect();
    let job = hook.iter().find(|d| d["kind"] == "Job").expect("the hook Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pod-identity-migrate");
    assert_eq!(
        pod["containers"][0]["args"],
        json!(["migrate-associations", "--delete-old"])
    );
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "post-upgrade");
    let system = job["metadata"]["namespace"].as_str().unwrap();
    api.create_namespace(system, &[]).await;
    for d in hook.iter().filter(|d| d["kind"] != "Job") {
        api.apply(&serde_json::to_string(d).unwrap());
    }
    let token = api
        .token(system, "pod-identity-migrate", None, API_AUDIENCE, 3600)
        .await;
    // RBAC takes effect shortly after the binding: until then the run is refused and writes nothing.
    let started = Instant::now();
    let out = loop {
        let (code, out) = migrate_as(api, &token);
        if out.contains(&format!("{old}: created {ns}/app")) {
            break out;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{code}: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains(&format!("{old}: deleted the old object")), "{out}");
    assert_eq!(spec_field(api, &old, "agencyName"), "hook-agency");
    let err = get_old(api, &old).unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
}

/// The old cluster-scoped object `name`, as the admin reads it.
fn get_old(api: &ApiServer, name: &str) -> Result<String, String> {
    let (ok, out, err) = api.kubectl(&["get", "podidentityassociations.podidentity.io", name], None);
    if ok { Ok(out) } else { Err(err) }
}
