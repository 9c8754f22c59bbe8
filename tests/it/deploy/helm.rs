//! The Helm chart `charts/pod-identity`, rendered and linted by the real Helm engine (Helm v4
//! as a library: `helm-python-sdk` from PyPI, no helm binary) for the default values and a
//! matrix of settings, and held to the checks the kustomize overlays pass (`common::deploy`).
//! With the overlays' settings it renders the overlays' objects, object by object, in CCE and
//! in EKS mode: the overlays and the chart cannot drift apart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use pod_identity_webhook::certs;
use pod_identity_webhook::testing::crd;
use serde_json::{Value, json};

use crate::common::deploy::{
    args_of, assert_flags, check_webhook_contract, containers_of, find, pod_security_findings, pod_templates,
    rbac_findings, verify_server_cert, volume_at,
};
use crate::deploy::manifests::{copy_dir, try_kustomize};

use crate::common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo().join("charts/pod-identity")
}

/// Renders (`helm template`) and lints (`helm lint --strict`) a chart with the given values;
/// answers JSON on stdout: the manifests by template, the CRDs, the lint report, or the error.
const SCRIPT: &str = r#"
import json, sys
from helm_python import chart
req = json.load(sys.stdin)
out = {}
try:
    c = chart.Chart.load(req["chart"])
    out["manifests"] = c.render(req["values"], name="pod-identity",
                                namespace="pod-identity-system", is_install=True)
    out["crds"] = [f["data"] for f in c.crds]
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
out["lint"] = chart.lint(req["chart"], req["values"], strict=True)
print(json.dumps(out))
"#;

pub(crate) struct Rendered {
    /// Every object of the templates, in template order.
    pub(crate) docs: Vec<Value>,
    notes: String,
    pub(crate) crds: Vec<String>,
}

