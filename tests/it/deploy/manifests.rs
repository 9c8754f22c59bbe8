//! The kustomize manifests: rendered with `kubectl kustomize` and checked object by object.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use pod_identity_webhook::certs;
use pod_identity_webhook::testing::crd;
use serde_json::Value;

use crate::common::deploy::{
    args_of, assert_flags, check_webhook_contract, containers_of, find, help, pod_security_findings,
    pod_templates, rbac_findings, verify_server_cert, volume_at,
};
use crate::common::pod_security::{Level, violations};

use crate::common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a tree, symbolic links as links (the `RUN-...-FIRST` guards dangle until `certs`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let kind = e.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), target).unwrap();
        } else if kind.is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `kubectl kustomize DIR`: the documents, or what kubectl said.
pub fn try_kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    let out = Command::new(crate::common::python::kubectl())
        .args(["kustomize"])
        .arg(dir)
        .output()
        .expect("kubectl runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect())
}

fn kustomize(dir: &Path) -> Vec<Value> {
    try_kustomize(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// Renders `manifests/` after `certs --out manifests/tls`, in a copy of the tree.
fn render_with_certs() -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    render_copy_with_certs("", &[])
}

/// Renders the overlay `manifests/<overlay>` in a copy of `manifests/`, after `certs --out
/// <overlay>/tls <names>`.
fn render_copy_with_certs(overlay: &str, names: &[&str]) -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("manifests");
    copy_dir(&repo().join("manifests"), &m);
    let dir = m.join(overlay);
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.join("tls"))
        .args(names)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (kustomize(&dir), dir.join("tls"), tmp)
}

/// Every overlay, rendered as it would be applied: `manifests/` and `manifests/agent` after
/// `certs`, `manifests/cert-manager` as it is, and the EKS overlays.
pub(crate) fn every_overlay() -> Vec<(&'static str, Vec<Value>)> {
    let mut renders = vec![
        ("manifests", render_with_certs().0),
        (
            "manifests/cert-manager",
            kustomize(&repo().join("manifests/cert-manager")),
        ),
        ("manifests/agent", render_agent_with_certs().0),
    ];
    renders.extend(render_eks_with_certs(None).0);
    renders
}

/// The names the exchange's certificate is for (`certs --dns`, as docs/install.md runs it).
const EXCHANGE_DNS: [&str; 4] = [
    "--dns",
    "pod-identity-exchange.pod-identity-system.svc",
    "--dns",
    "pod-identity-exchange.pod-identity-system.svc.cluster.local",
];

/// The EKS overlays `manifests/eks`, `manifests/eks/cert-manager` and `manifests/eks/agent`,
/// rendered as they would be applied, in a copy of `manifests/` with `eks_env` as
/// `eks/settings/eks.env` (else the repository's), after `certs` wrote the webhook's pair
/// (`eks/tls`) and the exchange's (`agent/tls`); and the copy's `manifests/`.
fn render_eks_with_certs(
    eks_env: Option<&str>,
) -> (Vec<(&'static str, Vec<Value>)>, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("manifests");
    copy_dir(&repo().join("manifests"), &m);
    if let Some(env) = eks_env {
        std::fs::write(m.join("eks/settings/eks.env"), env).unwrap();
    }
    for (dir, names) in [("eks/tls", &[][..]), ("agent/tls", &EXCHANGE_DNS[..])] {
        let out = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(m.join(dir))
            .args(names)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let renders = vec![
        ("manifests/eks", kustomize(&m.join("eks"))),
        (
            "manifests/eks/cert-manager",
            kustomize(&m.join("eks/cert-manager")),
        ),
        ("manifests/eks/agent", kustomize(&m.join("eks/agent"))),
    ];
    (renders, m, tmp)
}

#[test]
fn crd_manifest_matches_the_code() {
    let on_disk = std::fs::read_to_string(repo().join("manifests/base/crd.yaml")).unwrap();
    assert_eq!(
        on_disk,
        crd::yaml(),
        "manifests/base/crd.yaml drifted: run `cargo run -- crd > manifests/base/crd.yaml`"
    );
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), on_disk);
}

