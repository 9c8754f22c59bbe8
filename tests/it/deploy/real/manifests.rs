//! Every rendering of the deployment on a real API server: each values combination of the
//! chart's matrix and each kustomize overlay is admitted (its CRD, namespaces and service
//! accounts for real, the rest with a server-side dry run, no warning), and each workload's
//! pod is one its namespace's Pod Security `enforce` level admits. The chart's RBAC, applied
//! for real, lets each program's service account do exactly what the program calls, and the
//! agent and the exchange of the EKS rendering serve a pod with those accounts' real tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::common::BIN;
use crate::common::NODE;
use crate::common::apiserver::ApiServer;
use crate::common::deploy::pod_templates;

/// What is created for real before the rest is dry-run, in this order: the API (CRDs and
/// admission policies), then the namespaces (with their Pod Security labels) and the service
/// accounts the pods run as.
const REAL_KINDS: [&str; 5] = [
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Namespace",
    "ServiceAccount",
];

/// The API server's audience (its service-account issuer): tokens for the programs' own
/// calls to it.
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// cert-manager is not installed here: its two kinds the renderings use, served by CRDs that
/// check only their kind, scope and the fields cert-manager requires (the objects' names,
/// namespaces and metadata are still checked by the API server).
const CERT_MANAGER_KINDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Issuer, listKind: IssuerList, plural: issuers, singular: issuer}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates, singular: certificate}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
            required: [secretName, issuerRef]
            properties:
              secretName: {type: string}
              dnsNames: {type: array, items: {type: string}}
              issuerRef:
                type: object
                required: [name]
                properties:
                  name: {type: string}
                  kind: {type: string}
                  group: {type: string}
"#;

/// Where the agent's pod departs from `restricted`, as the real Pod Security admission names
/// it (the same departures `manifests::AGENT_BEYOND_RESTRICTED` gives reasons for): the host
/// network, NET_ADMIN for the set-up step, uid 0 for it to take effect, probes of the node's
/// loopback. Anything more (say, privilege escalation allowed) is a finding.
const AGENT_BEYOND_RESTRICTED: [&str; 5] = [
    r#"host namespaces (hostNetwork=true)"#,
    r#"probe or lifecycle host (container "agent" uses probe or lifecycle host "127.0.0.1")"#,
    r#"unrestricted capabilities (container "link-local" must not include "NET_ADMIN" in securityContext.capabilities.add)"#,
    r#"runAsNonRoot != true (containers "link-local", "agent" must not set securityContext.runAsNonRoot=false)"#,
    r#"runAsUser=0 (containers "link-local", "agent" must not set runAsUser=0)"#,
];

/// The ranges `manifests/settings/settings.env` ships unset, and a value for each.
const PLACEHOLDERS: [(&str, &str); 2] = [
    (
        "set-API_SERVER_CIDR-in-manifests/settings/settings.env",
        "192.0.2.10/32",
    ),
    (
        "set-NODE_CIDR-in-manifests/settings/settings.env",
        "198.51.100.0/24",
    ),
];

/// A scratch namespace enforcing `restricted`, where the agent's pod is judged too.
const RESTRICTED_SCRATCH: &str = "restricted-scratch";

fn identity(d: &Value) -> String {
    match d["metadata"]["namespace"].as_str() {
        Some(ns) => format!(
            "{} {ns}/{}",
            d["kind"].as_str().unwrap_or("?"),
            d["metadata"]["name"]
        ),
        None => format!("{} {}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"]),
    }
    .replace('"', "")
}

fn list(docs: &[&Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("Warning:")).collect()
}

