//! The README as a new user reads it: its deploy commands run, as written, on a fresh copy of
//! the repository (rendering only: `kubectl apply -k` renders with `kubectl kustomize`, the
//! image step runs against a `docker` that records instead of building), and it points at
//! nothing outside the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::manifests::try_kustomize;

use crate::common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The `sh` code blocks of the README section headed `heading`.
pub fn sh_blocks(text: &str, heading: &str) -> Vec<String> {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading}"));
    let rest = &text[start + heading.len() + 2..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_owned())
        .collect()
}

/// The files a fresh clone has: tracked ones, and new ones not ignored (so the test checks the
/// working tree before it is committed), symbolic links as links.
fn fresh_copy(to: &Path) {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = repo().join(name);
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted, not yet committed
        };
        let target = to.join(name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(&from, &target).unwrap();
        }
    }
}

/// `docker`, `cargo` and `kubectl` for the README's commands: docker records (and `inspect`
/// answers a digest), cargo runs the built binary, kubectl renders `apply -k` and records
/// `create`; any other step fails, so a README that grows a step this test does not know
/// fails here.
fn shims(dir: &Path, log: &Path) {
    let kubectl = crate::common::python::kubectl();
    let kubectl = if kubectl.is_absolute() {
        kubectl
    } else {
        let out = Command::new("sh")
            .args(["-c", "command -v kubectl"])
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    };
    let log = log.display();
    let scripts = [
        (
            "docker",
            format!(
                r#"#!/bin/sh
echo "docker $*" >> {log}
case "$1" in
  build|push) exit 0 ;;
  inspect) for ref; do :; done; echo "${{ref%:*}}@sha256:5f0c0ffee5f0c0ffee5f0c0ffee5f0c0ffee5f0c0ffee5f0c0ffee5f0c0ffee5" ;;
  *) echo "docker $1: not a step this test knows" >&2; exit 1 ;;
esac
"#
            ),
        ),
        (
            "cargo",
            format!(
                r#"#!/bin/sh
[ "$1" = run ] || {{ echo "cargo $1: not a step this test knows" >&2; exit 1; }}
while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
[ $# -gt 0 ] || {{ echo "cargo run without --" >&2; exit 1; }}
shift
exec {BIN} "$@"
"#
            ),
        ),
        (
            "kubectl",
            format!(
                r#"#!/bin/sh
echo "kubectl $*" >> {log}
for a; do
  case "$a" in
    apply) while [ $# -gt 0 ] && [ "$1" != -k ]; do shift; done
           [ $# -ge 2 ] || {{ echo "kubectl apply without -k: not a rendering step" >&2; exit 1; }}
           n=$(ls "$RENDERED" | wc -l)
           exec {kubectl} kustomize "$2" -o "$RENDERED/$n-$(echo "$2" | tr / _).yaml" ;;
    create) exit 0 ;;
  esac
done
echo "kubectl $*: not a rendering step" >&2; exit 1
"#,
                kubectl = kubectl.display()
            ),
        ),
    ];
    for (name, text) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn is_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, bits)| {
        let max = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        bits.parse::<u8>().is_ok_and(|b| b <= max)
    })
}

/// Runs `script` as bash on a fresh copy of the repository with the shims first on the
/// `PATH` and `env` set: what each `kubectl apply -k` rendered (by file name, in order), and
/// the shims' log. The copy is made before `before` runs on it.
fn run_on_a_fresh_copy(
    script: &str,
    env: &[(&str, &str)],
    before: impl FnOnce(&Path),
) -> (Vec<(String, Vec<Value>)>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    fresh_copy(&clone);
    before(&clone);
    let (bin, rendered, log) = (
        tmp.path().join("bin"),
        tmp.path().join("rendered"),
        tmp.path().join("log"),
    );
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&rendered).unwrap();
    shims(&bin, &log);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(&clone)
        .env("PATH", path)
        .env("RENDERED", &rendered)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "the README's deploy commands failed:\n{}\n{}\nlog:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut renders: Vec<(String, Vec<Value>)> = std::fs::read_dir(&rendered)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                documents(&p),
            )
        })
        .collect();
    renders.sort_by(|a, b| a.0.cmp(&b.0));
    (renders, log)
}

/// Every container runs the image the README pushed, by digest; every NetworkPolicy range is
/// a range.
fn check_images_and_ranges(renders: &[(String, Vec<Value>)], log: &str) {
    let pushed = log
        .lines()
        .find_map(|l| l.strip_prefix("docker push "))
        .expect("the image is pushed");
    let (repository, _tag) = pushed.rsplit_once(':').unwrap();
    for (name, docs) in renders {
        for d in docs {
            for list in ["initContainers", "containers"] {
                for c in d["spec"]["template"]["spec"][list]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let image = c["image"].as_str().unwrap();
                    assert!(
                        image.starts_with(&format!("{repository}@sha256:")),
                        "{name}: {image} is not the pushed image by digest"
                    );
                }
            }
            if d["kind"] == "NetworkPolicy" {
                for rule in d["spec"]["ingress"].as_array().into_iter().flatten() {
                    let cidr = rule["from"][0]["ipBlock"]["cidr"].as_str().unwrap();
                    assert!(is_cidr(cidr), "{name}: {cidr}");
                }
            }
        }
    }
}

/// The container of the workload `kind/name` in `docs`.
fn container<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let d = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"));
    &d["spec"]["template"]["spec"]["containers"][0]
}