#[test]
fn rendered_manifests_hold_every_object_as_designed() {
    let (docs, tls, _tmp) = render_with_certs();
    for (kind, name) in [
        ("Namespace", "pod-identity-system"),
        (
            "CustomResourceDefinition",
            "podidentityassociations.iam.podidentity.io",
        ),
        (
            "CustomResourceDefinition",
            "podidentityassociations.podidentity.io",
        ),
        ("ServiceAccount", "pod-identity-webhook"),
        ("ClusterRole", "pod-identity-webhook"),
        ("ClusterRoleBinding", "pod-identity-webhook"),
        ("Role", "pod-identity-webhook"),
        ("RoleBinding", "pod-identity-webhook"),
        ("Deployment", "pod-identity-webhook"),
        ("PodDisruptionBudget", "pod-identity-webhook"),
        ("Service", "pod-identity-webhook"),
        ("Secret", "pod-identity-webhook-tls"),
        ("MutatingWebhookConfiguration", "pod-identity-webhook"),
        ("NetworkPolicy", "pod-identity-default-deny"),
        ("NetworkPolicy", "pod-identity-webhook"),
        ("ValidatingAdmissionPolicy", "pod-identity-pass"),
        ("ValidatingAdmissionPolicyBinding", "pod-identity-pass"),
    ] {
        find(&docs, kind, name);
    }
    // The pass check (cluster-scoped: no namespace, which kustomize would add) binds its policy.
    for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
        assert_eq!(
            find(&docs, kind, "pod-identity-pass")["metadata"].get("namespace"),
            None
        );
    }
    assert_eq!(
        find(&docs, "ValidatingAdmissionPolicyBinding", "pod-identity-pass")["spec"],
        serde_json::json!({"policyName": "pod-identity-pass", "validationActions": ["Deny"]})
    );

    // The CRDs are the ones the code defines.
    for defined in crd::definitions() {
        let name = defined.metadata.name.clone().unwrap();
        let crd_doc = find(&docs, "CustomResourceDefinition", &name);
        assert_eq!(crd_doc["spec"], serde_json::to_value(defined).unwrap()["spec"]);
    }

    // Read-only RBAC on associations, nothing else.
    assert_eq!(rbac_findings(&docs), Vec::<String>::new());

    // The webhook configuration, field by field.
    let hook = &find(&docs, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0];
    check_webhook_contract(hook, "pod-identity-system");
    let ca = std::fs::read(tls.join(certs::CA_FILE)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        b64.decode(hook["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap(),
        ca
    );

    // The Secret carries the generated pair; the Deployment mounts it.
    let secret = find(&docs, "Secret", "pod-identity-webhook-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let data: String = secret["data"]["tls.crt"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        b64.decode(data).unwrap(),
        std::fs::read(tls.join("tls.crt")).unwrap()
    );
    let deploy = find(&docs, "Deployment", "pod-identity-webhook");
    check_deployment(deploy);

    // Service 443 -> the container's https port (8443).
    let svc = find(&docs, "Service", "pod-identity-webhook");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
    assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"]);
    let pdb = find(&docs, "PodDisruptionBudget", "pod-identity-webhook");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // Nothing in the namespace is reachable but the webhook's port, and that from the API
    // server's range only (node-local traffic, the kubelet's probes, is always allowed).
    let deny = find(&docs, "NetworkPolicy", "pod-identity-default-deny");
    assert_eq!(
        deny["spec"],
        serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]})
    );
    let policy = find(&docs, "NetworkPolicy", "pod-identity-webhook");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{"from": [{"ipBlock": {"cidr": "set-API_SERVER_CIDR-in-manifests/settings/settings.env"}}],
            "ports": [{"protocol": "TCP", "port": 8443}]}])
    );
}

fn check_deployment(deploy: &Value) {
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "pod-identity-webhook-tls"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/pod-identity-webhook/tls");
    // Every flag the Deployment passes exists in the binary, and the cert dir is the mount.
    let args = args_of(c);
    assert_eq!(args[0], "serve");
    assert!(
        args.contains(&"--cert-dir=/etc/pod-identity-webhook/tls") && args.contains(&"--source=kubernetes")
    );
    assert_serve_flags(&args);
}