/// How `kubectl -o name` names `d`: `kind.group/name` (`kind/name` in the core group).
fn kubectl_name(d: &Value) -> String {
    let kind = d["kind"].as_str().unwrap_or_default().to_lowercase();
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    match d["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// `kubectl apply ARGS` of `docs` together; on an error or a warning, again alone each one it
/// did not take without a word (all of them after a warning, which names no object), to say
/// which it was (idempotent: for real they are applied as the first time, or dry-run).
/// Returns the findings, each naming `rendering` and the object.
fn apply(api: &ApiServer, rendering: &str, args: &[&str], docs: &[&Value]) -> Vec<String> {
    if docs.is_empty() {
        return Vec::new();
    }
    let mut all = vec!["apply", "-o", "name"];
    all.extend(args);
    all.extend(["-f", "-"]);
    let (ok, out, err) = api.kubectl(&all, Some(&list(docs)));
    if ok && warnings(&err).is_empty() {
        return Vec::new();
    }
    let taken: BTreeSet<&str> = if warnings(&err).is_empty() {
        out.lines().map(str::trim).collect()
    } else {
        BTreeSet::new()
    };
    let mut findings = Vec::new();
    for d in docs.iter().filter(|d| !taken.contains(kubectl_name(d).as_str())) {
        let (ok, _, err) = api.kubectl(&all, Some(&list(&[d])));
        if !ok {
            findings.push(format!("{rendering}: {}: refused: {}", identity(d), err.trim()));
        }
        for w in warnings(&err) {
            findings.push(format!("{rendering}: {}: {w}", identity(d)));
        }
    }
    if findings.is_empty() {
        findings.push(format!("{rendering}: kubectl {all:?} failed:\n{out}{err}"));
    }
    findings
}

/// The items of a Pod Security refusal (`violates PodSecurity "LEVEL:latest": a (..), b`).
fn pod_security_items(message: &str) -> Vec<String> {
    let Some((_, items)) = message.split_once(":latest\": ") else {
        return vec![message.to_owned()];
    };
    let (mut depth, mut item, mut found) = (0, String::new(), Vec::new());
    for c in items.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                found.push(item.trim().to_owned());
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    found.push(item.trim().to_owned());
    found
}

/// The pod `template` of `workload` would be, named after it, on the tests' node.
fn pod_of(workload: &str, namespace: &str, template: &Value) -> Pod {
    let name = workload.replace('/', "-").to_lowercase();
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!(NODE);
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace,
        "labels": template["metadata"]["labels"]}, "spec": spec}))
    .unwrap_or_else(|e| panic!("{workload}: not a pod template: {e}"))
}

/// The dry-run creation of `pod` in `namespace`: `Ok` or the API server's message.
async fn dry_run_pod(api: &ApiServer, namespace: &str, pod: &Pod) -> Result<(), String> {
    let mut pod = pod.clone();
    pod.metadata.namespace = Some(namespace.to_owned());
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(api.client(), namespace)
        .create(&pp, &pod)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            e => e.to_string(),
        })
}

