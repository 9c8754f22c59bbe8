//! The binary's subcommands, run as a user would.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use serde_json::Value;

use crate::common::BIN;

fn run(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn mutate_prints_the_injected_pod() {
    let (ok, out, err) = run(
        &[
            "mutate",
            "--associations",
            "examples/associations.yaml",
            "examples/pods/app.yaml",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("pi-demo/app: injected association 81f143f5-f469-4fb6-b17c-8f52af73184c (demo-agency) into 1 container(s)"),
        "{err}"
    );
    let pod: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "service.cce.pods"
    );
    let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
    assert_eq!(env[0]["name"], "LOG_LEVEL");
    assert_eq!(env[1]["name"], "HC_CONTAINER_CREDENTIALS_FULL_URI");
}

#[test]
fn mutate_patch_from_stdin_with_an_admission_review_and_eks() {
    let body = fixture("17-");
    let (ok, out, err) = run(
        &[
            "mutate",
            "--associations",
            "examples/associations.yaml",
            "--provider",
            "eks",
            "--patch",
            "-",
        ],
        Some(&body),
    );
    assert!(ok, "{err}");
    let patch: json_patch::Patch = serde_json::from_str(&out).unwrap();
    let mut pod = serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch.0).unwrap();
    assert!(
        serde_json::to_string(&pod)
            .unwrap()
            .contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    );
}

#[test]
fn mutate_leaves_unassociated_and_opted_out_pods_alone() {
    let (ok, out, err) = run(
        &[
            "mutate",
            "--associations",
            "examples/associations.yaml",
            "--namespace",
            "pi-other",
            "examples/pods/app.yaml",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("pi-other/app: no association: unchanged"), "{err}");
    assert!(!out.contains("pod-identity-token"));
    let (ok, _, err) = run(
        &[
            "mutate",
            "--associations",
            "examples/associations.yaml",
            "examples/pods/opted-out.yaml",
        ],
        None,
    );
    assert!(ok && err.contains("opted out"), "{err}");
}

const ASSOCIATIONS: [&str; 3] = ["mutate", "--associations", "examples/associations.yaml"];

/// `mutate` with the example associations on `stdin`, plus `extra` flags.
fn mutate(extra: &[&str], stdin: &str) -> (bool, String, String) {
    let args: Vec<&str> = ASSOCIATIONS.iter().chain(extra).chain(&["-"]).copied().collect();
    run(&args, Some(stdin.as_bytes()))
}

#[test]
fn mutate_explains_bad_input() {
    let (ok, _, err) = mutate(&[], "a: [b\n");
    assert!(!ok && err.contains("<stdin>: not YAML or JSON"), "{err}");
    assert!(err.contains("line 1 column"), "points into the input: {err}");
    let (ok, _, err) = mutate(&[], "");
    assert!(!ok && err.contains("holds no document"), "{err}");
    // A decode error names the document, the pod and the field, in the user's terms.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: pi-demo\nspec:\n  \
               serviceAccountName: app\n  containers:\n  - name: app\n    env:\n    - name: 1\n";
    let (ok, _, err) = mutate(&[], &format!("kind: ConfigMap\n---\n{pod}"));
    assert!(!ok);
    assert!(
        err.contains(
            "<stdin>: document 2 (Pod \"web\"): spec.containers[0].env[0].name: invalid type: integer `1`"
        ),
        "{err}"
    );
    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "namespace": "pi-demo", "object": {"kind": "Pod", "spec": {"volumes": "none"}}}});
    let (ok, _, err) = mutate(&[], &review.to_string());
    assert!(
        !ok && err.contains("document 1: request.object.spec.volumes: invalid type"),
        "{err}"
    );
}

#[test]
fn mutate_passes_other_kinds_through() {
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n";
    let (ok, out, err) = mutate(&[], input);
    assert!(ok, "{err}");
    assert!(
        err.contains("<stdin>: no Pod: 2 document(s) passed through unchanged"),
        "{err}"
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    let want: Vec<Value> = serde_yaml::Deserializer::from_str(input)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs, want);
    let (ok, _, err) = mutate(&["--patch"], input);
    assert!(
        !ok && err.contains("--patch needs exactly one Pod in the input, found 0"),
        "{err}"
    );
}