#[test]
fn cert_manager_overlay_injects_the_ca_and_issues_the_mounted_secret() {
    let docs = kustomize(&repo().join("manifests/cert-manager"));
    let hook = find(&docs, "MutatingWebhookConfiguration", "pod-identity-webhook");
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "pod-identity-system/pod-identity-webhook"
    );
    let cert = find(&docs, "Certificate", "pod-identity-webhook");
    assert_eq!(cert["metadata"]["namespace"], "pod-identity-system");
    let deploy = find(&docs, "Deployment", "pod-identity-webhook");
    assert_eq!(
        cert["spec"]["secretName"],
        deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    );
    let names: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, certs::SERVICE_DNS_NAMES);
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "cert-manager creates the Secret"
    );
    check_deployment(deploy);
}

#[test]
fn example_cluster_objects_are_well_formed() {
    let dir = repo().join("examples/cluster");
    let mut kinds = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            if v["kind"] == "PodIdentityAssociation" {
                let obj: crd::PodIdentityAssociation = serde_json::from_value(v.clone()).unwrap();
                kube::core::cel::validate_cel(&obj).unwrap();
                crd::to_association(&obj, None).unwrap();
            }
            if v["kind"] == "Namespace" {
                assert_eq!(v["metadata"]["labels"]["podidentity.io/injection"], "enabled");
            }
            kinds.push(v["kind"].as_str().unwrap().to_owned());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["Namespace", "Pod", "PodIdentityAssociation", "ServiceAccount"]
    );
}

#[test]
fn dockerfile_runs_the_binary_with_existing_flags() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked --bin pod-identity-webhook"));
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/pod-identity-webhook"]"#));
    assert!(text.contains("USER 65532:65532"));
    let cmd = text.lines().find(|l| l.starts_with("CMD ")).unwrap();
    let args: Vec<String> = serde_json::from_str(&cmd[4..]).unwrap();
    assert_eq!(args[0], "serve");
    assert_serve_flags(&args);
}

/// `serve ARGS...`: every `--flag=value` is one the binary has.
fn assert_serve_flags<S: AsRef<str>>(args: &[S]) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    assert_flags("serve", &args);
}

/// The agent and exchange manifests after `certs` wrote the exchange's pair, in a copy.
fn render_agent_with_certs() -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    render_copy_with_certs("agent", &EXCHANGE_DNS)
}

/// The value of `--name=` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} not set in {args:?}"))
}

