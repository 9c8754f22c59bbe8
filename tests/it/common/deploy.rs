//! Checks every rendering of the deployment must pass, the kustomize overlays
//! (`manifests.rs`) and the Helm chart (`helm.rs`) alike: the webhook contract, Pod Security
//! per namespace, RBAC least privilege, and the binary's flags.

use std::process::Command;

use serde_json::Value;

use crate::common::pod_security::{Level, violations};

use crate::common::BIN;

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

pub fn help(command: &str) -> String {
    String::from_utf8(
        Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

/// `COMMAND ARGS...`: every `--flag=value` is one the subcommand has with a value, every bare
/// `--flag` one it has without.
pub fn assert_flags(command: &str, args: &[&str]) {
    assert_eq!(args[0], command);
    let help = help(command);
    for a in &args[1..] {
        let known = match a.split_once('=') {
            Some((flag, _)) => help.contains(&format!("{flag} <")),
            None => help.lines().any(|l| {
                l.trim_start()
                    .strip_prefix(a)
                    .is_some_and(|rest| rest.starts_with(' '))
            }),
        };
        assert!(known, "{a} is not an {command} flag");
    }
}

/// A container's `args` as strings.
pub fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// The pod templates of the workloads in `docs`: (kind/name, namespace, template).
pub fn pod_templates(docs: &[Value]) -> Vec<(String, String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let template = match d["kind"].as_str()? {
                "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => &d["spec"]["template"],
                "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"],
                "Pod" => d,
                _ => return None,
            };
            let name = format!("{}/{}", d["kind"].as_str()?, d["metadata"]["name"].as_str()?);
            Some((name, d["metadata"]["namespace"].as_str()?.to_owned(), template))
        })
        .collect()
}

/// What Pod Security admission would reject in `renders` (overlays applied together), each
/// finding naming the overlay, the workload, its namespace's level and the control.
pub fn pod_security_findings(renders: &[(&str, Vec<Value>)]) -> Vec<String> {
    let levels: std::collections::HashMap<&str, Level> = renders
        .iter()
        .flat_map(|(_, docs)| docs)
        .filter(|d| d["kind"] == "Namespace")
        .map(|d| {
            let label = d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str();
            (d["metadata"]["name"].as_str().unwrap(), Level::parse(label))
        })
        .collect();
    let mut findings = Vec::new();
    for (overlay, docs) in renders {
        for (name, ns, template) in pod_templates(docs) {
            let Some(level) = levels.get(ns.as_str()) else {
                findings.push(format!(
                    "{overlay} {name}: namespace {ns} is not created by the manifests"
                ));
                continue;
            };
            for v in violations(template, *level) {
                findings.push(format!("{overlay} {name} in {ns} ({level:?}): {v}"));
            }
        }
    }
    findings
}

pub fn containers_of(template: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| template["spec"][*k].as_array().into_iter().flatten())
        .collect()
}

