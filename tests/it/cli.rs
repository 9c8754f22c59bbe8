//! The binary's subcommands, run as a user would.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pod-identity-webhook");

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
        err.contains("pi-demo/app: injected association 81f143f5-f469-4fb6-b17c-8f52af73184c (demo-agency)"),
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

#[test]
fn mutate_explains_bad_input() {
    let (ok, _, err) = run(
        &["mutate", "--associations", "examples/associations.yaml", "-"],
        Some(b"kind: ConfigMap\n"),
    );
    assert!(!ok);
    assert!(err.contains("no Pod found in the input"), "{err}");
    let (ok, _, err) = run(
        &["mutate", "--associations", "examples/associations.yaml", "-"],
        Some(b"a: [b\n"),
    );
    assert!(!ok && err.contains("not YAML or JSON"), "{err}");
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