#[test]
fn mutate_says_when_there_is_nothing_to_inject() {
    // The typo `contaners:` leaves the pod without containers: not "injected".
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\n  namespace: pi-demo\nspec:\n  \
               serviceAccountName: app\n  contaners:\n  - name: app\n    image: x\n";
    let (ok, out, err) = mutate(&[], pod);
    assert!(ok, "{err}");
    assert!(err.contains("pi-demo/app: no containers"), "{err}");
    assert!(
        err.contains("nothing to inject: unchanged") && !err.contains("injected association"),
        "{err}"
    );
    assert!(!out.contains("pod-identity-token"), "{out}");
    // A volume of the user's under the injected name: said, and nothing injected.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: clash\n  namespace: pi-demo\nspec:\n  \
               serviceAccountName: app\n  volumes:\n  - name: cce-pod-identity-token\n    emptyDir: {}\n  \
               containers:\n  - name: app\n    image: x\n";
    let (ok, out, err) = mutate(&[], pod);
    assert!(ok, "{err}");
    assert!(err.contains("pi-demo/app: NOT injected"), "{err}");
    assert!(
        err.contains(
            "warning: container \"app\": volume \"cce-pod-identity-token\" is not the pod identity token"
        ),
        "{err}"
    );
    assert!(!out.contains("HC_CONTAINER"), "{out}");
}

#[test]
fn mutate_reads_the_deprecated_service_account_field_as_the_api_server_does() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: old\n  namespace: pi-demo\nspec:\n  \
               serviceAccountName: \"\"\n  serviceAccount: app\n  containers:\n  - name: app\n    image: x\n";
    let (ok, out, err) = mutate(&[], pod);
    assert!(ok, "{err}");
    assert!(
        err.contains("pi-demo/app: injected association 81f143f5-f469-4fb6-b17c-8f52af73184c (demo-agency) into 1 container(s)"),
        "{err}"
    );
    assert!(out.contains("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE"), "{out}");
}

#[test]
fn flags_the_sdks_or_tools_would_refuse_are_refused() {
    let pod = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pods/app.yaml"),
    )
    .unwrap();
    for (flags, needle) in [
        (
            &["--credentials-uri", "notaurl"][..],
            "--credentials-uri \"notaurl\": not a URL",
        ),
        (
            &["--credentials-uri", "ftp://169.254.170.23/x"],
            "must be an http:// or https:// URL",
        ),
        (
            &[
                "--provider",
                "eks",
                "--credentials-uri",
                "http://10.0.0.1/v1/credentials",
            ],
            "the SDKs refuse a plain-http credentials URI on 10.0.0.1",
        ),
        (
            &["--aws-region", "eu-west-1"],
            "--aws-region is for --provider eks",
        ),
        (
            &["--token-expiration", "172801"],
            "--token-expiration 172801 must be between 600 (10 minutes, the API server's shortest) and 172800 (48 hours)",
        ),
        (
            &["--token-expiration", "599"],
            "--token-expiration 599 must be between 600",
        ),
        (
            &["--provider", "eks", "--aws-region", "eu west"],
            "is not a region name",
        ),
    ] {
        let (ok, _, err) = mutate(flags, &pod);
        assert!(!ok && err.contains(needle), "{flags:?}: {err}");
    }
    for flags in [
        &[
            "--provider",
            "eks",
            "--credentials-uri",
            "http://[fd00:ec2::23]/v1/credentials",
        ][..],
        &[
            "--provider",
            "eks",
            "--credentials-uri",
            "https://creds.example.com/v1/credentials",
        ],
        &["--credentials-uri", "http://10.0.0.1:2703/v1/credentials"],
    ] {
        let (ok, _, err) = mutate(flags, &pod);
        assert!(ok, "{flags:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let (ok, _, err) = run(&["certs", "--out", out_dir, "--dns", "bad name!"], None);
    assert!(!ok && err.contains("\"bad name!\" is not a DNS name"), "{err}");
    let (ok, _, err) = run(&["certs", "--out", out_dir, "--days", "0"], None);
    assert!(
        !ok && err.contains("--days") && err.contains("0 is not in 1.."),
        "{err}"
    );
    assert!(!dir.path().join("tls.key").exists(), "nothing written");
    // Refused before any cluster is looked for: a Lease that would be renewed too late.
    let (ok, _, err) = run(
        &["serve", "--source", "kubernetes", "--report-lease-seconds", "2"],
        None,
    );
    assert!(
        !ok && err.contains("--report-lease-seconds must be at least 3"),
        "{err}"
    );
}

#[test]
fn mutate_injects_the_eks_region() {
    let pod = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pods/app.yaml"),
    )
    .unwrap();
    let (ok, out, err) = mutate(&["--provider", "eks", "--aws-region", "eu-west-1"], &pod);
    assert!(ok, "{err}");
    let pod: Value = serde_yaml::from_str(&out).unwrap();
    let env = pod["spec"]["containers"][0]["env"].to_string();
    for needle in [
        r#"{"name":"AWS_REGION","value":"eu-west-1"}"#,
        r#"{"name":"AWS_DEFAULT_REGION","value":"eu-west-1"}"#,
        r#"{"name":"AWS_STS_REGIONAL_ENDPOINTS","value":"regional"}"#,
    ] {
        assert!(env.contains(needle), "{needle}: {env}");
    }
}