#[test]
fn agent_and_exchange_manifests_fit_the_binary() {
    let (docs, tls, _tmp) = render_agent_with_certs();
    let ds = find(&docs, "DaemonSet", "pod-identity-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    // It follows the associations and its own node's pods, with read-only RBAC: pods are
    // list and watch only.
    let agent = &pod["containers"][0];
    assert!(
        agent["args"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("--source=kubernetes"))
    );
    assert_eq!(
        agent["env"][0],
        serde_json::json!({"name": "POD_IDENTITY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    let role = find(&docs, "ClusterRole", "pod-identity-agent");
    assert_eq!(
        role["rules"][1],
        serde_json::json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]})
    );
    assert_eq!(
        find(&docs, "ClusterRoleBinding", "pod-identity-agent")["subjects"][0]["name"],
        pod["serviceAccountName"]
    );
    // The agent has a namespace of its own (Pod Security: see pod_security below).
    let agent_ns = ds["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(agent_ns, "pod-identity-agent");
    find(&docs, "Namespace", agent_ns);
    find(
        &docs,
        "ServiceAccount",
        pod["serviceAccountName"].as_str().unwrap(),
    );
    // A one-shot step with NET_ADMIN puts the address on the node; the agent never holds it.
    let init = &pod["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
    );
    assert!(init["command"][2].as_str().unwrap().contains("169.254.170.23/32"));
    assert_eq!(
        init["image"], pod["containers"][0]["image"],
        "the same image, pinned once"
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("iproute2"), "the image carries `ip`");
    let agent = &pod["containers"][0];
    assert_eq!(
        agent["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    );
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    let agent_args = args_of(agent);
    assert_flags("agent", &agent_args);
    assert!(agent_args.contains(&"--listen=169.254.170.23:80"));
    // The admin port on the node's loopback only: the probes name it, and no port is declared
    // (on the host network a declared port is a host port).
    let admin = flag(&agent_args, "--admin-listen");
    assert_eq!(admin, "127.0.0.1:2704");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(
            format!("{}:{}", get["host"].as_str().unwrap(), get["port"]),
            admin,
            "{probe}"
        );
    }
    assert!(agent.get("ports").is_none());

    let deploy = find(&docs, "Deployment", "pod-identity-exchange");
    let exchange_pod = &deploy["spec"]["template"]["spec"];
    let c = &exchange_pod["containers"][0];
    let args = args_of(c);
    assert_flags("exchange", &args);
    // The exchange lets in exactly the agents: their projected token's audience and their
    // service account.
    let projected = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .expect("the agent's projected token");
    assert_eq!(flag(&args, "--caller-audience"), projected["audience"]);
    assert_eq!(
        flag(&args, "--agent-service-account"),
        format!(
            "system:serviceaccount:{agent_ns}:{}",
            pod["serviceAccountName"].as_str().unwrap()
        )
    );
    let token_path = Path::new(flag(&agent_args, "--auth-token-file"));
    volume_at(pod, token_path.parent().unwrap().to_str().unwrap());
    // The IAM key pair as files from the Secret, never as environment variables.
    let key_dir = Path::new(flag(&args, "--access-key-file")).parent().unwrap();
    assert_eq!(
        Path::new(flag(&args, "--secret-key-file")).parent().unwrap(),
        key_dir
    );
    assert_eq!(
        volume_at(exchange_pod, key_dir.to_str().unwrap())["secret"]["secretName"],
        "pod-identity-iam"
    );
    for d in &docs {
        let text = serde_json::to_string(d).unwrap();
        assert!(
            !text.contains("secretKeyRef")
                && !text.contains("secretRef")
                && !text.contains("HUAWEICLOUD_SDK"),
            "a secret reaches an environment variable: {}",
            d["metadata"]["name"]
        );
    }
    // A disruption budget keeps one exchange up.
    let pdb = find(&docs, "PodDisruptionBudget", "pod-identity-exchange");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    // The exchange's required settings come from the ConfigMap, under the env names the flags read.
    let help = help("exchange");
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("pod-identity-cloud")
        })
        .expect("config map");
    for key in cm["data"].as_object().unwrap().keys() {
        assert!(
            help.contains(&format!("env: {key}=")),
            "{key} is not read by exchange"
        );
    }
    let role = find(&docs, "ClusterRole", "pod-identity-exchange");
    assert_eq!(
        role["rules"][0],
        serde_json::json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]})
    );
    // It reads the associations and writes none: the association API writes with its callers'
    // tokens, so it needs no write, no pass and no SubjectAccessReview of its own.
    assert_eq!(
        role["rules"][1],
        serde_json::json!({"apiGroups": ["iam.podidentity.io", "podidentity.io"], "resources": ["podidentityassociations"], "verbs": ["get", "list", "watch"]})
    );
    assert_eq!(role["rules"].as_array().unwrap().len(), 2, "{}", role["rules"]);

    // Pod tokens travel from the agents to the exchange over TLS: the exchange serves the
    // Secret's pair on the port the Service targets, and its probes speak HTTPS.
    let cert_dir = flag(&args, "--cert-dir");
    let port: u16 = flag(&args, "--listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c["ports"][0]["containerPort"], port);
    assert_eq!(c["ports"][0]["name"], "https");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "https", "{probe}");
    }
    let secret_name = volume_at(exchange_pod, cert_dir)["secret"]["secretName"]
        .as_str()
        .unwrap();
    let secret = find(&docs, "Secret", secret_name);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // kustomize folds long base64 values over lines.
    let b64 = |v: &Value| {
        let text: String = v.as_str().unwrap().split_whitespace().collect();
        base64::engine::general_purpose::STANDARD.decode(text).unwrap()
    };
    let tls_crt = b64(&secret["data"][certs::CERT_FILE]);
    assert_eq!(tls_crt, std::fs::read(tls.join(certs::CERT_FILE)).unwrap());
    assert_eq!(
        b64(&secret["data"][certs::KEY_FILE]),
        std::fs::read(tls.join(certs::KEY_FILE)).unwrap()
    );
    let svc = find(&docs, "Service", "pod-identity-exchange");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
    // Only the nodes (where the agents' connections come from) reach that port.
    let policy = find(&docs, "NetworkPolicy", "pod-identity-exchange");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": port}])
    );
    assert!(policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"].is_string());

    // The agent calls that Service over HTTPS and trusts the CA from the ConfigMap it mounts
    // (the certificate only, never the key) ...
    let endpoint = flag(&agent_args, "--cce-endpoint");
    let host = endpoint
        .strip_prefix("https://")
        .expect("the agent calls the exchange over https");
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(host, format!("pod-identity-exchange.{ns}.svc"));
    let ca_file = Path::new(flag(&agent_args, "--ca-file"));
    let ca_volume = volume_at(pod, ca_file.parent().unwrap().to_str().unwrap());
    let ca_map = find(
        &docs,
        "ConfigMap",
        ca_volume["configMap"]["name"].as_str().unwrap(),
    );
    let ca_name = ca_file.file_name().unwrap().to_str().unwrap();
    let ca_pem = ca_map["data"][ca_name].as_str().unwrap();
    assert_eq!(ca_pem, std::fs::read_to_string(tls.join("ca.crt")).unwrap());
    assert_eq!(ca_map["data"].as_object().unwrap().len(), 1);

    // ... and that CA vouches for the exchange's certificate under the endpoint's name.
    verify_server_cert(
        ca_pem.as_bytes(),
        &tls_crt,
        &[host.to_owned(), format!("{host}.cluster.local")],
    )
    .unwrap();
    assert!(verify_server_cert(ca_pem.as_bytes(), &tls_crt, &["elsewhere.example".into()]).is_err());
}

