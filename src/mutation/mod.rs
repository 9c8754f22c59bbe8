//! The pure core: (pod, association, profile, settings) → JSON Patch. No I/O.
//!
//! Rules (DESIGN.md, "Kubernetes contract"): append, never replace arrays; create a missing
//! parent instead of adding into it; a user's env var, volume or mount of the same name (or a
//! mount at the same path, which the API server would refuse as a duplicate) wins; and running
//! the mutation on its own output yields no operation.

pub mod pod;
pub mod profile;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::association::Association;
pub use pod::Pod;
pub use profile::{Profile, Provider};

/// Pod label that opts a pod out when set to `"false"`.
pub const INJECT_LABEL: &str = "podidentity.io/inject";
/// Pod annotation listing containers (comma-separated) that get nothing injected.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "podidentity.io/skip-containers";
/// Pod annotation the webhook writes: the uid of the association it applied.
pub const ASSOCIATION_ANNOTATION: &str = "podidentity.io/association";

/// The smallest token lifetime the API server accepts for a projected token.
pub const MIN_TOKEN_EXPIRATION: i64 = 600;
/// Token lifetime when none is configured.
pub const DEFAULT_TOKEN_EXPIRATION: i64 = 86_400;

/// Operator settings that shape the injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Value of the endpoint env var.
    pub credentials_uri: String,
    /// `expirationSeconds` of the projected token, at least [`MIN_TOKEN_EXPIRATION`].
    pub token_expiration: i64,
}

impl Settings {
    /// Settings for `profile`; the endpoint falls back to the profile's default and the token
    /// lifetime is clamped up to the API server's minimum rather than rejecting pods later.
    pub fn new(profile: &Profile, credentials_uri: Option<String>, token_expiration: i64) -> Self {
        Settings {
            credentials_uri: credentials_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| profile.default_endpoint.to_owned()),
            token_expiration: token_expiration.max(MIN_TOKEN_EXPIRATION),
        }
    }
}

/// What to inject, built once from a profile and settings so each admission only clones
/// small prepared values.
#[derive(Debug, Clone)]
pub struct Injection {
    pub profile: &'static Profile,
    pub settings: Settings,
    volume: Value,
    mount: Value,
    env_endpoint: Value,
    env_token_file: Value,
}

impl Injection {
    pub fn new(profile: &'static Profile, settings: Settings) -> Self {
        let volume = json!({
            "name": profile.volume_name,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": profile.audience,
                "expirationSeconds": settings.token_expiration,
                "path": profile.token_file,
            }}]}
        });
        let mount = json!({
            "name": profile.volume_name,
            "mountPath": profile.mount_path,
            "readOnly": true,
        });
        let env_endpoint = json!({"name": profile.endpoint_env, "value": settings.credentials_uri});
        let env_token_file = json!({"name": profile.token_file_env, "value": profile.token_path()});
        Injection {
            profile,
            settings,
            volume,
            mount,
            env_endpoint,
            env_token_file,
        }
    }
}

/// Why a pod got no patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Label `podidentity.io/inject: "false"`.
    OptedOut,
    /// Every container is named in `podidentity.io/skip-containers`.
    AllContainersSkipped,
}

/// The result of mutating one pod.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation {
    /// Operations to apply; empty when the pod already carries everything.
    pub patch: Patch,
    /// Things the user should know, returned as admission warnings.
    pub warnings: Vec<String>,
}

