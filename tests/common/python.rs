//! The real cloud SDKs from PyPI, in a virtualenv the tests create on first use
//! (`target/sdk-venv`; `.ci/run` creates it up front).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

const PACKAGES: [&str; 2] = ["huaweicloudsdkcore", "botocore"];

static SETUP: Mutex<()> = Mutex::new(());

/// The venv's python with the SDKs installed.
pub fn sdk_python() -> PathBuf {
    let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = || {
        python.exists()
            && Command::new(&python)
                .args(["-c", "import huaweicloudsdkcore, botocore"])
                .status()
                .is_ok_and(|s| s.success())
    };
    if !ready() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install {PACKAGES:?} failed (PyPI must be reachable)");
    }
    python
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