/// Where the agent departs from `restricted`, each for a reason docs/security.md gives: the host network
/// (pods reach it on their node), NET_ADMIN for the one-shot address set-up, uid 0 for the
/// capabilities to take effect, and probes of the admin port on the node's loopback.
const AGENT_BEYOND_RESTRICTED: [&str; 8] = [
    "Host Namespaces: spec.hostNetwork",
    "Capabilities: initContainers[link-local].securityContext.capabilities.add NET_ADMIN",
    "Running as Non-root: initContainers[link-local].securityContext.runAsNonRoot",
    "Running as Non-root user: initContainers[link-local].securityContext.runAsUser",
    "Running as Non-root: containers[agent].securityContext.runAsNonRoot",
    "Running as Non-root user: containers[agent].securityContext.runAsUser",
    "Host Probes / Lifecycle Hooks: containers[agent].readinessProbe.httpGet.host",
    "Host Probes / Lifecycle Hooks: containers[agent].livenessProbe.httpGet.host",
];

#[test]
fn every_pod_template_meets_its_namespaces_pod_security_level() {
    let renders = every_overlay();
    let findings = pod_security_findings(&renders);
    assert!(
        findings.is_empty(),
        "Pod Security would reject:\n{}",
        findings.join("\n")
    );

    // Everything but the agent meets restricted, in a namespace that enforces it ...
    let mut agents = Vec::new();
    for (overlay, docs) in &renders {
        assert!(!pod_templates(docs).is_empty(), "{overlay} renders workloads");
        for (name, ns, template) in pod_templates(docs) {
            if name == "DaemonSet/pod-identity-agent" {
                agents.push((overlay, docs, ns, template));
                continue;
            }
            assert_eq!(ns, "pod-identity-system", "{name}");
            assert_eq!(
                violations(template, Level::Restricted),
                Vec::<String>::new(),
                "{name}"
            );
            // Seccomp and no privilege escalation are set, not merely allowed.
            assert_eq!(
                template["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
        }
    }
    let overlays: Vec<&str> = agents.iter().map(|(overlay, ..)| **overlay).collect();
    assert_eq!(overlays, ["manifests/agent", "manifests/eks/agent"]);
    for (overlay, docs, ns, template) in agents {
        let namespace = docs
            .iter()
            .find(|d| d["kind"] == "Namespace" && d["metadata"]["name"] == ns.as_str())
            .unwrap();
        let labels = namespace["metadata"]["labels"].as_object().unwrap();
        assert_eq!(
            labels["pod-security.kubernetes.io/enforce"], "privileged",
            "{overlay}"
        );
        // ... and the agent departs from restricted exactly where it must, which baseline
        // would reject too (so its namespace needs privileged, not less).
        let beyond: std::collections::BTreeSet<String> =
            violations(template, Level::Restricted).into_iter().collect();
        let expected: std::collections::BTreeSet<String> =
            AGENT_BEYOND_RESTRICTED.iter().map(|s| s.to_string()).collect();
        assert_eq!(beyond, expected, "{overlay}");
        assert!(!violations(template, Level::Baseline).is_empty());
        assert_eq!(
            template["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{overlay}"
        );
        for c in containers_of(template) {
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"], false,
                "{overlay}: {}",
                c["name"]
            );
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"], true,
                "{overlay}: {}",
                c["name"]
            );
        }
    }
}

/// The check fails the build when a manifest breaks its namespace's level: an overlay that
/// loosens the webhook, and the agent put in the restricted namespace.
#[test]
fn a_template_that_breaks_its_namespaces_level_is_caught() {
    let (_, _, tmp) = render_with_certs();
    let loose = tmp.path().join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::write(
        loose.join("kustomization.yaml"),
        r#"resources:
- ../manifests
patches:
- target: {kind: Deployment, name: pod-identity-webhook}
  patch: |-
    - op: replace
      path: /spec/template/spec/containers/0/securityContext/allowPrivilegeEscalation
      value: true
"#,
    )
    .unwrap();
    let findings = pod_security_findings(&[("loose", kustomize(&loose))]);
    assert_eq!(
        findings,
        [
            "loose Deployment/pod-identity-webhook in pod-identity-system (Restricted): Privilege Escalation: containers[webhook].securityContext.allowPrivilegeEscalation"
        ]
    );

    let (root, _, _t) = render_with_certs();
    let (mut agent, _, _t2) = render_agent_with_certs();
    for d in &mut agent {
        if d["kind"] == "DaemonSet" {
            d["metadata"]["namespace"] = "pod-identity-system".into();
        }
    }
    let findings = pod_security_findings(&[("manifests", root), ("manifests/agent", agent)]);
    assert!(
        findings.iter().any(|f| f
            .contains("DaemonSet/pod-identity-agent in pod-identity-system (Restricted): Host Namespaces")),
        "{findings:?}"
    );
}

/// Skipping `certs` fails the render with a message that names the step.
#[test]
fn a_skipped_certs_step_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("manifests");
    copy_dir(&repo().join("manifests"), &m);
    for (overlay, step) in [
        ("", "RUN-pod-identity-webhook-certs--out-manifests-tls-FIRST"),
        (
            "agent",
            "RUN-pod-identity-webhook-certs--out-manifests-agent-tls-FIRST",
        ),
        (
            "eks",
            "RUN-pod-identity-webhook-certs--out-manifests-eks-tls-FIRST",
        ),
        // Built on manifests/agent: the exchange's certificate is the one step.
        (
            "eks/agent",
            "RUN-pod-identity-webhook-certs--out-manifests-agent-tls-FIRST",
        ),
    ] {
        let dir = m.join(overlay);
        let _ = std::fs::remove_file(dir.join("tls").join(certs::CA_FILE));
        let err = try_kustomize(&dir).expect_err("renders without certificates");
        assert!(err.contains(step), "{err}");
    }
}