/// Applies each of `renderings` in turn on `api` (an own server: they share the namespaces'
/// and cluster-scoped objects' names): its CRDs, namespaces and service accounts for real, the
/// rest dry-run, then each workload's pod dry-run in its namespace (and the agent's in a
/// namespace enforcing restricted). Returns the findings.
async fn admit(api: &ApiServer, renderings: &[Rendering]) -> Vec<String> {
    api.apply(CERT_MANAGER_KINDS);
    api.create_namespace(
        RESTRICTED_SCRATCH,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let mut findings = Vec::new();
    // Each namespace's enforce level as last applied.
    let mut levels: BTreeMap<String, String> = BTreeMap::new();
    for Rendering {
        name: rendering,
        docs,
        refusals,
    } in renderings
    {
        let mut real: Vec<&Value> = docs
            .iter()
            .filter(|d| REAL_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
            .collect();
        real.sort_by_key(|d| REAL_KINDS.iter().position(|k| d["kind"] == *k));
        let real_args = ["--server-side", "--force-conflicts", "--field-manager=rendering"];
        let found = apply(api, rendering, &real_args, &real);
        let failed = !found.is_empty();
        findings.extend(found);
        if failed {
            continue;
        }
        let crds: Vec<String> = real
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .map(|d| format!("crd/{}", d["metadata"]["name"].as_str().unwrap()))
            .collect();
        if !crds.is_empty() {
            let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            args.extend(crds.iter().map(String::as_str));
            let (ok, out, err) = api.kubectl(&args, None);
            if !ok {
                findings.push(format!("{rendering}: CRDs not established: {out}{err}"));
                continue;
            }
        }
        for ns in real.iter().filter(|d| d["kind"] == "Namespace") {
            let level = ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                .as_str()
                .unwrap_or("privileged");
            levels.insert(
                ns["metadata"]["name"].as_str().unwrap().to_owned(),
                level.to_owned(),
            );
        }

        let rest: Vec<&Value> = docs
            .iter()
            .filter(|d| !REAL_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
            .collect();
        let mut found = apply(api, rendering, &["--dry-run=server"], &rest);
        for (object, message) in refusals {
            let prefix = format!("{rendering}: {object}: refused: ");
            match found
                .iter()
                .position(|f| f.starts_with(&prefix) && f.contains(message))
            {
                Some(i) => drop(found.remove(i)),
                None => found.push(format!(
                    "{rendering}: {object}: not refused with {message:?}, as documented"
                )),
            }
        }
        findings.extend(found);

        for (workload, ns, template) in pod_templates(docs) {
            let pod = pod_of(&workload, &ns, template);
            if let Err(e) = dry_run_pod(api, &ns, &pod).await {
                findings.push(format!(
                    "{rendering}: {workload} in {ns}: its pod is refused: {e}"
                ));
            }
            match levels.get(&ns).map(String::as_str) {
                Some("restricted") => {}
                _ if workload == "DaemonSet/pod-identity-agent" => {
                    let sa = template["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                    api.service_account(RESTRICTED_SCRATCH, sa).await;
                    let found: BTreeSet<String> = match dry_run_pod(api, RESTRICTED_SCRATCH, &pod).await {
                        Ok(()) => BTreeSet::new(),
                        Err(e) => pod_security_items(&e).into_iter().collect(),
                    };
                    let expected: BTreeSet<String> =
                        AGENT_BEYOND_RESTRICTED.iter().map(|s| s.to_string()).collect();
                    if found != expected {
                        findings.push(format!(
                            "{rendering}: {workload} in {ns}: in a namespace enforcing restricted, refused also for {:?} and not for {:?}",
                            found.difference(&expected).collect::<Vec<_>>(),
                            expected.difference(&found).collect::<Vec<_>>()
                        ));
                    }
                }
                level => findings.push(format!(
                    "{rendering}: {workload} in {ns}: the namespace enforces {level:?}; only the agent may run below restricted"
                )),
            }
        }
    }
    findings
}

/// A rendering to apply: what it is, its objects, and the refusals it is meant to get (the
/// object, a part of the API server's message).
struct Rendering {
    name: String,
    docs: Vec<Value>,
    refusals: Vec<(String, String)>,
}

/// The refusals the chart documents for `values`: until the ranges are set, the API server
/// refuses the NetworkPolicies with the placeholder as the invalid value (values.yaml, NOTES).
fn placeholder_refusals(values: &Value) -> Vec<(String, String)> {
    let policies = &values["networkPolicies"];
    if policies["enabled"] == false {
        return Vec::new();
    }
    [("webhook", "apiServerCIDR"), ("exchange", "nodeCIDR")]
        .into_iter()
        .filter(|(component, range)| {
            values[component]["enabled"] != false && policies[range].as_str().unwrap_or_default().is_empty()
        })
        .map(|(component, range)| {
            (
                format!("NetworkPolicy {SYSTEM}/pod-identity-{component}"),
                format!("Invalid value: \"set-networkPolicies.{range}\": must be a valid CIDR value"),
            )
        })
        .collect()
}

/// The chart's rendering for `values`, its CRDs first.
fn chart(values: &Value) -> Vec<Value> {
    let r = crate::deploy::helm::render(values);
    let mut docs: Vec<Value> = r
        .crds
        .iter()
        .flat_map(|text| {
            serde_yaml::Deserializer::from_str(text)
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .collect::<Vec<Value>>()
        })
        .filter(|d| !d.is_null())
        .collect();
    docs.extend(r.docs);
    docs
}

fn assert_admitted(findings: &[String], what: &str, started: Instant) {
    assert!(
        findings.is_empty(),
        "the API server refused or warned about {what}:\n{}",
        findings.join("\n")
    );
    eprintln!("{what}: admitted in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chart_rendering_is_admitted_by_the_api_server() {
    let Some(api) = ApiServer::start_own("chart-renderings", &[]) else {
        return;
    };
    let started = Instant::now();
    let renderings: Vec<Rendering> = std::thread::scope(|s| {
        let handles: Vec<_> = crate::deploy::helm::matrix()
            .into_iter()
            .map(|values| {
                s.spawn(move || Rendering {
                    name: format!("chart with values {values}"),
                    docs: chart(&values),
                    refusals: placeholder_refusals(&values),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("{} chart renderings in {:?}", renderings.len(), started.elapsed());
    let findings = admit(&api, &renderings).await;
    assert_admitted(&findings, "the chart's renderings", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_is_admitted_by_the_api_server() {
    let Some(api) = ApiServer::start_own("overlays", &[]) else {
        return;
    };
    let started = Instant::now();
    let mut renderings = Vec::new();
    for (overlay, docs) in crate::deploy::manifests::every_overlay() {
        // As shipped: the API server refuses the NetworkPolicies with the placeholder of the
        // range settings.env leaves to set as the invalid value (settings.env says so) ...
        let refusals = docs
            .iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .flat_map(|d| {
                let text = d.to_string();
                PLACEHOLDERS
                    .iter()
                    .filter(|(p, _)| text.contains(p))
                    .map(|(p, _)| {
                        (
                            identity(d),
                            format!("Invalid value: \"{p}\": must be a valid CIDR value"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        // ... and admits them once they are set.
        let mut text = serde_json::to_string(&docs).unwrap();
        for (placeholder, range) in PLACEHOLDERS {
            text = text.replace(placeholder, range);
        }
        renderings.push(Rendering {
            name: format!("overlay {overlay} (settings.env as shipped)"),
            docs,
            refusals,
        });
        renderings.push(Rendering {
            name: format!("overlay {overlay} (the ranges set in settings.env)"),
            docs: serde_json::from_str(&text).unwrap(),
            refusals: Vec::new(),
        });
    }
    let findings = admit(&api, &renderings).await;
    assert_admitted(&findings, "the overlays", started);
}

/// One API call a program makes: verb, API group, resource, namespace (`None`: all, or
/// cluster-scoped; [`ANY`]: any one, asked in [`OTHER`]), name (`None`: any or all).
type Call = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const SYSTEM: &str = "pod-identity-system";
const AGENT: &str = "pod-identity-agent";
/// A call in whichever namespace (an Event in its pod's).
const ANY: &str = "*";
/// A namespace of nobody's.
const OTHER: &str = "team-a";

/// A program, its service account's namespace and name, the calls it makes, calls it must not.
type Program = (&'static str, &'static str, &'static str, Vec<Call>, Vec<Call>);

/// Each program's service account and the calls it makes (from `src/`), and calls it must not
/// be able to make.
fn programs() -> Vec<Program> {
    let pia = "podidentityassociations";
    let read_associations: Vec<Call> = ["get", "list", "watch"]
        .into_iter()
        .flat_map(|v| {
            [
                (v, "iam.podidentity.io", pia, None, None),
                (v, "podidentity.io", pia, None, None),
            ]
        })
        .collect();
    let mut webhook = read_associations.clone();
    // The missed-injection report (src/webhook/report): the pods' watch, their namespaces,
    // the Events, the webhook's own configuration, the Lease (kube-lease-manager: create, get,
    // patch).
    webhook.extend([
        ("list", "", "pods", None, None),
        ("watch", "", "pods", None, None),
        ("get", "", "namespaces", None, None),
        ("create", "events.k8s.io", "events", Some(ANY), None),
        (
            "get",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            Some("pod-identity-webhook"),
        ),
        ("create", "coordination.k8s.io", "leases", Some(SYSTEM), None),
        (
            "get",
            "coordination.k8s.io",
            "leases",
            Some(SYSTEM),
            Some("pod-identity-webhook-report"),
        ),
        (
            "patch",
            "coordination.k8s.io",
            "leases",
            Some(SYSTEM),
            Some("pod-identity-webhook-report"),
        ),
    ]);
    // The agent (src/agent/pods.rs, the association watch): its node's pods, the associations.
    let mut agent = read_associations.clone();
    agent.extend([
        ("list", "", "pods", None, None),
        ("watch", "", "pods", None, None),
    ]);
    // The exchange (src/exchange/review.rs, associations.rs): TokenReviews, the associations'
    // watch and the association API's reads (which object an id names; its writes are made with
    // the caller's token) ...
    let mut exchange: Vec<Call> = vec![("create", "authentication.k8s.io", "tokenreviews", None, None)];
    exchange.extend(read_associations.iter().cloned());
    // ... and the agents' pods (src/exchange/assume.rs, AgentPods), in their namespace only.
    exchange.push(("get", "", "pods", Some(AGENT), None));
    let never: Vec<Call> = vec![
        ("get", "", "secrets", Some(SYSTEM), None),
        ("list", "", "secrets", None, None),
        ("create", "", "pods", Some(OTHER), None),
        ("delete", "", "pods", Some(OTHER), None),
        ("create", "", "serviceaccounts/token", Some(OTHER), Some("app")),
        (
            "update",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            None,
        ),
        ("*", "*", "*", None, None),
    ];
    let with = |extra: Vec<Call>| {
        let mut n = never.clone();
        n.extend(extra);
        n
    };
    vec![
        (
            "serve (the webhook)",
            SYSTEM,
            "pod-identity-webhook",
            webhook,
            with(vec![
                ("create", "podidentity.io", pia, None, None),
                ("create", "iam.podidentity.io", pia, Some(OTHER), None),
                (
                    "get",
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                    None,
                    Some("other"),
                ),
                (
                    "get",
                    "coordination.k8s.io",
                    "leases",
                    Some(SYSTEM),
                    Some("other"),
                ),
                ("create", "coordination.k8s.io", "leases", Some(OTHER), None),
                ("create", "authentication.k8s.io", "tokenreviews", None, None),
            ]),
        ),
        (
            "agent",
            AGENT,
            "pod-identity-agent",
            agent,
            with(vec![
                ("create", "podidentity.io", pia, None, None),
                ("create", "iam.podidentity.io", pia, Some(OTHER), None),
                ("create", "authentication.k8s.io", "tokenreviews", None, None),
                ("get", "", "nodes", None, None),
            ]),
        ),
        (
            "exchange",
            SYSTEM,
            "pod-identity-exchange",
            exchange,
            with(vec![
                ("list", "", "pods", None, None),
                ("get", "", "pods", Some(OTHER), None),
                // It lends no write of its own: the association API writes as its callers.
                ("create", "podidentity.io", pia, None, None),
                ("create", "iam.podidentity.io", pia, Some(OTHER), None),
                ("update", "podidentity.io", pia, None, None),
                ("delete", "podidentity.io", pia, None, None),
                ("patch", "podidentity.io", pia, None, None),
                ("deletecollection", "podidentity.io", pia, None, None),
                ("pass", "podidentity.io", "agencies", Some(OTHER), Some("any")),
                ("pass", "podidentity.io", "roles", Some(OTHER), Some("any")),
                (
                    "create",
                    "authorization.k8s.io",
                    "subjectaccessreviews",
                    None,
                    None,
                ),
                ("impersonate", "", "users", None, None),
            ]),
        ),
    ]
}

/// Whether the real authorizer lets `user` (a service account) make `call`.
async fn allowed(api: &ApiServer, user: &str, namespace: &str, call: &Call) -> bool {
    let (verb, group, resource, ns, name) = *call;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: ns.map(|n| if n == ANY { OTHER } else { n }.to_owned()),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(api.client())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// The rules the real authorizer grants the bearer of `token` in `namespace` (cluster roles'
/// and that namespace's roles'), as (verb, group, resource, name) tuples; the self-reviews
/// every authenticated user may ask aside.
async fn granted(
    api: &ApiServer,
    token: &str,
    namespace: &str,
) -> BTreeSet<(String, String, String, String)> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.into()),
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectRulesReview>::all(api.client_as(token))
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let mut rules = BTreeSet::new();
    for r in answer.status.unwrap().resource_rules {
        let names = r.resource_names.unwrap_or_default();
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for verb in &r.verbs {
            for group in r.api_groups.iter().flatten() {
                for resource in r.resources.iter().flatten() {
                    if group == "authorization.k8s.io" && resource.starts_with("selfsubject")
                        || group == "authentication.k8s.io" && resource == "selfsubjectreviews"
                    {
                        continue;
                    }
                    for name in &names {
                        rules.insert((verb.clone(), group.clone(), resource.clone(), name.clone()));
                    }
                }
            }
        }
    }
    rules
}

/// The chart's RBAC (default values) applied for real: the authorizer lets each program's
/// service account make every call the program makes, none of the others, and grants it no
/// rule beyond them in its own namespace or another.
#[tokio::test]
async fn the_charts_rbac_lets_each_program_make_exactly_its_calls() {
    let Some(api) = ApiServer::start_own("chart-rbac", &[]) else {
        return;
    };
    let docs = chart(&json!({}));
    let kinds = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| kinds.contains(&d["kind"].as_str().unwrap_or_default()))
        .collect();
    rbac.sort_by_key(|d| kinds.iter().position(|k| d["kind"] == *k));
    let findings = apply(&api, "chart with values {}", &["--server-side"], &rbac);
    assert!(findings.is_empty(), "{}", findings.join("\n"));

    let mut problems = Vec::new();
    for (program, ns, sa, needs, never) in programs() {
        let user = format!("system:serviceaccount:{ns}:{sa}");
        for call in &needs {
            if !allowed(&api, &user, ns, call).await {
                problems.push(format!("{program} ({user}) may not {call:?}, which it calls"));
            }
        }
        for call in &never {
            if allowed(&api, &user, ns, call).await {
                problems.push(format!("{program} ({user}) may {call:?}, which it never needs"));
            }
        }
        // Every rule granted, in its namespace and in another, is one of its calls.
        let token = api.token(ns, sa, None, API_AUDIENCE, 600).await;
        for namespace in [ns, OTHER] {
            for (verb, group, resource, name) in granted(&api, &token, namespace).await {
                let needed = needs.iter().any(|(v, g, r, in_ns, n)| {
                    (*v, *g, *r, n.unwrap_or_default()) == (&verb, &group, &resource, &name)
                        && in_ns.is_none_or(|x| x == ANY || x == namespace)
                });
                if !needed {
                    problems.push(format!(
                        "{program} ({user}) is granted {verb} {group}/{resource} {name:?} in {namespace}, which it never calls"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "RBAC of the chart:\n{}", problems.join("\n"));
}

/// The agent and the exchange the chart renders for backend eks, with the rendering's RBAC
/// applied for real and each authenticating to the API server with its own service account's
/// real token (the agent's bound to its DaemonSet pod), started with exactly the rendered
/// arguments and environment (only addresses and the pods' mount paths moved to this
/// machine): a pod's real token goes through the agent, over TLS to the exchange (which
/// reviews both tokens with the API server and reads the association), and STS is signed
/// with the key of the profile in the files Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_the_exchange_of_the_eks_rendering_serve_a_pod_with_their_service_accounts() {
    use crate::common::agents::credentials_request;
    use crate::common::aws::{recording_sts, spawn_isolated};
    use crate::common::deploy::args_of;
    use crate::common::free_ports;
    use crate::deploy::helm::{CIDRS, container, env_of, flag_of, under};
    let Some(api) = ApiServer::start_own("eks-rendering", &[]) else {
        return;
    };
    crate::common::crypto();
    let (sts_url, calls) = recording_sts().await;
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    let values = json!({"provider": "eks", "backend": "eks", "awsRegion": "us-west-2",
        "eks": {"clusterName": "edge-1", "stsEndpoint": sts_url}, "networkPolicies": cidrs,
        "exchange": {"aws": {"filesSecret": "pod-identity-aws", "profile": "exchange"}}});
    let docs = chart(&values);
    let kinds = [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut real: Vec<&Value> = docs
        .iter()
        .filter(|d| kinds.contains(&d["kind"].as_str().unwrap_or_default()))
        .collect();
    real.sort_by_key(|d| kinds.iter().position(|k| d["kind"] == *k));
    let findings = apply(&api, "the eks rendering", &["--server-side"], &real);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
    let (ok, out, err) = api.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/podidentityassociations.iam.podidentity.io",
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    api.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: pi-demo}\n---\n\
         apiVersion: iam.podidentity.io/v1beta1\nkind: PodIdentityAssociation\nmetadata:\n  name: app\n  namespace: pi-demo\nspec:\n  serviceAccount: app\n  roleArn: arn:aws:iam::111122223333:role/app-role\n",
    );
    let (_, exchange) = container(&docs, "Deployment", "pod-identity-exchange");
    let (agent_pod, agent) = container(&docs, "DaemonSet", "pod-identity-agent");
    let agent_sa = agent_pod["serviceAccountName"].as_str().unwrap();
    let exchange_sa = find_sa(&docs, "Deployment", "pod-identity-exchange");

    // The programs' own tokens: the exchange's, and the agent's bound to its pod on the node.
    let agent_ns = crate::common::agents::AGENT_NAMESPACE;
    // A running pod of the DaemonSet: the only caller the exchange accepts.
    assert_eq!(agent_sa, crate::common::agents::AGENT_SERVICE_ACCOUNT);
    let agent_of_node = api.agent_pod(NODE).await;
    let agent_kube = api
        .token(agent_ns, agent_sa, Some(&agent_of_node), API_AUDIENCE, 3600)
        .await;
    let exchange_kube = api.token(SYSTEM, &exchange_sa, None, API_AUDIENCE, 3600).await;

    // What the volumes would hold: the profile's files, the exchange's pair and its CA, the
    // agent's token for the exchange.
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
    let kubeconfig = api.kubeconfig(root, &exchange_kube);
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let exchange = spawn_isolated(root, "exchange", &arg_refs, &env_refs);
    let ca = std::fs::read(cert_dir.join("ca.crt")).unwrap();
    crate::common::until_ready(
        &crate::common::client(&[&ca], crate::common::Http::H1),
        &format!("https://localhost:{xport}/readyz"),
        Instant::now() + Duration::from_secs(30),
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
    let kubeconfig = api.kubeconfig(root, &agent_kube);
    let env = [
        ("POD_IDENTITY_NODE_NAME", NODE),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];
    let agent = spawn_isolated(root, "agent", &arg_refs, &env);
    crate::common::until_ready(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{admin}/readyz"),
        Instant::now() + Duration::from_secs(30),
    )
    .await;

    let token = api
        .pod_token("pi-demo", "app", "app-1", NODE, "pods.eks.amazonaws.com")
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
    {
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
    // The agent follows its node's pods with its own account (list and watch granted), and
    // neither program was refused anything.
    let until = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("following this node's pods") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (agent_log, exchange_log) = (agent.log(), exchange.log());
    assert!(agent_log.contains("following this node's pods"), "{agent_log}");
    for (program, log) in [("agent", &agent_log), ("exchange", &exchange_log)] {
        assert!(
            !log.contains("forbidden") && !log.contains("may not"),
            "{program} was refused:\n{log}"
        );
    }
}

/// The service account the pods of workload `kind/name` run as.
fn find_sa(docs: &[Value], kind: &str, name: &str) -> String {
    let w = crate::common::deploy::find(docs, kind, name);
    w["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned()
}
