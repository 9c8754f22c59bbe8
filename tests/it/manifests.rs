//! The kustomize manifests: rendered with `kubectl kustomize` and checked object by object.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use pod_identity_webhook::certs;
use pod_identity_webhook::testing::crd;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pod-identity-webhook");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(crate::common::python::kubectl())
        .args(["kustomize"])
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

/// Renders `manifests/` after `certs --out manifests/tls`, in a copy of the tree.
fn render_with_certs() -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    render_copy_with_certs("manifests", &[])
}

/// Renders a copy of `dir` (under the repository) after `certs --out <copy>/tls <names>`.
fn render_copy_with_certs(dir: &str, names: &[&str]) -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_dir(&repo().join(dir), &m);
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(m.join("tls"))
        .args(names)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (kustomize(&m), m.join("tls"), tmp)
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
            "podidentityassociations.podidentity.io",
        ),
        ("ServiceAccount", "pod-identity-webhook"),
        ("ClusterRole", "pod-identity-webhook"),
        ("ClusterRoleBinding", "pod-identity-webhook"),
        ("Deployment", "pod-identity-webhook"),
        ("PodDisruptionBudget", "pod-identity-webhook"),
        ("Service", "pod-identity-webhook"),
        ("Secret", "pod-identity-webhook-tls"),
        ("MutatingWebhookConfiguration", "pod-identity-webhook"),
    ] {
        find(&docs, kind, name);
    }

    // The CRD is the one the code defines.
    let crd_doc = find(
        &docs,
        "CustomResourceDefinition",
        "podidentityassociations.podidentity.io",
    );
    assert_eq!(
        crd_doc["spec"],
        serde_json::to_value(crd::definition()).unwrap()["spec"]
    );

    // Read-only RBAC on associations, nothing else.
    let role = find(&docs, "ClusterRole", "pod-identity-webhook");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": ["podidentity.io"], "resources": ["podidentityassociations"], "verbs": ["get", "list", "watch"]}])
    );

    // The webhook configuration, field by field.
    let hook = &find(&docs, "MutatingWebhookConfiguration", "pod-identity-webhook")["webhooks"][0];
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
        ns_sel.contains(r#""values":["kube-system","pod-identity-system"]"#),
        "{ns_sel}"
    );
    assert_eq!(
        hook["objectSelector"]["matchExpressions"][0],
        serde_json::json!({"key": "podidentity.io/inject", "operator": "NotIn", "values": ["false"]})
    );
    assert_eq!(
        hook["clientConfig"]["service"],
        serde_json::json!({"name": "pod-identity-webhook", "namespace": "pod-identity-system", "path": "/mutate", "port": 443})
    );
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
    render_copy_with_certs(
        "manifests/agent",
        &[
            "--dns",
            "pod-identity-exchange.pod-identity-system.svc",
            "--dns",
            "pod-identity-exchange.pod-identity-system.svc.cluster.local",
        ],
    )
}

/// The value of `--name=` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} not set in {args:?}"))
}

/// The volume mounted at `dir` in `pod`'s first container.
fn volume_at<'a>(pod: &'a Value, dir: &str) -> &'a Value {
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true);
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}

#[test]
fn agent_and_exchange_manifests_fit_the_binary() {
    let (docs, tls, _tmp) = render_agent_with_certs();
    let ds = find(&docs, "DaemonSet", "pod-identity-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let init = &pod["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN"])
    );
    assert!(init["command"][2].as_str().unwrap().contains("169.254.170.23/32"));
    let agent = &pod["containers"][0];
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_BIND_SERVICE"])
    );
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    let agent_args = args_of(agent);
    assert_flags("agent", &agent_args);
    assert!(agent_args.contains(&"--listen=169.254.170.23:80"));

    let deploy = find(&docs, "Deployment", "pod-identity-exchange");
    let exchange_pod = &deploy["spec"]["template"]["spec"];
    let c = &exchange_pod["containers"][0];
    let args = args_of(c);
    assert_flags("exchange", &args);
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
    assert_eq!(
        role["rules"][1]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );

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
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    crate::common::crypto();
    let verifier = WebPkiServerVerifier::builder(std::sync::Arc::new(crate::common::root_store(&[
        ca_pem.as_bytes()
    ])))
    .build()
    .unwrap();
    let leaf = CertificateDer::from_pem_slice(&tls_crt).unwrap();
    for name in [host.to_owned(), format!("{host}.cluster.local")] {
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.clone()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("elsewhere.example").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
    );
}

fn help(command: &str) -> String {
    String::from_utf8(
        Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

/// `COMMAND ARGS...`: every `--flag=value` is one the subcommand has.
fn assert_flags(command: &str, args: &[&str]) {
    assert_eq!(args[0], command);
    let help = help(command);
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} <")),
            "{flag} is not an {command} flag"
        );
    }
}

/// A container's `args` as strings.
fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}