/// The settings file reaches every overlay: one image for every container, and the ranges of
/// both NetworkPolicies.
#[test]
fn settings_reach_every_overlay() {
    let (_, _, tmp) = render_with_certs();
    let m = tmp.path().join("manifests");
    let image = "registry.example/team/pod-identity-webhook@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    std::fs::write(
        m.join("settings/settings.env"),
        format!("IMAGE={image}\nAPI_SERVER_CIDR=192.0.2.10/32\nNODE_CIDR=198.51.100.0/24\n"),
    )
    .unwrap();
    for dir in ["agent/tls", "eks/tls"] {
        let out = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(m.join(dir))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    for overlay in [
        "",
        "cert-manager",
        "agent",
        "eks",
        "eks/cert-manager",
        "eks/agent",
    ] {
        let docs = kustomize(&m.join(overlay));
        let images: Vec<&Value> = pod_templates(&docs)
            .into_iter()
            .flat_map(|(_, _, t)| containers_of(t))
            .map(|c| &c["image"])
            .collect();
        assert!(!images.is_empty());
        assert!(images.iter().all(|i| *i == image), "{overlay}: {images:?}");
        assert!(
            docs.iter().all(|d| d["kind"] != "ConfigMap"
                || (d["metadata"]["name"] != "pod-identity-settings"
                    && d["metadata"]["name"] != "pod-identity-eks")),
            "{overlay}: a build-time settings ConfigMap is applied"
        );
        for d in docs
            .iter()
            .filter(|d| d["kind"] == "NetworkPolicy" && d["spec"]["ingress"].is_array())
        {
            let cidr = &d["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"];
            let want = if d["metadata"]["name"] == "pod-identity-webhook" {
                "192.0.2.10/32"
            } else {
                "198.51.100.0/24"
            };
            assert_eq!(cidr, want, "{overlay}");
        }
    }
}