/// The MutatingWebhookConfiguration's webhook, field by field: v1 reviews, no side effects,
/// reinvocation, fail closed, a short timeout, pods on CREATE only, the opt-in namespace
/// selector minus kube-system and `system_ns`, the per-pod opt-out, and the Service.
pub fn check_webhook_contract(hook: &Value, system_ns: &str) {
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert!(
        hook["timeoutSeconds"]
            .as_u64()
            .is_some_and(|t| (1..=30).contains(&t))
    );
    assert_eq!(
        hook["rules"],
        serde_json::json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    let ns_sel = serde_json::to_string(&hook["namespaceSelector"]).unwrap();
    assert!(
        ns_sel.contains(r#"{"key":"podidentity.io/injection","operator":"In","values":["enabled"]}"#),
        "{ns_sel}"
    );
    assert!(
        ns_sel.contains(&format!(r#""values":["kube-system","{system_ns}"]"#)),
        "{ns_sel}"
    );
    assert_eq!(
        hook["objectSelector"]["matchExpressions"][0],
        serde_json::json!({"key": "podidentity.io/inject", "operator": "NotIn", "values": ["false"]})
    );
    assert_eq!(
        hook["clientConfig"]["service"],
        serde_json::json!({"name": "pod-identity-webhook", "namespace": system_ns, "path": "/mutate", "port": 443})
    );
}

/// The chart's migration hook may convert the old associations: create the new kind, delete
/// the old, and pass whatever the old ones granted.
pub fn migrate_rules() -> Value {
    serde_json::json!([
        {"apiGroups": ["iam.podidentity.io"], "resources": ["podidentityassociations"], "verbs": ["get", "list", "create"]},
        {"apiGroups": ["podidentity.io"], "resources": ["podidentityassociations"], "verbs": ["get", "list", "delete"]},
        {"apiGroups": ["podidentity.io"], "resources": ["agencies", "roles"], "verbs": ["pass"]},
    ])
}

/// The only rules any role may grant: the webhook reads associations; the agent reads them and
/// lists and watches pods (its node's); the exchange reviews tokens and reads associations (it
/// writes none: the association API writes with its callers' tokens), and gets the agents' pods
/// (in their namespace only) to accept only the agent DaemonSet's running pods as callers; the
/// chart's migration hook [`migrate_rules`]. Anything else (another role, a wildcard, another write) is a finding.
pub fn rbac_findings(docs: &[Value]) -> Vec<String> {
    let read = serde_json::json!({"apiGroups": ["iam.podidentity.io", "podidentity.io"], "resources": ["podidentityassociations"], "verbs": ["get", "list", "watch"]});
    let review = serde_json::json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]});
    let pods = serde_json::json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]});
    let get_pods = serde_json::json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
    let namespaces = serde_json::json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]});
    let events =
        serde_json::json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]});
    let configuration = serde_json::json!({"apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"], "resourceNames": ["pod-identity-webhook"], "verbs": ["get"]});
    let lease_create = serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]});
    let lease_use = serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
        "resourceNames": ["pod-identity-webhook-report"], "verbs": ["get", "patch"]});
    let mut findings = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let allowed = match (kind, name) {
            // Without the missed-injection report: the associations only.
            ("ClusterRole", "pod-identity-webhook") if d["rules"] == serde_json::json!([read]) => continue,
            ("ClusterRole", "pod-identity-webhook") => {
                serde_json::json!([read, pods, namespaces, events, configuration])
            }
            ("Role", "pod-identity-webhook") => serde_json::json!([lease_create, lease_use]),
            ("ClusterRole", "pod-identity-exchange") => serde_json::json!([review, read]),
            ("Role", "pod-identity-exchange") if d["metadata"]["namespace"] == "pod-identity-agent" => {
                serde_json::json!([get_pods])
            }
            ("ClusterRole", "pod-identity-agent") => serde_json::json!([read, pods]),
            // The upgrade hook (docs/migration.md), deleted once it succeeded.
            ("ClusterRole", "pod-identity-migrate") => migrate_rules(),
            ("ClusterRole" | "Role", _) => {
                findings.push(format!("{kind}/{name}: a role nothing needs"));
                continue;
            }
            ("ClusterRoleBinding" | "RoleBinding", _) => {
                let sa = &d["subjects"];
                if d["roleRef"]["name"] != name
                    || sa.as_array().is_none_or(|s| s.len() != 1)
                    || sa[0]["kind"] != "ServiceAccount"
                    || sa[0]["name"] != name
                {
                    findings.push(format!("{kind}/{name}: binds {} to {sa}", d["roleRef"]["name"]));
                }
                continue;
            }
            _ => continue,
        };
        if d["rules"] != allowed {
            findings.push(format!("{kind}/{name}: rules {}", d["rules"]));
        }
    }
    findings
}

/// Whether `ca_pem` vouches for the certificate `leaf_pem` under each of `names`.
pub fn verify_server_cert(ca_pem: &[u8], leaf_pem: &[u8], names: &[String]) -> Result<(), String> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    crate::common::crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from_pem_slice(leaf_pem).map_err(|e| e.to_string())?;
    for name in names {
        let server = ServerName::try_from(name.clone()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &server, &[], UnixTime::now())
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// The volume mounted read-only at `dir` in `pod`'s first container.
pub fn volume_at<'a>(pod: &'a Value, dir: &str) -> &'a Value {
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "{dir}");
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}