/// The values of the flags `--name=` in the container's args.
fn flag_values<'a>(container: &'a Value, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}=");
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn the_deploy_commands_work_on_a_fresh_copy_as_written() {
    let script = sh_blocks(&readme(), "## Deploy to a cluster").join("\n");
    assert!(script.contains("kubectl apply -k manifests/"), "{script}");
    let (renders, log) = run_on_a_fresh_copy(&script, &[], |clone| {
        // Before the certificates are written, the error names the step.
        let early = try_kustomize(&clone.join("manifests")).unwrap_err();
        assert!(
            early.contains("RUN-pod-identity-webhook-certs--out-manifests-tls-FIRST"),
            "{early}"
        );
    });

    // Every overlay was applied, and each holds the image by digest and valid ranges.
    let names: Vec<&str> = renders.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "0-manifests_.yaml",
            "1-manifests_cert-manager.yaml",
            "2-manifests_agent.yaml"
        ]
    );
    check_images_and_ranges(&renders, &log);
    // The Secret the README creates is the one the exchange mounts, with the keys it reads.
    let create = log
        .lines()
        .find(|l| l.contains(" create secret generic pod-identity-iam"))
        .expect("the README creates the IAM Secret");
    assert!(create.contains("-n pod-identity-system"), "{create}");
    let exchange = container(&renders[2].1, "Deployment", "pod-identity-exchange");
    for flag in ["--access-key-file", "--secret-key-file"] {
        let file = flag_values(exchange, flag)[0];
        let key = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(create.contains(&format!("--from-file={key}=")), "{key}: {create}");
    }
}

/// The kustomize deploy of EKS mode (the section's block that applies overlays), as written,
/// after the image and settings step of "Deploy to a cluster": the EKS overlays are applied
/// with the region and cluster name given, and the Secret it creates is the one the exchange
/// reads its AWS credentials from.
#[test]
fn the_eks_deploy_commands_work_on_a_fresh_copy_as_written() {
    let text = readme();
    let settings = sh_blocks(&text, "## Deploy to a cluster")
        .into_iter()
        .find(|b| b.contains("> manifests/settings/settings.env"))
        .expect("the settings step");
    let eks: Vec<String> = sh_blocks(&text, "## EKS Pod Identity on any cluster")
        .into_iter()
        .filter(|b| b.contains("kubectl apply -k"))
        .collect();
    assert_eq!(eks.len(), 1, "{eks:?}");
    let script = format!("{settings}\n{}", eks[0]);
    let env = [("AWS_REGION", "eu-west-1"), ("CLUSTER_NAME", "edge-1")];
    let (renders, log) = run_on_a_fresh_copy(&script, &env, |_| {});

    let names: Vec<&str> = renders.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0-manifests_eks.yaml", "1-manifests_eks_agent.yaml"]);
    check_images_and_ranges(&renders, &log);
    let webhook = container(&renders[0].1, "Deployment", "pod-identity-webhook");
    assert_eq!(flag_values(webhook, "--provider"), ["eks"]);
    assert_eq!(flag_values(webhook, "--aws-region"), ["eu-west-1"]);
    let agent = container(&renders[1].1, "DaemonSet", "pod-identity-agent");
    let exchange = container(&renders[1].1, "Deployment", "pod-identity-exchange");
    for c in [agent, exchange] {
        assert_eq!(flag_values(c, "--cluster-name"), ["edge-1"]);
        assert_eq!(flag_values(c, "--region"), ["eu-west-1"]);
    }
    // The Secret: in the exchange's namespace, named as its volume, the key its file.
    let create = log
        .lines()
        .find(|l| l.contains(" create secret generic "))
        .expect("the README creates the AWS credentials Secret");
    assert!(create.contains("-n pod-identity-system"), "{create}");
    let file = Path::new(exchange["env"][0]["value"].as_str().unwrap());
    assert_eq!(exchange["env"][0]["name"], "AWS_SHARED_CREDENTIALS_FILE");
    let pod = &renders[1]
        .1
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "pod-identity-exchange")
        .unwrap()["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == file.parent().unwrap())
        .expect("the credentials file's directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret = volume["secret"]["secretName"].as_str().unwrap();
    let key = file.file_name().unwrap().to_str().unwrap();
    assert!(
        create.contains(&format!("create secret generic {secret} --from-file={key}=")),
        "{create}"
    );
}

#[test]
fn the_readme_stands_on_its_own() {
    let text = readme();
    assert!(!text.contains("../shared"), "points outside the repository");
    assert!(
        !text.to_lowercase().contains("seed 0"),
        "names an API page by a number"
    );
    for heading in ["## Prerequisites", "## Deploy to a cluster"] {
        assert!(text.contains(&format!("\n{heading}\n")), "{heading}");
    }
    // Every relative link resolves in the repository.
    for link in text.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(
            repo().join(path).exists(),
            "README links to {target}, which is not there"
        );
    }
    // The design notes and the API pages, named by what they are.
    for doc in [
        "docs/design.md",
        "docs/api/cce-assume-agency-for-pod-identity.md",
        "docs/api/iam-temporary-credentials-through-an-agency.md",
    ] {
        assert!(text.contains(doc), "README names {doc}");
        assert!(repo().join(doc).exists());
    }
}

/// Every relative link of every page under `docs/` resolves, from the page's own folder: a
/// moved or renamed page breaks this test, not a reader's click.
#[test]
fn every_docs_link_resolves() {
    fn pages(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pages(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    pages(&repo().join("docs"), &mut all);
    assert!(all.len() >= 5, "{all:?}");
    let mut broken = Vec::new();
    for page in &all {
        let text = std::fs::read_to_string(page).unwrap();
        for link in text.split("](").skip(1) {
            let Some(end) = link.find(')') else { continue };
            let target = &link[..end];
            if target.starts_with("http") || target.starts_with('#') || target.contains(' ') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            if !page.parent().unwrap().join(path).exists() {
                broken.push(format!(
                    "{}: {target}",
                    page.strip_prefix(repo()).unwrap().display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