/// The EKS overlays deploy EKS mode, held to the checks the other overlays pass: the webhook
/// contract and its caBundle, least-privilege RBAC, flags the binary has (Pod Security:
/// `every_pod_template_meets_its_namespaces_pod_security_level`). The settings of `eks.env`
/// reach the flags; the agents call the exchange's EKS Auth over TLS with their token and the
/// CA that verifies it; the exchange reads its AWS credentials from the `pod-identity-aws`
/// Secret as a file; nothing of the CCE path is left.
#[test]
fn eks_overlays_deploy_eks_mode_with_flags_the_binary_has() {
    let (renders, m, _tmp) = render_eks_with_certs(Some("AWS_REGION=eu-central-1\nCLUSTER_NAME=edge-7\n"));
    for (overlay, docs) in &renders {
        assert_eq!(rbac_findings(docs), Vec::<String>::new(), "{overlay}");
        for (name, _, template) in pod_templates(docs) {
            for c in containers_of(template) {
                if let Some(command) = c["args"][0].as_str() {
                    assert_flags(command, &args_of(c));
                }
                assert!(c["envFrom"].is_null(), "{overlay} {name}: envFrom");
            }
        }
        let text = serde_json::to_string(docs).unwrap();
        for cce in [
            "pod-identity-cloud",
            "pod-identity-iam",
            "--cce-endpoint",
            "--access-key-file",
            "POD_IDENTITY_PROJECT_ID",
            "--provider=cce",
            "secretKeyRef",
        ] {
            assert!(!text.contains(cce), "{overlay} renders {cce}");
        }
    }
    let [(_, webhook), (_, cert_manager), (_, agent_docs)] = <[_; 3]>::try_from(renders).unwrap();

    // The webhook injects the EKS profile and the region, with the CA of the pair it serves.
    for docs in [&webhook, &cert_manager] {
        let deploy = find(docs, "Deployment", "pod-identity-webhook");
        check_deployment(deploy);
        let args = args_of(&deploy["spec"]["template"]["spec"]["containers"][0]);
        assert_eq!(flag(&args, "--provider"), "eks");
        assert_eq!(flag(&args, "--aws-region"), "eu-central-1");
        let hook = &find(docs, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0];
        check_webhook_contract(hook, "pod-identity-system");
    }
    let hook = &find(&webhook, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0];
    let b64 = |v: &Value| {
        let text: String = v.as_str().unwrap().split_whitespace().collect();
        base64::engine::general_purpose::STANDARD.decode(text).unwrap()
    };
    let ca = std::fs::read(m.join("eks/tls").join(certs::CA_FILE)).unwrap();
    assert_eq!(b64(&hook["clientConfig"]["caBundle"]), ca);
    let secret = find(&webhook, "Secret", "pod-identity-webhook-tls");
    let names: Vec<String> = certs::SERVICE_DNS_NAMES.iter().map(|s| s.to_string()).collect();
    verify_server_cert(&ca, &b64(&secret["data"]["tls.crt"]), &names).unwrap();
    assert_eq!(
        find(
            &cert_manager,
            "MutatingWebhookConfiguration",
            "pod-identity-webhook"
        )["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "pod-identity-system/pod-identity-webhook"
    );

    // The agent: EKS Auth at the exchange's Service, for this cluster, with its token.
    let pod = &find(&agent_docs, "DaemonSet", "pod-identity-agent")["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let agent_args = args_of(agent);
    for (name, want) in [
        ("--provider", "eks"),
        ("--backend", "eks"),
        ("--cluster-name", "edge-7"),
        ("--region", "eu-central-1"),
    ] {
        assert_eq!(flag(&agent_args, name), want, "{agent_args:?}");
    }
    assert_eq!(
        agent["env"],
        serde_json::json!([{"name": "POD_IDENTITY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    let svc = find(&agent_docs, "Service", "pod-identity-exchange");
    let host = format!(
        "pod-identity-exchange.{}.svc",
        svc["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(flag(&agent_args, "--eks-endpoint"), format!("https://{host}"));
    let token = Path::new(flag(&agent_args, "--auth-token-file"));
    let projected = &volume_at(pod, token.parent().unwrap().to_str().unwrap())["projected"]["sources"][0]["serviceAccountToken"];
    let ca_file = Path::new(flag(&agent_args, "--ca-file"));
    let ca_map = find(
        &agent_docs,
        "ConfigMap",
        volume_at(pod, ca_file.parent().unwrap().to_str().unwrap())["configMap"]["name"]
            .as_str()
            .unwrap(),
    );
    let ca_pem = ca_map["data"][ca_file.file_name().unwrap().to_str().unwrap()]
        .as_str()
        .unwrap();
    let exchange_tls = find(&agent_docs, "Secret", "pod-identity-exchange-tls");
    verify_server_cert(
        ca_pem.as_bytes(),
        &b64(&exchange_tls["data"][certs::CERT_FILE]),
        &[host.clone(), format!("{host}.cluster.local")],
    )
    .unwrap();

    // The exchange: EKS Auth for this cluster, letting in the agents' token only; its AWS
    // credentials a shared credentials file from the Secret, readable by its group only.
    let exchange_pod = &find(&agent_docs, "Deployment", "pod-identity-exchange")["spec"]["template"]["spec"];
    let exchange = &exchange_pod["containers"][0];
    let args = args_of(exchange);
    assert_eq!(flag(&args, "--cluster-name"), "edge-7");
    assert_eq!(flag(&args, "--region"), "eu-central-1");
    assert_eq!(flag(&args, "--caller-audience"), projected["audience"]);
    assert_eq!(
        exchange["env"],
        serde_json::json!([{"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/etc/pod-identity/aws/credentials"}])
    );
    let file = Path::new("/etc/pod-identity/aws/credentials");
    let volume = volume_at(exchange_pod, file.parent().unwrap().to_str().unwrap());
    assert_eq!(
        volume["secret"],
        serde_json::json!({"secretName": "pod-identity-aws", "defaultMode": 0o440})
    );
    assert_eq!(exchange_pod["securityContext"]["fsGroup"], 65532);
}

/// EKS mode changes the objects of the overlays it builds on where it finds the values it
/// replaces: a change to those that moves one fails the build, naming the place, rather than
/// patching the wrong line.
#[test]
fn a_moved_flag_fails_the_eks_build() {
    let (_, m, _tmp) = render_eks_with_certs(None);
    let file = m.join("agent/agent.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(
            "        - --provider=cce\n",
            "        - --log-level=info\n        - --provider=cce\n",
            1,
        ),
    )
    .unwrap();
    kustomize(&m.join("agent"));
    let err = try_kustomize(&m.join("eks/agent")).unwrap_err();
    assert!(
        err.contains("testing value /spec/template/spec/containers/0/args/4 failed"),
        "{err}"
    );
}