fn engine(chart: &Path, values: &Value) -> Value {
    let mut child = Command::new(crate::common::python::helm_python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = json!({"chart": chart, "values": values});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helm engine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn try_render_chart(chart: &Path, values: &Value) -> Result<Rendered, String> {
    let out = engine(chart, values);
    if let Some(e) = out["error"].as_str() {
        return Err(e.to_owned());
    }
    let manifests: BTreeMap<String, String> = serde_json::from_value(out["manifests"].clone()).unwrap();
    let mut docs = Vec::new();
    let mut notes = String::new();
    // Helm applies in kind order; here the order of the files is enough.
    for (name, text) in manifests {
        if name.ends_with("NOTES.txt") {
            notes = text;
            continue;
        }
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{name} is not YAML: {e}\n{text}"));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    let crds = serde_json::from_value(out["crds"].clone()).unwrap();
    Ok(Rendered { docs, notes, crds })
}

pub(crate) fn render(values: &Value) -> Rendered {
    try_render_chart(&chart_dir(), values).unwrap_or_else(|e| panic!("{values}: {e}"))
}

/// `helm lint --strict`'s findings above info level.
fn lint_findings(values: &Value) -> Vec<String> {
    let out = engine(&chart_dir(), values);
    let lint = &out["lint"];
    assert_eq!(lint["total_charts_linted"], 1, "{lint}");
    lint["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap() >= 2)
        .map(|m| format!("{}: {}", m["path"], m["error"]))
        .chain(lint["errors"].as_array().unwrap().iter().map(|e| e.to_string()))
        .collect()
}

pub(crate) const CIDRS: &str = r#"{"apiServerCIDR": "192.0.2.10/32", "nodeCIDR": "198.51.100.0/24"}"#;

/// The settings that matter, one combination each: both profiles, the three certificate
/// modes, each component off, NetworkPolicies off.
pub(crate) fn matrix() -> Vec<Value> {
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    let secret_mode = json!({"certificates": {"mode": "secret", "existingSecret": {"name": "my-webhook-tls", "caBundle": "TVlDQQ=="}},
        "exchange": {"existingSecret": "my-exchange-tls", "caCert": "-----BEGIN CERTIFICATE-----\nMYCA\n-----END CERTIFICATE-----\n"}});
    let mut m = vec![json!({}), json!({"networkPolicies": cidrs})];
    for provider in ["cce", "eks"] {
        for certs in [json!({"mode": "helm"}), json!({"mode": "cert-manager"})] {
            m.push(json!({"provider": provider, "certificates": certs, "networkPolicies": cidrs}));
        }
        let mut s = secret_mode.clone();
        s["provider"] = provider.into();
        m.push(s);
    }
    m.push(json!({"provider": "eks", "awsRegion": "eu-west-1", "credentialsUri": "http://169.254.170.23/v1/credentials", "tokenExpiration": 3600}));
    // Without the exchange the agents call the cloud's endpoint and trust its CA.
    let cloud = json!({"cceEndpoint": "https://cce.example.com", "caCert": "-----BEGIN CERTIFICATE-----\nCLOUD\n-----END CERTIFICATE-----\n"});
    m.push(json!({"webhook": {"enabled": false}}));
    m.push(json!({"webhook": {"reportMissedInjections": false}}));
    m.push(json!({"agent": {"enabled": false}}));
    m.push(json!({"exchange": {"enabled": false, "caCert": cloud["caCert"]}, "agent": {"cceEndpoint": cloud["cceEndpoint"]}}));
    m.push(json!({"agent": {"enabled": false}, "exchange": {"enabled": false}}));
    m.push(json!({"networkPolicies": {"enabled": false}}));
    m.push(json!({"migration": {"enabled": true}}));
    m.push(json!({"networkPolicies": {"enabled": true, "apiServerCIDR": "10.0.0.0/24", "nodeCIDR": "10.0.0.0/16",
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}}));
    m.push(json!({"image": {"repository": "registry.example/pod-identity-webhook", "digest": format!("sha256:{}", "0".repeat(64))}}));
    m.extend(eks_values());
    m
}

/// EKS Pod Identity (backend eks): the exchange's AWS credentials from a shared credentials
/// file, from the environment with web identity, and no exchange (the agents call AWS).
fn eks_values() -> Vec<Value> {
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    let eks = json!({"provider": "eks", "backend": "eks", "awsRegion": "us-west-2",
        "eks": {"clusterName": "edge-1"}, "networkPolicies": cidrs});
    let with = |extra: Value| {
        let mut v = eks.clone();
        for (key, value) in extra.as_object().unwrap() {
            v[key] = value.clone();
        }
        v
    };
    vec![
        with(
            json!({"eks": {"clusterName": "edge-1", "clusterArn": "arn:aws:eks:us-west-2:111122223333:cluster/edge-1",
            "stsEndpoint": "https://sts.us-west-2.amazonaws.com"},
            "exchange": {"aws": {"filesSecret": "pod-identity-aws", "profile": "exchange"}}}),
        ),
        with(json!({"exchange": {"aws": {"envSecret": "pod-identity-aws-env",
            "webIdentityRoleArn": "arn:aws:iam::111122223333:role/pod-identity-exchange"}}})),
        with(
            json!({"exchange": {"enabled": false}, "agent": {"eksEndpoint": "https://eks-auth.us-west-2.api.aws"}}),
        ),
    ]
}

fn enabled(values: &Value, component: &str) -> bool {
    values[component]["enabled"].as_bool().unwrap_or(true)
}

fn b64(v: &Value) -> Vec<u8> {
    let text: String = v.as_str().unwrap().split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

/// The webhook's caBundle against the certificate it serves, per certificate mode: generated
/// (the caBundle is the Secret's CA and verifies its pair under every Service name),
/// cert-manager (cainjector fills it from the Certificate whose Secret the Deployment mounts),
/// an existing Secret (the caBundle given, the Secret given). The same for the exchange's pair
/// and the CA the agents trust.
fn certificate_findings(values: &Value, docs: &[Value]) -> Result<(), String> {
    let ns = "pod-identity-system";
    let mode = values["certificates"]["mode"].as_str().unwrap_or("helm");
    if enabled(values, "webhook") {
        let hook_doc = find(docs, "MutatingWebhookConfiguration", "pod-identity-webhook");
        let hook = &hook_doc["webhooks"][0];
        let deploy = find(docs, "Deployment", "pod-identity-webhook");
        let mounted = &deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"];
        match mode {
            "helm" => {
                let ca = b64(&hook["clientConfig"]["caBundle"]);
                let secret = find(docs, "Secret", mounted.as_str().unwrap());
                if b64(&secret["data"]["ca.crt"]) != ca {
                    return Err("the Secret's ca.crt is not the caBundle".into());
                }
                let names: Vec<String> = certs::SERVICE_DNS_NAMES.iter().map(|s| s.to_string()).collect();
                verify_server_cert(&ca, &b64(&secret["data"]["tls.crt"]), &names)
                    .map_err(|e| format!("the caBundle does not verify the serving certificate: {e}"))?;
            }
            "cert-manager" => {
                let from = hook_doc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
                    .as_str()
                    .ok_or("no cert-manager.io/inject-ca-from")?;
                let (cert_ns, cert_name) = from.split_once('/').unwrap();
                let cert = find(docs, "Certificate", cert_name);
                if cert_ns != ns || cert["spec"]["secretName"] != *mounted {
                    return Err(format!("{from} does not issue the mounted {mounted}"));
                }
                if hook["clientConfig"].get("caBundle").is_some() {
                    return Err("a caBundle beside cainjector's".into());
                }
            }
            _ => {
                if hook["clientConfig"]["caBundle"] != values["certificates"]["existingSecret"]["caBundle"]
                    || *mounted != values["certificates"]["existingSecret"]["name"]
                {
                    return Err("not the existing Secret and its CA".into());
                }
            }
        }
    }
    if enabled(values, "exchange") && enabled(values, "agent") && mode != "secret" {
        let secret = find(docs, "Secret", "pod-identity-exchange-tls");
        let ca = find(docs, "ConfigMap", "pod-identity-exchange-ca");
        let host = format!("pod-identity-exchange.{ns}.svc");
        verify_server_cert(
            ca["data"]["ca.crt"].as_str().unwrap().as_bytes(),
            &b64(&secret["data"]["tls.crt"]),
            &[host.clone(), format!("{host}.cluster.local")],
        )
        .map_err(|e| format!("the agents' CA does not verify the exchange: {e}"))?;
    }
    Ok(())
}

/// Everything the overlays are checked for, on one rendering of the chart with `values`.
fn check_rendering(values: &Value, r: &Rendered) {
    let docs = &r.docs;
    let ctx = values.to_string();
    // Pod Security: every template meets its namespace's level, and the namespaces are the
    // chart's own.
    let findings = pod_security_findings(&[("chart", docs.clone())]);
    assert!(findings.is_empty(), "{ctx}:\n{}", findings.join("\n"));
    assert_eq!(rbac_findings(docs), Vec::<String>::new(), "{ctx}");
    certificate_findings(values, docs).unwrap_or_else(|e| panic!("{ctx}: {e}"));

    let has = |kind: &str, name: &str| {
        docs.iter()
            .any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    };
    // Each component is there exactly when enabled.
    assert_eq!(
        has("Deployment", "pod-identity-webhook"),
        enabled(values, "webhook"),
        "{ctx}"
    );
    assert_eq!(
        has("MutatingWebhookConfiguration", "pod-identity-webhook"),
        enabled(values, "webhook"),
        "{ctx}"
    );
    assert_eq!(
        has("DaemonSet", "pod-identity-agent"),
        enabled(values, "agent"),
        "{ctx}"
    );
    assert_eq!(
        has("Namespace", "pod-identity-agent"),
        enabled(values, "agent"),
        "{ctx}"
    );
    assert_eq!(
        has("Deployment", "pod-identity-exchange"),
        enabled(values, "exchange"),
        "{ctx}"
    );
    assert_eq!(
        has("ClusterRole", "pod-identity-exchange"),
        enabled(values, "exchange"),
        "{ctx}"
    );
    // The pass check on association writes goes with the CRD (crds/, always installed).
    assert!(has("ValidatingAdmissionPolicy", "pod-identity-pass"), "{ctx}");
    assert!(
        has("ValidatingAdmissionPolicyBinding", "pod-identity-pass"),
        "{ctx}"
    );
    let policies = enabled(values, "networkPolicies");
    assert_eq!(
        has("NetworkPolicy", "pod-identity-default-deny"),
        policies,
        "{ctx}"
    );
    assert_eq!(
        has("NetworkPolicy", "pod-identity-webhook"),
        policies && enabled(values, "webhook"),
        "{ctx}"
    );
    assert_eq!(
        has("NetworkPolicy", "pod-identity-exchange"),
        policies && enabled(values, "exchange"),
        "{ctx}"
    );
    // The webhook's port: the API server's range, and the metricsFrom peers, nothing else.
    if policies && enabled(values, "webhook") {
        let from = &find(docs, "NetworkPolicy", "pod-identity-webhook")["spec"]["ingress"][0]["from"];
        let cidr = values["networkPolicies"]["apiServerCIDR"]
            .as_str()
            .unwrap_or("set-networkPolicies.apiServerCIDR");
        let mut want = vec![json!({"ipBlock": {"cidr": cidr}})];
        want.extend(
            values["networkPolicies"]["metricsFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
        assert_eq!(from, &Value::Array(want), "{ctx}");
    }
    // No Prometheus operator in an offline render: no ServiceMonitor.
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"), "{ctx}");

    let provider = values["provider"].as_str().unwrap_or("cce");
    let image = match values["image"]["digest"].as_str() {
        Some(d) => format!("{}@{d}", values["image"]["repository"].as_str().unwrap()),
        None => "pod-identity-webhook:0.1.0".to_owned(),
    };
    for (name, _, template) in pod_templates(docs) {
        for c in containers_of(template) {
            assert_eq!(c["image"], image.as_str(), "{ctx}: {name}");
            if let Some(command) = c["args"][0].as_str() {
                // Every flag exists in the binary's --help.
                assert_flags(command, &args_of(c));
            }
        }
    }
    if enabled(values, "webhook") {
        let hook = &find(docs, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0];
        check_webhook_contract(hook, "pod-identity-system");
        let deploy = find(docs, "Deployment", "pod-identity-webhook");
        let args = args_of(&deploy["spec"]["template"]["spec"]["containers"][0]);
        assert!(
            args.contains(&format!("--provider={provider}").as_str()),
            "{ctx}: {args:?}"
        );
        let lifetime = values["tokenExpiration"].as_u64().unwrap_or(86400);
        assert!(
            args.contains(&format!("--token-expiration={lifetime}").as_str()),
            "{ctx}: {args:?}"
        );
        if let Some(uri) = values["credentialsUri"].as_str() {
            assert!(
                args.contains(&format!("--credentials-uri={uri}").as_str()),
                "{args:?}"
            );
        }
        // The missed-injection report: on by default; off, no flag left on and no RBAC for it.
        let report = values["webhook"]["reportMissedInjections"]
            .as_bool()
            .unwrap_or(true);
        assert_eq!(!args.contains(&"--report-missed=false"), report, "{ctx}");
        assert_eq!(has("Role", "pod-identity-webhook"), report, "{ctx}");
        let rules = &find(docs, "ClusterRole", "pod-identity-webhook")["rules"];
        let watches_pods = rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["pods"]));
        assert_eq!(watches_pods, report, "{ctx}");
        if let Some(region) = values["awsRegion"].as_str() {
            assert!(
                args.contains(&format!("--aws-region={region}").as_str()),
                "{args:?}"
            );
        }
    }
    if enabled(values, "agent") {
        let ds = find(docs, "DaemonSet", "pod-identity-agent");
        let pod = &ds["spec"]["template"]["spec"];
        // On every node that can run injected pods: every taint tolerated by default.
        assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]), "{ctx}");
        let args = args_of(&pod["containers"][0]);
        assert!(args.contains(&format!("--provider={provider}").as_str()), "{ctx}");
        let backend = values["backend"].as_str().unwrap_or("cce");
        assert!(args.contains(&format!("--backend={backend}").as_str()), "{ctx}");
        let exchange = "https://pod-identity-exchange.pod-identity-system.svc";
        match (backend, enabled(values, "exchange")) {
            ("cce", true) => assert!(args.contains(&format!("--cce-endpoint={exchange}").as_str())),
            ("cce", false) => {
                assert!(
                    args.contains(&"--cce-endpoint=https://cce.example.com"),
                    "{args:?}"
                );
                let ca = find(docs, "ConfigMap", "pod-identity-exchange-ca");
                assert_eq!(ca["data"]["ca.crt"], values["exchange"]["caCert"]);
            }
            (_, true) => assert!(args.contains(&format!("--eks-endpoint={exchange}").as_str())),
            (_, false) => {
                // AWS's EKS Auth: SigV4 with the node's credentials, the public roots.
                assert!(
                    !args.iter().any(|a| a.starts_with("--auth-token-file")),
                    "{args:?}"
                );
                assert!(!docs.iter().any(|d| d["kind"] == "ConfigMap"), "{ctx}");
            }
        }
    }
}

#[test]
fn chart_renders_and_lints_clean_for_the_defaults_and_every_setting() {
    for values in matrix() {
        let r = render(&values);
        check_rendering(&values, &r);
        assert_eq!(lint_findings(&values), Vec::<String>::new(), "{values}");
    }
}

#[test]
fn chart_crd_is_the_one_the_code_defines() {
    let path = chart_dir().join("crds/podidentityassociations.yaml");
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        crd::yaml(),
        "charts/pod-identity/crds drifted: run `cargo run -- crd > charts/pod-identity/crds/podidentityassociations.yaml`"
    );
    // The engine loads it as the chart's CRD (installed before the templates).
    let r = render(&json!({}));
    assert_eq!(r.crds.len(), 1);
    assert_eq!(r.crds[0], crd::yaml());
}

/// The labels Helm adds that the overlays do not have.
const HELM_LABELS: [&str; 3] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
];

