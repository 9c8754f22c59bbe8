//! `explain` through the binary, on the example pods and cluster objects: each reason, its
//! next step and its exit status (live pods: `webhook::real::explain`).

use std::path::Path;
use std::process::Command;

use crate::common::BIN;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// Runs `explain` on `input` (a file) with `extra` flags: the exit status and the output.
fn explain(input: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("explain")
        .args(["--associations", &repo("examples/associations.yaml")])
        .args(extra)
        .arg(input)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

/// A file holding `documents` joined as YAML documents.
fn input(dir: &Path, name: &str, documents: &[&str]) -> String {
    let path = dir.join(name);
    let text: Vec<String> = documents
        .iter()
        .map(|d| match d.starts_with("examples/") {
            true => std::fs::read_to_string(repo(d)).unwrap(),
            false => d.to_string(),
        })
        .collect();
    std::fs::write(&path, text.join("\n---\n")).unwrap();
    path.display().to_string()
}

const OPTED_IN: &str = "--namespace-label=podidentity.io/injection=enabled";

#[test]
fn a_pod_that_would_be_injected_says_so_with_its_agency() {
    let (code, out) = explain(&repo("examples/pods/app.yaml"), &[OPTED_IN]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok   namespace pi-demo is selected"), "{out}");
    assert!(out.contains("grants demo-agency"), "{out}");
    assert!(out.contains("would be injected when created"), "{out}");
    // The namespace's labels read from a Namespace in the input, as the example cluster has it.
    let dir = tempfile::tempdir().unwrap();
    let both = input(
        dir.path(),
        "both.yaml",
        &["examples/cluster/namespace.yaml", "examples/pods/app.yaml"],
    );
    let (code, out) = explain(&both, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok   namespace pi-demo is selected"), "{out}");
}

#[test]
fn each_reason_for_no_credentials_has_its_next_step_and_status() {
    // The namespace not opted in.
    let (code, out) = explain(
        &repo("examples/pods/app.yaml"),
        &["--namespace-label=podidentity.io/injection=disabled"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("kubectl label namespace pi-demo podidentity.io/injection=enabled"),
        "{out}"
    );
    // An excluded namespace, whatever its label.
    let (code, out) = explain(
        &repo("examples/pods/app.yaml"),
        &[OPTED_IN, "--namespace=kube-system"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("namespace kube-system is not selected"), "{out}");
    // The opt-out label.
    let (code, out) = explain(&repo("examples/pods/opted-out.yaml"), &[OPTED_IN]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("remove the label podidentity.io/inject=false"),
        "{out}"
    );
    // No association for the service account.
    let dir = tempfile::tempdir().unwrap();
    let default_sa = input(
        dir.path(),
        "default.yaml",
        &[
            "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: pi-demo}, spec: {containers: [{name: c, image: i}]}}",
        ],
    );
    let (code, out) = explain(&default_sa, &[OPTED_IN]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NO   no association for service account pi-demo/default"),
        "{out}"
    );
    assert!(out.contains("create a PodIdentityAssociation"), "{out}");
    // Every container skipped.
    let all_skipped = input(
        dir.path(),
        "skipped.yaml",
        &[
            "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: pi-demo, annotations: {podidentity.io/skip-containers: c}}, spec: {serviceAccountName: app, containers: [{name: c, image: i}]}}",
        ],
    );
    let (code, out) = explain(&all_skipped, &[OPTED_IN]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the webhook skips the pod"), "{out}");
}

#[test]
fn skipped_containers_live_pods_and_bad_input() {
    let (code, out) = explain(&repo("examples/pods/skip-sidecar.yaml"), &[OPTED_IN]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("containers skipped by podidentity.io/skip-containers: proxy"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    // A pod that exists (it has a uid) without the injection: created before its association.
    let missed = input(
        dir.path(),
        "missed.yaml",
        &[
            "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: pi-demo, uid: u-1}, spec: {serviceAccountName: app, containers: [{name: c, image: i}]}}",
        ],
    );
    let (code, out) = explain(&missed, &[OPTED_IN]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("next: recreate the pod"), "{out}");
    // The same pod injected.
    let injected = input(
        dir.path(),
        "injected.yaml",
        &[
            "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: pi-demo, uid: u-1, annotations: {podidentity.io/association: 81f143f5-f469-4fb6-b17c-8f52af73184c}}, spec: {serviceAccountName: app, containers: [{name: c, image: i}]}}",
        ],
    );
    let (code, out) = explain(&injected, &[OPTED_IN]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the pod carries the injection"), "{out}");
    let no_pod = input(dir.path(), "none.yaml", &["{kind: ConfigMap}"]);
    let (code, out) = explain(&no_pod, &[]);
    assert_eq!(code, 2, "{out}");
}