/// Computes the patch that gives `pod` the identity of `association`.
pub fn mutate(pod: &Pod<'_>, association: &Association, inj: &Injection) -> Result<Mutation, Skip> {
    if pod.label_inject() == Some("false") {
        return Err(Skip::OptedOut);
    }
    let profile = inj.profile;
    let annotations = pod.annotations();
    let skipped = annotations
        .and_then(|a| a.skip_containers.as_ref())
        .map(|s| s.as_str())
        .unwrap_or("");
    let is_skipped = |name: &str| skipped.split(',').any(|s| s.trim() == name);

    let spec = pod.spec.as_ref();
    let groups = [
        (
            "initContainers",
            spec.and_then(|s| s.init_containers.as_deref()).unwrap_or(&[]),
        ),
        (
            "containers",
            spec.and_then(|s| s.containers.as_deref()).unwrap_or(&[]),
        ),
    ];
    let targets = groups
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .filter(|c| !is_skipped(c.name.as_str()))
        .count();
    if targets == 0 && groups.iter().any(|(_, cs)| !cs.is_empty()) {
        return Err(Skip::AllContainersSkipped);
    }

    let mut ops = Vec::new();
    let mut warnings = Vec::new();

    match annotations {
        None if pod.metadata.is_none() => ops.push(add(
            ptr(&["metadata"]),
            json!({"annotations": { ASSOCIATION_ANNOTATION: association.uid }}),
        )),
        None => ops.push(add(
            ptr(&["metadata", "annotations"]),
            json!({ ASSOCIATION_ANNOTATION: association.uid }),
        )),
        Some(a) if a.association.is_none() => ops.push(add(
            ptr(&["metadata", "annotations", ASSOCIATION_ANNOTATION]),
            Value::String(association.uid.clone()),
        )),
        Some(_) => {}
    }

    match spec.map(|s| s.volumes.as_ref()) {
        None => ops.push(add(ptr(&["spec"]), json!({"volumes": [inj.volume.clone()]}))),
        Some(None) => ops.push(add(
            ptr(&["spec", "volumes"]),
            Value::Array(vec![inj.volume.clone()]),
        )),
        Some(Some(vs)) if !vs.iter().any(|v| v.name.as_str() == profile.volume_name) => {
            ops.push(add(ptr(&["spec", "volumes", "-"]), inj.volume.clone()))
        }
        Some(_) => {}
    }

    for (field, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            if is_skipped(c.name.as_str()) {
                continue;
            }
            let index = i.to_string();
            let base = ["spec", field, index.as_str()];
            match &c.volume_mounts {
                None => ops.push(add(
                    ptr(&[&base[..], &["volumeMounts"]].concat()),
                    Value::Array(vec![inj.mount.clone()]),
                )),
                Some(ms) => {
                    let clash = ms.iter().find(|m| {
                        m.name.as_str() == profile.volume_name
                            || m.mount_path.as_str().trim_end_matches('/') == profile.mount_path
                    });
                    match clash {
                        None => ops.push(add(
                            ptr(&[&base[..], &["volumeMounts", "-"]].concat()),
                            inj.mount.clone(),
                        )),
                        Some(m) if m.name.as_str() != profile.volume_name => warnings.push(format!(
                            "container {:?} already mounts {:?} at the pod identity token path; token not mounted",
                            c.name.as_str(),
                            m.name.as_str(),
                        )),
                        Some(_) => {}
                    }
                }
            }
            let wanted = [
                (profile.endpoint_env, &inj.env_endpoint),
                (profile.token_file_env, &inj.env_token_file),
            ];
            match &c.env {
                None => ops.push(add(
                    ptr(&[&base[..], &["env"]].concat()),
                    Value::Array(wanted.iter().map(|(_, v)| (*v).clone()).collect()),
                )),
                Some(env) => {
                    for (name, value) in wanted {
                        if !env.iter().any(|e| e.name.as_str() == name) {
                            ops.push(add(ptr(&[&base[..], &["env", "-"]].concat()), value.clone()));
                        }
                    }
                }
            }
        }
    }

    if pod.node_os() == Some("windows") && !ops.is_empty() {
        warnings.push(
            "pod targets Windows nodes; the pod identity credential agent runs on Linux nodes only"
                .to_owned(),
        );
    }
    Ok(Mutation {
        patch: Patch(ops),
        warnings,
    })
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Builds a pointer from unescaped tokens; `/` and `~` in a token become `~1` and `~0`.
fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(|t| Token::new(*t)))
}

#[cfg(test)]
mod tests;