/// An object as compared across the chart and the overlays: without Helm's labels, with
/// kustomize's hash suffixes taken off generated names, without generated key material.
fn normalize(mut d: Value) -> Value {
    fn unhash(v: &mut Value) {
        match v {
            Value::String(s) => {
                for base in ["pod-identity-cloud-", "pod-identity-exchange-ca-"] {
                    if let Some(rest) = s.strip_prefix(base)
                        && rest.len() == 10
                        && rest.chars().all(|c| c.is_ascii_alphanumeric())
                    {
                        *s = base.trim_end_matches('-').to_owned();
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(unhash),
            Value::Object(o) => o.values_mut().for_each(unhash),
            _ => {}
        }
    }
    unhash(&mut d);
    if let Some(labels) = d["metadata"].get_mut("labels").and_then(Value::as_object_mut) {
        for l in HELM_LABELS {
            labels.remove(l);
        }
    }
    let generated = d["kind"] == "Secret"
        || (d["kind"] == "ConfigMap" && d["metadata"]["name"] == "pod-identity-exchange-ca");
    if generated && let Some(data) = d.get_mut("data").and_then(Value::as_object_mut) {
        // Key material differs per run: compare which keys there are.
        for v in data.values_mut() {
            *v = Value::Null;
        }
    }
    if d["kind"] == "Secret"
        && let Some(data) = d.get_mut("data").and_then(Value::as_object_mut)
    {
        data.remove("ca.crt");
    }
    if d["kind"] == "MutatingWebhookConfiguration" && d["webhooks"][0]["clientConfig"]["caBundle"].is_string()
    {
        d["webhooks"][0]["clientConfig"]["caBundle"] = "CA".into();
    }
    if d["kind"] == "CustomResourceDefinition" {
        d["metadata"] = json!({"name": d["metadata"]["name"]});
    }
    d
}

fn by_identity(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|d| {
            let d = normalize(d);
            let key = format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap()
            );
            (key, d)
        })
        .collect()
}

/// Where the chart's rendering with `values` (its CRDs included) and `overlays` differ, object
/// by object after `normalize`: each differing object's identity, with both versions.
fn differences(values: &Value, overlays: Vec<Value>) -> BTreeMap<String, String> {
    let r = render(values);
    let mut chart_docs = r.docs;
    for c in &r.crds {
        for doc in serde_yaml::Deserializer::from_str(c) {
            chart_docs.push(serde::Deserialize::deserialize(doc).unwrap());
        }
    }
    let ours = by_identity(chart_docs);
    let theirs = by_identity(overlays);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap();
    let mut out = BTreeMap::new();
    for key in ours.keys().chain(theirs.keys()) {
        let detail = match (ours.get(key), theirs.get(key)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => format!("chart: {}\nkustomize: {}", pretty(a), pretty(b)),
            (Some(_), None) => "rendered by the chart only".to_owned(),
            (None, _) => "rendered by the overlays only".to_owned(),
        };
        out.insert(key.clone(), detail);
    }
    out
}

/// The chart with `values` renders exactly the objects of `overlays` (`what`).
fn assert_same_objects(values: &Value, overlays: Vec<Value>, what: &str) {
    let diff = differences(values, overlays);
    assert!(
        diff.is_empty(),
        "the chart ({values}) and {what} differ:\n{}",
        diff.iter()
            .map(|(key, detail)| format!("{key}: {detail}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The EKS settings `manifests_copy` writes, and the chart's values for them.
const EKS_REGION: &str = "us-west-2";
const EKS_CLUSTER: &str = "edge-1";

/// A copy of `manifests/` as a user fills it in: the settings (the image, the ranges of
/// `CIDRS`; the EKS region and cluster name) and the certificates of every overlay.
fn manifests_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("manifests");
    copy_dir(&repo().join("manifests"), &m);
    std::fs::write(
        m.join("settings/settings.env"),
        "IMAGE=pod-identity-webhook:0.1.0\nAPI_SERVER_CIDR=192.0.2.10/32\nNODE_CIDR=198.51.100.0/24\n",
    )
    .unwrap();
    std::fs::write(
        m.join("eks/settings/eks.env"),
        format!("AWS_REGION={EKS_REGION}\nCLUSTER_NAME={EKS_CLUSTER}\n"),
    )
    .unwrap();
    for overlay in ["tls", "agent/tls", "eks/tls"] {
        let out = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(m.join(overlay))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    (tmp, m)
}

/// One source of truth: with the overlays' settings (settings.env, config.env), the chart
/// renders exactly the objects `manifests/` + `manifests/agent` render (certificates from
/// `certs` there, from the chart here) and `manifests/cert-manager` + `manifests/agent`
/// (certificate mode cert-manager), object by object.
#[test]
fn chart_renders_the_objects_the_overlays_render() {
    let (_tmp, m) = manifests_copy();
    let agent = try_kustomize(&m.join("agent")).unwrap();
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    for (overlay, mode) in [("", "helm"), ("cert-manager", "cert-manager")] {
        let mut overlays = try_kustomize(&m.join(overlay)).unwrap();
        overlays.extend(agent.clone());
        let values = json!({"certificates": {"mode": mode}, "networkPolicies": cidrs});
        assert_same_objects(
            &values,
            overlays,
            &format!("manifests/{overlay} + manifests/agent"),
        );
    }
}

/// The lines of `manifests/eks/agent/kustomization.yaml` from `#patches:` on, uncommented: its
/// optional patch, as a user who needs it uncomments it.
fn uncomment_the_optional_patch(kustomization: &Path) {
    let text = std::fs::read_to_string(kustomization).unwrap();
    let mut block = false;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            block = (block || l == "#patches:") && l.starts_with('#');
            if block { &l[1..] } else { l }
        })
        .collect();
    assert!(lines.contains(&"patches:"), "no optional patch in\n{text}");
    std::fs::write(kustomization, lines.join("\n")).unwrap();
}

/// The same for EKS mode: with the overlays' settings (eks.env too), the chart's
/// provider=eks, backend=eks rendering with the exchange's AWS credentials from the files
/// Secret `pod-identity-aws` renders exactly the objects of `manifests/eks` +
/// `manifests/eks/agent` (mode helm) and `manifests/eks/cert-manager` + `manifests/eks/agent`
/// (mode cert-manager); with the optional patch of `manifests/eks/agent` uncommented, those of
/// the chart with `eks.stsEndpoint`, `eks.clusterArn` and `exchange.aws.profile` as it sets them.
#[test]
fn chart_renders_the_objects_the_eks_overlays_render() {
    let (_tmp, m) = manifests_copy();
    let cidrs: Value = serde_json::from_str(CIDRS).unwrap();
    let eks = |mode: &str| {
        json!({"provider": "eks", "backend": "eks", "awsRegion": EKS_REGION,
            "eks": {"clusterName": EKS_CLUSTER}, "exchange": {"aws": {"filesSecret": "pod-identity-aws"}},
            "certificates": {"mode": mode}, "networkPolicies": cidrs})
    };
    let agent = try_kustomize(&m.join("eks/agent")).unwrap();
    let webhook = try_kustomize(&m.join("eks")).unwrap();
    for (overlay, mode) in [("eks", "helm"), ("eks/cert-manager", "cert-manager")] {
        let mut overlays = try_kustomize(&m.join(overlay)).unwrap();
        overlays.extend(agent.clone());
        assert_same_objects(
            &eks(mode),
            overlays,
            &format!("manifests/{overlay} + manifests/eks/agent"),
        );
    }

    let mut optional = eks("helm");
    optional["eks"]["stsEndpoint"] = "https://sts.us-west-2.amazonaws.com".into();
    optional["eks"]["clusterArn"] = "arn:aws:eks:us-west-2:111122223333:cluster/edge-1".into();
    optional["exchange"]["aws"]["profile"] = "exchange".into();
    // The comparison sees them: without the patch, the exchange differs, and nothing else.
    let mut overlays = webhook.clone();
    overlays.extend(agent);
    let diff = differences(&optional, overlays);
    assert_eq!(
        diff.keys().collect::<Vec<_>>(),
        ["Deployment/pod-identity-system/pod-identity-exchange"],
        "{diff:?}"
    );
    uncomment_the_optional_patch(&m.join("eks/agent/kustomization.yaml"));
    let mut overlays = webhook;
    overlays.extend(try_kustomize(&m.join("eks/agent")).unwrap());
    assert_same_objects(
        &optional,
        overlays,
        "manifests/eks + manifests/eks/agent with its optional patch",
    );
}

/// The checks catch a chart that breaks Pod Security: a webhook that may escalate privileges
/// (a template edit), and the agent put in the restricted namespace (a value).
#[test]
fn a_pod_security_violation_in_the_chart_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let loose = tmp.path().join("pod-identity");
    copy_dir(&chart_dir(), &loose);
    let file = loose.join("templates/webhook-deployment.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
            1,
        ),
    )
    .unwrap();
    let docs = try_render_chart(&loose, &json!({})).unwrap().docs;
    assert_eq!(
        pod_security_findings(&[("chart", docs)]),
        [
            "chart Deployment/pod-identity-webhook in pod-identity-system (Restricted): Privilege Escalation: containers[webhook].securityContext.allowPrivilegeEscalation"
        ]
    );

    let mut docs = render(&json!({})).docs;
    for d in &mut docs {
        if d["kind"] == "DaemonSet" {
            d["metadata"]["namespace"] = "pod-identity-system".into();
        }
    }
    let findings = pod_security_findings(&[("chart", docs)]);
    assert!(
        findings.iter().any(|f| f
            .contains("DaemonSet/pod-identity-agent in pod-identity-system (Restricted): Host Namespaces")),
        "{findings:?}"
    );
    // The values cannot put it there: one namespace cannot be both privileged and restricted.
    let e = try_render_chart(
        &chart_dir(),
        &json!({"namespaces": {"agent": "pod-identity-system"}}),
    )
    .err()
    .unwrap();
    assert!(
        e.contains("namespaces.agent must differ from namespaces.system"),
        "{e}"
    );
}

/// A caBundle that is not the serving certificate's CA is caught: the caBundle of one install
/// with the Secret of another, and a Secret whose CA is not the caBundle.
#[test]
fn a_ca_bundle_that_does_not_match_the_serving_certificate_is_caught() {
    let values = json!({});
    let a = render(&values).docs;
    let b = render(&values).docs;
    certificate_findings(&values, &a).unwrap();
    let other_ca = find(&b, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0]["clientConfig"]["caBundle"].clone();
    let mut swapped = a.clone();
    for d in &mut swapped {
        if d["kind"] == "MutatingWebhookConfiguration" {
            d["webhooks"][0]["clientConfig"]["caBundle"] = other_ca.clone();
        }
        if d["kind"] == "Secret" && d["metadata"]["name"] == "pod-identity-webhook-tls" {
            d["data"]["ca.crt"] = other_ca.clone();
        }
    }
    let e = certificate_findings(&values, &swapped).unwrap_err();
    assert!(
        e.contains("the caBundle does not verify the serving certificate"),
        "{e}"
    );

    let mut exchange = a.clone();
    let other = find(&b, "ConfigMap", "pod-identity-exchange-ca")["data"].clone();
    for d in &mut exchange {
        if d["kind"] == "ConfigMap" && d["metadata"]["name"] == "pod-identity-exchange-ca" {
            d["data"] = other.clone();
        }
    }
    let e = certificate_findings(&values, &exchange).unwrap_err();
    assert!(e.contains("the agents' CA does not verify the exchange"), "{e}");
}

/// Wrong values fail at install with the schema's message, naming the value; `helm lint`
/// reports the same.
#[test]
fn bad_values_fail_with_the_schemas_message() {
    for (values, message) in [
        (
            json!({"provider": "gke"}),
            "at '/provider': value must be one of 'cce', 'eks'",
        ),
        (
            json!({"tokenExpiration": -1}),
            "at '/tokenExpiration': minimum: got -1, want 600",
        ),
        (
            json!({"tokenExpiration": "1h"}),
            "at '/tokenExpiration': got string, want integer",
        ),
        (
            json!({"certificates": {"mode": "vault"}}),
            "at '/certificates/mode': value must be one of 'helm', 'cert-manager', 'secret'",
        ),
        (
            json!({"certificates": {"mode": "secret"}}),
            "at '/certificates/existingSecret/name': minLength: got 0, want 1",
        ),
        (json!({"image": {"digest": "latest"}}), "at '/image/digest'"),
        (
            json!({"webhook": {"replicas": 0}}),
            "at '/webhook/replicas': minimum: got 0, want 1",
        ),
        (
            json!({"webhook": {"timeoutSeconds": 31}}),
            "at '/webhook/timeoutSeconds': maximum: got 31, want 30",
        ),
        (
            json!({"networkPolicies": {"apiServerCIDR": "the api server"}}),
            "at '/networkPolicies/apiServerCIDR'",
        ),
        (
            json!({"webhok": {"enabled": false}}),
            "additional properties 'webhok' not allowed",
        ),
    ] {
        let e = try_render_chart(&chart_dir(), &values)
            .err()
            .unwrap_or_else(|| panic!("{values} rendered"));
        assert!(e.starts_with("HelmValuesError"), "{values}: {e}");
        assert!(e.contains(message), "{values}: {e}");
        assert!(
            lint_findings(&values).iter().any(|f| f.contains(message)),
            "{values}"
        );
    }
}

/// A ServiceMonitor exactly when the Prometheus operator's API is served: none in a plain
/// render; with the gate open (a copy where the capability holds) one per Service, scraping its
/// port with the Secret's CA.
#[test]
fn service_monitors_only_with_the_prometheus_operator() {
    let gate = r#".Capabilities.APIVersions.Has "monitoring.coreos.com/v1""#;
    let template = std::fs::read_to_string(chart_dir().join("templates/servicemonitor.yaml")).unwrap();
    assert_eq!(template.matches(gate).count(), 1);
    assert!(
        !render(&json!({}))
            .docs
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor")
    );

    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("pod-identity");
    copy_dir(&chart_dir(), &open);
    std::fs::write(
        open.join("templates/servicemonitor.yaml"),
        template.replace(gate, "true"),
    )
    .unwrap();
    let docs = try_render_chart(&open, &json!({})).unwrap().docs;
    let monitors: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ServiceMonitor").collect();
    assert_eq!(monitors.len(), 2);
    for m in monitors {
        let name = m["metadata"]["name"].as_str().unwrap();
        let svc = find(&docs, "Service", name);
        assert_eq!(
            m["spec"]["selector"]["matchLabels"],
            svc["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .map(|n| json!({"app.kubernetes.io/name": n}))
                .unwrap()
        );
        let ep = &m["spec"]["endpoints"][0];
        assert_eq!(ep["port"], svc["spec"]["ports"][0]["name"]);
        assert_eq!(ep["path"], "/metrics");
        let secret = find(
            &docs,
            "Secret",
            ep["tlsConfig"]["ca"]["secret"]["name"].as_str().unwrap(),
        );
        assert!(secret["data"]["ca.crt"].is_string(), "{name}");
    }
    let off = try_render_chart(&open, &json!({"metrics": {"serviceMonitor": {"enabled": false}}}))
        .unwrap()
        .docs;
    assert!(!off.iter().any(|d| d["kind"] == "ServiceMonitor"));
}

/// NOTES.txt says how to opt a namespace in and create the first association; the association
/// it shows is one the CRD accepts.
#[test]
fn notes_show_how_to_label_a_namespace_and_create_an_association() {
    let notes = render(&json!({})).notes;
    assert!(
        notes.contains("kubectl label namespace NAMESPACE podidentity.io/injection=enabled"),
        "{notes}"
    );
    assert!(
        notes.contains("create secret generic pod-identity-iam"),
        "{notes}"
    );
    assert!(
        notes.contains("WARNING: networkPolicies.apiServerCIDR"),
        "{notes}"
    );
    notes_association_is_valid(&notes, &[("NAMESPACE", "demo"), ("AGENCY", "demo-agency")]);
    let quiet = render(&json!({"networkPolicies": serde_json::from_str::<Value>(CIDRS).unwrap()})).notes;
    assert!(!quiet.contains("WARNING"), "{quiet}");
}

/// The values of the `helm install` in section `heading` of the page `path`, as written (with
/// example values for its variables).
fn readme_helm_values(path: &str, heading: &str) -> Value {
    let readme = crate::deploy::readme::page(path);
    let block = crate::deploy::readme::sh_blocks(&readme, heading)
        .join("\n")
        .replace("\\\n", " ");
    let install = block
        .lines()
        .find(|l| l.starts_with("helm install "))
        .expect("a helm install line");
    assert!(install.contains(" charts/pod-identity "), "{install}");
    assert!(
        !install.contains("--create-namespace"),
        "the chart creates its namespaces"
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    let vars = [
        ("$REGISTRY", "registry.example.com/platform"),
        ("$DIGEST", digest.as_str()),
        ("$API_SERVER_CIDR", "10.0.0.0/24"),
        ("$NODE_CIDR", "10.0.0.0/16"),
        ("$PROJECT_ID", "project"),
        ("$CLUSTER_ID", "cluster"),
        ("$DOMAIN_ID", "domain"),
        ("$AWS_REGION", "eu-west-1"),
        ("$CLUSTER_NAME", "edge-1"),
    ];
    let mut values = json!({});
    let mut words = install.split_whitespace();
    while let Some(w) = words.next() {
        if w != "--set" {
            continue;
        }
        let mut setting = words.next().unwrap().to_owned();
        for (var, value) in vars {
            setting = setting.replace(var, value);
        }
        assert!(!setting.contains('$'), "an unknown variable in {setting}");
        let (path, value) = setting.split_once('=').unwrap();
        let mut at = &mut values;
        for key in path.split('.') {
            at = &mut at[key];
        }
        *at = value.into();
    }
    assert_eq!(values["image"]["digest"], digest.as_str());
    values
}

/// The install page's `helm install`, as written (with example values for its variables),
/// passes the schema and renders a deployment that passes every check; the README's and the
/// chart README's set the same values.
#[test]
fn the_readmes_helm_install_renders_a_deployment_that_passes_the_checks() {
    let values = readme_helm_values(crate::deploy::readme::INSTALL, "## Deploy with Helm");
    for (path, heading) in [
        ("README.md", "## Install with Helm"),
        ("charts/pod-identity/README.md", "## Install and upgrade"),
    ] {
        assert_eq!(
            readme_helm_values(path, heading),
            values,
            "{path}: its helm install is not {}'s",
            crate::deploy::readme::INSTALL
        );
    }
    let r = render(&values);
    check_rendering(&values, &r);
    assert!(!r.notes.contains("WARNING"), "{}", r.notes);
    assert_eq!(lint_findings(&values), Vec::<String>::new());
}

/// The same for the install page's install in EKS mode; the Secret it creates is the one the
/// exchange mounts, under the key its credentials file is read from.
#[test]
fn the_readmes_eks_helm_install_renders_a_deployment_that_passes_the_checks() {
    let values = readme_helm_values(
        crate::deploy::readme::INSTALL,
        "## EKS Pod Identity on any cluster",
    );
    assert_eq!(values["backend"], "eks");
    let r = render(&values);
    check_rendering(&values, &r);
    assert!(!r.notes.contains("WARNING"), "{}", r.notes);
    assert_eq!(lint_findings(&values), Vec::<String>::new());
    let readme = crate::deploy::readme::page(crate::deploy::readme::INSTALL);
    let block = crate::deploy::readme::sh_blocks(&readme, "## EKS Pod Identity on any cluster").join("\n");
    let secret = values["exchange"]["aws"]["filesSecret"].as_str().unwrap();
    assert!(
        block.contains(&format!(
            "-n pod-identity-system create secret generic {secret} --from-file=credentials="
        )),
        "{block}"
    );
    let (pod, exchange) = container(&r.docs, "Deployment", "pod-identity-exchange");
    let file = env_of(exchange)["AWS_SHARED_CREDENTIALS_FILE"].clone();
    let file = Path::new(&file);
    assert_eq!(file.file_name().unwrap(), "credentials");
    assert_eq!(
        volume_at(pod, file.parent().unwrap().to_str().unwrap())["secret"]["secretName"],
        secret
    );
}

/// The container named `name` of the workload `kind/workload`: its pod spec and itself.
pub(crate) fn container<'a>(docs: &'a [Value], kind: &str, workload: &str) -> (&'a Value, &'a Value) {
    let pod = &find(docs, kind, workload)["spec"]["template"]["spec"];
    (pod, &pod["containers"][0])
}

/// The value of `--name=` in `args`, if set.
pub(crate) fn flag_of<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

/// The container's `env` entries with a plain value, by name.
pub(crate) fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect()
}

/// Backend eks, as the chart renders it: the agents call the exchange's EKS Auth with their
/// token; the exchange serves the cluster and reads its AWS credentials through the chain from
/// the Secret the values name (files or environment, or web identity); nothing of the CCE
/// path (its ConfigMap, the IAM key Secret) is rendered.
#[test]
fn chart_renders_eks_mode_with_the_exchanges_aws_credentials() {
    let [files, env_web, no_exchange] = <[Value; 3]>::try_from(eks_values()).unwrap();
    for values in [&files, &env_web, &no_exchange] {
        let r = render(values);
        check_rendering(values, &r);
        assert_eq!(lint_findings(values), Vec::<String>::new(), "{values}");
        let text = serde_json::to_string(&r.docs).unwrap();
        for cce in [
            "pod-identity-cloud",
            "--access-key-file",
            "pod-identity-iam",
            "--cce-endpoint",
        ] {
            assert!(!text.contains(cce), "{cce} rendered for backend eks: {values}");
        }
        let (_, agent) = container(&r.docs, "DaemonSet", "pod-identity-agent");
        let args = args_of(agent);
        assert_eq!(flag_of(&args, "--cluster-name"), Some("edge-1"));
        assert_eq!(flag_of(&args, "--region"), Some("us-west-2"));
        assert_eq!(agent["env"].as_array().unwrap().len(), 1, "only the node name");
    }

    // The exchange: the cluster, STS, the tag's ARN; the profile's files from the Secret.
    let docs = render(&files).docs;
    let (pod, exchange) = container(&docs, "Deployment", "pod-identity-exchange");
    let args = args_of(exchange);
    for (name, want) in [
        ("--cluster-name", "edge-1"),
        ("--region", "us-west-2"),
        ("--sts-endpoint", "https://sts.us-west-2.amazonaws.com"),
        (
            "--cluster-arn",
            "arn:aws:eks:us-west-2:111122223333:cluster/edge-1",
        ),
    ] {
        assert_eq!(flag_of(&args, name), Some(want), "{args:?}");
    }
    let env = env_of(exchange);
    assert_eq!(env["AWS_PROFILE"], "exchange");
    let credentials = Path::new(&env["AWS_SHARED_CREDENTIALS_FILE"]);
    assert_eq!(credentials.file_name().unwrap(), "credentials");
    let volume = volume_at(pod, credentials.parent().unwrap().to_str().unwrap());
    assert_eq!(
        volume["secret"],
        json!({"secretName": "pod-identity-aws", "defaultMode": 288})
    );
    assert!(exchange.get("envFrom").is_none());

    // The environment from a Secret, and web identity with the exchange's projected token.
    let docs = render(&env_web).docs;
    let (pod, exchange) = container(&docs, "Deployment", "pod-identity-exchange");
    assert_eq!(
        exchange["envFrom"],
        json!([{"secretRef": {"name": "pod-identity-aws-env"}}])
    );
    let env = env_of(exchange);
    assert_eq!(
        env["AWS_ROLE_ARN"],
        "arn:aws:iam::111122223333:role/pod-identity-exchange"
    );
    let token = Path::new(&env["AWS_WEB_IDENTITY_TOKEN_FILE"]);
    let volume = volume_at(pod, token.parent().unwrap().to_str().unwrap());
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "sts.amazonaws.com", "expirationSeconds": 3600,
               "path": token.file_name().unwrap().to_str().unwrap()})
    );
    assert!(!env.contains_key("AWS_SHARED_CREDENTIALS_FILE"));

    // Without the exchange the agents call AWS's EKS Auth, SigV4-signed: no token, no CA.
    let docs = render(&no_exchange).docs;
    let (pod, agent) = container(&docs, "DaemonSet", "pod-identity-agent");
    let args = args_of(agent);
    assert_eq!(
        flag_of(&args, "--eks-endpoint"),
        Some("https://eks-auth.us-west-2.api.aws")
    );
    assert_eq!(flag_of(&args, "--ca-file"), None);
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["kube-api"]);

    // The schema names what backend eks needs.
    for (values, message) in [
        (
            json!({"backend": "eks", "awsRegion": "us-west-2"}),
            "at '/eks/clusterName': minLength: got 0, want 1",
        ),
        (
            json!({"backend": "eks", "eks": {"clusterName": "edge-1"}}),
            "at '/awsRegion': minLength: got 0, want 1",
        ),
        (
            json!({"backend": "eks", "awsRegion": "us-west-2", "eks": {"clusterName": "edge-1"},
                   "exchange": {"aws": {"webIdentityRoleArn": "pod-identity-exchange"}}}),
            "at '/exchange/aws/webIdentityRoleArn'",
        ),
        (
            json!({"backend": "aws"}),
            "at '/backend': value must be one of 'cce', 'eks'",
        ),
    ] {
        let e = try_render_chart(&chart_dir(), &values)
            .err()
            .unwrap_or_else(|| panic!("{values} rendered"));
        assert!(e.contains(message), "{values}: {e}");
    }
    // NOTES: the Secret to create, and an association naming a role the CRD accepts.
    let notes = render(&files).notes;
    assert!(
        notes.contains("create secret generic pod-identity-aws \\\n    --from-file=credentials="),
        "{notes}"
    );
    notes_association_is_valid(
        &notes,
        &[
            ("NAMESPACE", "demo"),
            ("ROLE_ARN", "arn:aws:iam::111122223333:role/app"),
        ],
    );
}

/// `s` with every absolute path moved under `root` (where the test lays out what the pod's
/// volumes would hold).
pub(crate) fn under(root: &Path, s: &str) -> String {
    match s.split_once("=/") {
        Some((flag, path)) if flag.starts_with("--") => format!("{flag}={}", root.join(path).display()),
        _ if s.starts_with('/') => root.join(&s[1..]).display().to_string(),
        _ => s.to_owned(),
    }
}

/// The association the NOTES show (an indented heredoc ending at `EOF_`), with `fill` put in
/// for its placeholders, is one the CRD's rules and the validation accept.
fn notes_association_is_valid(notes: &str, fill: &[(&str, &str)]) {
    let start = notes.find("  apiVersion: iam.podidentity.io/").unwrap();
    let end = notes.find("  EOF_").unwrap();
    let mut yaml = notes[start..end].to_owned();
    for (placeholder, value) in fill {
        yaml = yaml.replace(placeholder, value);
    }
    let yaml: String = yaml
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    let obj: crd::PodIdentityAssociation = serde_yaml::from_str(&yaml).unwrap();
    kube::core::cel::validate_cel(&obj).unwrap();
    crd::to_association(&obj, None).unwrap();
}