#[test]
fn certs_writes_material_and_prints_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let (ok, out, err) = run(
        &[
            "certs",
            "--out",
            out_dir,
            "--dns",
            "hook.ns.svc",
            "--ip",
            "10.0.0.7",
            "--days",
            "30",
        ],
        None,
    );
    assert!(ok, "{err}");
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(out.trim())
            .unwrap(),
        ca
    );
    assert!(dir.path().join("tls.key").exists());
    let (ok, _, err) = run(&["certs", "--out", out_dir], None);
    assert!(
        ok && err.contains("pod-identity-webhook.pod-identity-system.svc"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_bad_association_file_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.yaml");
    std::fs::write(&f, "- {namespace: x, serviceAccount: y}\n").unwrap();
    let certs = dir.path().join("certs");
    let (ok, _, err) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert-dir",
            certs.to_str().unwrap(),
            "--associations",
            f.to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("associations[0] (x/y): agencyName (or roleArn) is required"),
        "{err}"
    );
}

#[test]
fn serve_generates_certificates_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certs = dir.path().join("certs");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--associations",
            "examples/associations.yaml",
        ])
        .args(["--cert-dir", certs.to_str().unwrap(), "--log-format", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if anything below fails before the graceful stop.
    let child = Reaped::new(child);
    let end = Instant::now() + Duration::from_secs(20);
    while !certs.join("ca.crt").exists() {
        assert!(Instant::now() < end, "certificates not generated");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&[&std::fs::read(certs.join("ca.crt")).unwrap()], Http::H2);
    let base = format!("https://127.0.0.1:{port}");
    rt.block_on(async {
        until_ready(&c, &format!("{base}/readyz"), end).await;
        let r = c
            .post(format!("{base}/mutate?timeout=10s"))
            .body(fixture("01-"))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.into_inner().wait_with_output().unwrap();
    let logs = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{logs}");
    for needle in [
        "generated a CA",
        "associations loaded",
        "SIGTERM received",
        "all connections drained",
    ] {
        assert!(logs.contains(needle), "{needle} missing from logs:\n{logs}");
    }
    // JSON logs: every line parses.
    for line in logs.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[test]
fn fixture_copies_match_the_shared_captures() {
    // The repo carries the fixtures so it tests on its own; when the shared originals sit
    // beside it, the copies must not have drifted.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if !shared.exists() {
        return;
    }
    for (name, bytes) in fixtures() {
        assert_eq!(
            std::fs::read(shared.join("admission").join(&name)).unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn exchange_and_agent_demand_only_the_flags_of_the_path_they_serve() {
    for (args, needle) in [
        (
            &["exchange"][..],
            "set --cluster-name (EKS Auth AssumeRoleForPodIdentity), or --project-id",
        ),
        (
            &["exchange", "--project-id", "p"][..],
            "the CCE assume-agency-for-pod-identity API needs all of --project-id, --cluster-id, --iam-endpoint",
        ),
        (
            &["agent", "--backend", "eks", "--region", "us-west-2"][..],
            "--backend eks needs --cluster-name",
        ),
    ] {
        let (ok, _, err) = run(args, None);
        assert!(!ok, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `--help` speaks of the APIs by their names: no internal label (such as a page number) of
/// the project's notes reaches a user.
#[test]
fn help_names_every_api_by_its_name() {
    let (ok, top, _) = run(&["--help"], None);
    assert!(ok);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 8, "{top}");
    for text in std::iter::once(top.clone()).chain(commands.iter().map(|c| run(&[c, "--help"], None).1)) {
        assert!(!text.to_lowercase().contains("seed"), "{text}");
    }
}
