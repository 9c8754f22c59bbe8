//! The README and the docs as a new user reads them: the deploy commands of `docs/install.md`
//! run, as written, on a fresh copy of the repository (rendering only: `kubectl apply -k`
//! renders with `kubectl kustomize`, the image step runs against a `docker` that records
//! instead of building); the README's offline examples print what it shows; every command's
//! reference page holds its `--help`; the chart's values table is its `values.yaml`; every
//! link resolves, and nothing points outside the repository.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::deploy::manifests::try_kustomize;

use crate::common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path from the root.
pub fn page(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn readme() -> String {
    page("README.md")
}

/// The page whose blocks deploy: the tests run them as written.
pub const INSTALL: &str = "docs/install.md";

/// The section headed `heading` (that exact line), up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading}"));
    let rest = &text[start + heading.len() + 2..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The code blocks fenced as `lang` in the section headed `heading`.
fn fenced(text: &str, heading: &str, lang: &str) -> Vec<String> {
    section(text, heading)
        .split(&format!("```{lang}\n"))
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_owned())
        .collect()
}

/// The `sh` code blocks of the section headed `heading`.
pub fn sh_blocks(text: &str, heading: &str) -> Vec<String> {
    fenced(text, heading, "sh")
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

/// `docker`, `cargo` and `kubectl` for the deploy commands: docker records (and `inspect`
/// answers a digest), cargo runs the built binary, kubectl renders `apply -k` and records
/// `create`; any other step fails, so a page that grows a step this test does not know
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
        "the deploy commands of {INSTALL} failed:\n{}\n{}\nlog:\n{log}",
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

/// Every container runs the image the page pushed, by digest; every NetworkPolicy range is
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
    let script = sh_blocks(&page(INSTALL), "## Deploy to a cluster").join("\n");
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
    // The Secret the page creates is the one the exchange mounts, with the keys it reads.
    let create = log
        .lines()
        .find(|l| l.contains(" create secret generic pod-identity-iam"))
        .expect("the page creates the IAM Secret");
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
    let text = page(INSTALL);
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
        .expect("the page creates the AWS credentials Secret");
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

/// The anchors GitHub gives the headings of a Markdown page (code blocks are not headings):
/// lower case, punctuation dropped, spaces as `-`, a repeated one numbered.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let title = line.trim_start_matches('#');
        if in_code || title.len() == line.len() || !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// The relative links of the Markdown page `path` that do not resolve from its folder: a file
/// that is not there, or an anchor (`#...`, here or on another page) no heading has.
fn broken_links(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.strip_prefix(repo()).unwrap().display().to_string();
    let mut broken = Vec::new();
    for link in text.split("](").skip(1) {
        let Some(end) = link.find(')') else { continue };
        let target = &link[..end];
        if target.starts_with("http") || target.contains(' ') {
            continue;
        }
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let to = if file.is_empty() {
            path.to_owned()
        } else {
            path.parent().unwrap().join(file)
        };
        if !to.exists() {
            broken.push(format!("{name}: {target} (no such file)"));
        } else if !anchor.is_empty()
            && !anchors(&std::fs::read_to_string(&to).unwrap())
                .iter()
                .any(|a| a == anchor)
        {
            broken.push(format!("{name}: {target} (no such heading)"));
        }
    }
    broken
}

/// Every Markdown page under `dir`.
fn markdown_pages(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(markdown_pages(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The README is about one screen: what it is, the parts, the commands that run it, Helm, the
/// first association, `explain`; everything else is a docs page it links, and every link
/// resolves.
#[test]
fn the_readme_stands_on_its_own() {
    let text = readme();
    let lines = text.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; the rest belongs under docs/"
    );
    assert!(!text.contains("../shared"), "points outside the repository");
    assert!(
        !text.to_lowercase().contains("seed 0"),
        "names an API page by a number"
    );
    // It opens with the two commands that work on a fresh machine: the webhook, the tests.
    let first = text.split("```sh\n").nth(1).unwrap();
    let first = &first[..first.find("```").unwrap()];
    let commands: Vec<&str> = first
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --release -- serve --associations examples/associations.yaml",
            "cargo test"
        ],
        "{first}"
    );
    for heading in [
        "## Install with Helm",
        "## The first association",
        "## Why does my pod have no credentials?",
        "## Tests",
    ] {
        assert!(text.contains(&format!("\n{heading}\n")), "{heading}");
    }
    // What moved to the install page is there, under the headings the deploy tests read.
    let install = page(INSTALL);
    for heading in [
        "## Prerequisites",
        "## Deploy to a cluster",
        "## Deploy with Helm",
        "## EKS Pod Identity on any cluster",
    ] {
        assert!(
            install.contains(&format!("\n{heading}\n")),
            "{INSTALL}: {heading}"
        );
    }
    let broken = broken_links(&repo().join("README.md"));
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    // The docs, the design notes and the API pages, named by what they are.
    for doc in [
        "docs/README.md",
        "docs/install.md",
        "docs/concepts.md",
        "docs/reference/README.md",
        "docs/troubleshooting.md",
        "docs/operations.md",
        "docs/security.md",
        "docs/benchmarks.md",
        "docs/development.md",
        "docs/design.md",
        "docs/api/cce-assume-agency-for-pod-identity.md",
        "docs/api/iam-temporary-credentials-through-an-agency.md",
        "charts/pod-identity/README.md",
    ] {
        assert!(text.contains(&format!("]({doc}")), "README links {doc}");
    }
}

/// Every relative link and anchor of every page under `docs/` and of the chart's README
/// resolves, from the page's own folder: a moved or renamed page or heading breaks this test,
/// not a reader's click. The index, `docs/README.md`, links every page, and no page points
/// outside the repository.
#[test]
fn every_docs_link_resolves() {
    let all = markdown_pages(&repo().join("docs"));
    assert!(all.len() >= 15, "{all:?}");
    let index = page("docs/README.md");
    let mut broken = Vec::new();
    for path in all.iter().chain([&repo().join("charts/pod-identity/README.md")]) {
        broken.extend(broken_links(path));
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(repo()).unwrap().display().to_string();
        if text.contains("../shared") {
            broken.push(format!("{name}: points outside the repository"));
        }
        if let Ok(rel) = path.strip_prefix(repo().join("docs")) {
            let rel = rel.display().to_string();
            if rel != "README.md" && !index.contains(&format!("]({rel})")) {
                broken.push(format!("docs/README.md: does not link {rel}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

/// Every file or folder of the repository a page names in code (`tests/it/...`, `src/...`,
/// `manifests/...`, ...) is there: a page that cites a test or a manifest as its evidence
/// cites one that exists.
#[test]
fn every_file_the_docs_name_exists() {
    let roots = [
        "benches/",
        "charts/",
        "docs/",
        "examples/",
        "fuzz/",
        "manifests/",
        "scripts/",
        "src/",
        "tests/",
    ];
    let mut pages = markdown_pages(&repo().join("docs"));
    pages.push(repo().join("README.md"));
    pages.push(repo().join("charts/pod-identity/README.md"));
    let mut missing = Vec::new();
    for path in &pages {
        let text = std::fs::read_to_string(path).unwrap();
        for (i, span) in text.split('`').enumerate() {
            let named = span.split('#').next().unwrap();
            if i % 2 == 0
                || !roots.iter().any(|r| named.starts_with(r))
                || named.contains(|c: char| c.is_whitespace() || "*<>{}".contains(c))
            {
                continue;
            }
            if std::fs::symlink_metadata(repo().join(named)).is_err() {
                missing.push(format!(
                    "{}: {named}",
                    path.strip_prefix(repo()).unwrap().display()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "named but not there: {missing:#?}");
}

/// The text without trailing whitespace on its lines or at its end: what an editor keeps.
fn trimmed(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_end().to_owned()
}

/// `--help` of the binary, for the command `args` (none: the top level), with an empty
/// environment: clap prints the value of a flag's variable when it is set (`[env: AWS_REGION=...]`).
fn help(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help: {out:?}");
    trimmed(&String::from_utf8(out.stdout).unwrap())
}

/// Each command's page under `docs/reference/` holds its `--help` as the binary prints it, in
/// its first `text` block (`README.md` the top level's); there is a page for every command the
/// binary lists, and none for a command it does not, and the index links each.
#[test]
fn every_commands_reference_is_its_help() {
    let top = help(&[]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .filter(|c| *c != "help")
        .collect();
    for c in [
        "serve",
        "mutate",
        "explain",
        "certs",
        "crd",
        "migrate-associations",
        "agent",
        "exchange",
    ] {
        assert!(commands.contains(&c), "{c} is not in --help:\n{top}");
    }
    let dir = repo().join("docs/reference");
    let index = page("docs/reference/README.md");
    let mut wrong = Vec::new();
    for (name, want) in
        std::iter::once(("README", top.clone())).chain(commands.iter().map(|c| (*c, help(&[c]))))
    {
        if name != "README" && !index.contains(&format!("]({name}.md)")) {
            wrong.push(format!("docs/reference/README.md does not link {name}.md"));
        }
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.md"))) else {
            wrong.push(format!("docs/reference/{name}.md is missing"));
            continue;
        };
        let Some(block) = text.split("```text\n").nth(1) else {
            wrong.push(format!("docs/reference/{name}.md has no text block"));
            continue;
        };
        let got = trimmed(&block[..block.find("```").unwrap()]);
        if got != want {
            let (line, (g, w)) = got
                .lines()
                .chain(std::iter::repeat(""))
                .zip(want.lines().chain(std::iter::repeat("")))
                .enumerate()
                .find(|(_, (g, w))| g != w)
                .unwrap();
            wrong.push(format!(
                "docs/reference/{name}.md, line {} of the block:\n  page: {g}\n  help: {w}",
                line + 1
            ));
        }
    }
    for path in markdown_pages(&dir) {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        if stem != "README" && !commands.contains(&stem) {
            wrong.push(format!("docs/reference/{stem}.md: no such command"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the reference is not the binary's --help (scripts/reference-help.sh rewrites it):\n{}",
        wrong.join("\n")
    );
}

/// `values.yaml` as the chart's table lists it, key by dotted key: each map down to its
/// values, except an empty map and a map whose keys are not plain names (`kubernetes.io/os`: a
/// dotted path cannot name them), which are values themselves, as lists are. The default as
/// the table shows it: compact JSON.
fn value_rows(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map)
            if !map.is_empty() && map.keys().all(|k| k.chars().all(|c| c.is_ascii_alphanumeric())) =>
        {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                value_rows(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), serde_json::to_string(value).unwrap());
        }
    }
}

/// The chart's README has a row for every value of `values.yaml` with its default as written
/// there, and a description; and no row for a value that is not there.
#[test]
fn the_charts_values_table_is_its_values() {
    let values: Value = serde_yaml::from_str(&page("charts/pod-identity/values.yaml")).unwrap();
    let mut want = BTreeMap::new();
    value_rows("", &values, &mut want);
    assert!(want.len() > 50, "{want:?}");
    assert_eq!(want["agent.tolerations"], r#"[{"operator":"Exists"}]"#);
    assert_eq!(want["webhook.nodeSelector"], r#"{"kubernetes.io/os":"linux"}"#);

    let readme = page("charts/pod-identity/README.md");
    let mut table = BTreeMap::new();
    for row in section(&readme, "## Values")
        .lines()
        .filter(|l| l.starts_with("| `"))
    {
        let cells: Vec<&str> = row
            .strip_prefix("| ")
            .and_then(|r| r.strip_suffix(" |"))
            .unwrap_or_else(|| panic!("not a table row: {row}"))
            .splitn(3, " | ")
            .collect();
        let [key, default, description] = cells[..] else {
            panic!("not three cells: {row}")
        };
        let unquote = |cell: &str| {
            cell.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("not in backticks: {cell} ({row})"))
                .to_owned()
        };
        assert!(!description.trim().is_empty(), "no description: {row}");
        let key = unquote(key);
        assert!(
            table.insert(key.clone(), unquote(default)).is_none(),
            "{key} twice"
        );
    }
    let missing: Vec<_> = want.keys().filter(|k| !table.contains_key(*k)).collect();
    let stale: Vec<_> = table.keys().filter(|k| !want.contains_key(*k)).collect();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| table.get(*k).is_some_and(|t| t != *v))
        .map(|(k, v)| format!("{k}: the table says {}, values.yaml {v}", table[k]))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty() && wrong.is_empty(),
        "charts/pod-identity/README.md against values.yaml:\nmissing: {missing:?}\nnot in values.yaml: {stale:?}\nwrong defaults: {wrong:#?}"
    );
}

/// The README's offline examples, run as written (`cargo run -- ARGS` is the binary with
/// ARGS): `mutate` injects the example pod, and `explain` prints exactly the lines the README
/// shows and exits with the status it names.
#[test]
fn the_readmes_examples_print_what_it_shows() {
    let text = readme();
    let run = |block: &str| {
        let line = block
            .lines()
            .find(|l| l.starts_with("cargo run -- "))
            .unwrap_or_else(|| panic!("no cargo run in {block}"));
        let line = line.split(" #").next().unwrap();
        let args: Vec<&str> = line["cargo run -- ".len()..].split_whitespace().collect();
        Command::new(BIN)
            .args(&args)
            .current_dir(repo())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };

    let mutate = sh_blocks(&text, "## The parts");
    let out = run(&mutate[0]);
    assert!(out.status.success(), "{out:?}");
    let pod: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let env = &pod["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "HC_CONTAINER_CREDENTIALS_FULL_URI"),
        "{pod}"
    );
    assert!(
        pod["metadata"]["annotations"]["podidentity.io/association"].is_string(),
        "{pod}"
    );

    let heading = "## Why does my pod have no credentials?";
    let explain = sh_blocks(&text, heading);
    let out = run(&explain[0]);
    let shown = &fenced(&text, heading, "text")[0];
    assert_eq!(
        trimmed(&String::from_utf8(out.stdout).unwrap()),
        trimmed(shown),
        "the README shows another answer than explain gives"
    );
    let code = out.status.code().unwrap();
    assert!(
        section(&text, heading).contains(&format!("It exits {code} here")),
        "explain exited {code}"
    );
}
