//! The pure core: (pod, association, profile, settings) → JSON Patch. No I/O.
//!
//! Rules (the Kubernetes contract in the README): append, never replace arrays; create a missing
//! parent instead of adding into it; a user's env var, volume or mount of the same name (or a
//! mount at the same path, which the API server would refuse as a duplicate) wins; and running
//! the mutation on its own output yields no operation.

pub mod patch;
pub mod pod;

use std::borrow::Cow;

use serde_json::json;

use crate::association::Association;
use crate::profile::Profile;
pub use patch::{Add, Patch};
pub use pod::Pod;

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

/// What to inject, rendered to JSON text once from a profile and settings so that each
/// admission's patch only borrows it.
#[derive(Debug, Clone)]
pub struct Injection {
    pub profile: &'static Profile,
    pub settings: Settings,
    volume: String,
    /// `[volume]`
    volumes: String,
    /// `{"volumes":[volume]}`
    spec_volumes: String,
    mount: String,
    /// `[mount]`
    mounts: String,
    env_endpoint: String,
    env_token_file: String,
    /// `[env_endpoint,env_token_file]`
    env: String,
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
            volume: volume.to_string(),
            volumes: json!([volume]).to_string(),
            spec_volumes: json!({ "volumes": [volume] }).to_string(),
            mount: mount.to_string(),
            mounts: json!([mount]).to_string(),
            env_endpoint: env_endpoint.to_string(),
            env_token_file: env_token_file.to_string(),
            env: json!([env_endpoint, env_token_file]).to_string(),
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

/// The result of mutating one pod; borrows the injection's prepared JSON.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation<'i> {
    /// Operations to apply; empty when the pod already carries everything.
    pub patch: Patch<'i>,
    /// Things the user should know, returned as admission warnings.
    pub warnings: Vec<String>,
}

/// Computes the patch that gives `pod` the identity of `association`.
pub fn mutate<'i>(
    pod: &Pod<'_>,
    association: &Association,
    inj: &'i Injection,
) -> Result<Mutation<'i>, Skip> {
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

    let uid = || patch::str_literal(&association.uid);
    match annotations {
        None if pod.metadata.is_none() => ops.push(add(
            path(&["metadata"]),
            format!(r#"{{"annotations":{{"{ASSOCIATION_ANNOTATION}":{}}}}}"#, uid()),
        )),
        None => ops.push(add(
            path(&["metadata", "annotations"]),
            format!(r#"{{"{ASSOCIATION_ANNOTATION}":{}}}"#, uid()),
        )),
        Some(a) if a.association.is_none() => ops.push(add(
            path(&["metadata", "annotations", ASSOCIATION_ANNOTATION]),
            uid(),
        )),
        Some(_) => {}
    }

    match spec.map(|s| s.volumes.as_ref()) {
        None => ops.push(add(path(&["spec"]), &inj.spec_volumes)),
        Some(None) => ops.push(add(path(&["spec", "volumes"]), &inj.volumes)),
        Some(Some(vs)) if !vs.iter().any(|v| v.name.as_str() == profile.volume_name) => {
            ops.push(add(path(&["spec", "volumes", "-"]), &inj.volume))
        }
        Some(_) => {}
    }

    for (field, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            if is_skipped(c.name.as_str()) {
                continue;
            }
            let mut index = itoa::Buffer::new();
            let base = ["spec", field, index.format(i)];
            let at = |tail: &[&str]| {
                let mut p = path(&base);
                for t in tail {
                    patch::push_token(&mut p, t);
                }
                p
            };
            match &c.volume_mounts {
                None => ops.push(add(at(&["volumeMounts"]), &inj.mounts)),
                Some(ms) => {
                    let clash = ms.iter().find(|m| {
                        m.name.as_str() == profile.volume_name
                            || m.mount_path.as_str().trim_end_matches('/') == profile.mount_path
                    });
                    match clash {
                        None => ops.push(add(at(&["volumeMounts", "-"]), &inj.mount)),
                        Some(m) if m.name.as_str() != profile.volume_name => warnings.push(format!(
                            "container {:?} already mounts {:?} at the pod identity token path; token not mounted",
                            c.name.as_str(),
                            m.name.as_str(),
                        )),
                        Some(_) => {}
                    }
                }
            }
            match &c.env {
                None => ops.push(add(at(&["env"]), &inj.env)),
                Some(env) => {
                    for (name, value) in [
                        (profile.endpoint_env, &inj.env_endpoint),
                        (profile.token_file_env, &inj.env_token_file),
                    ] {
                        if !env.iter().any(|e| e.name.as_str() == name) {
                            ops.push(add(at(&["env", "-"]), value));
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

fn add<'i>(path: String, value: impl Into<Cow<'i, str>>) -> Add<'i> {
    Add {
        path,
        value: value.into(),
    }
}

/// Builds a pointer from unescaped tokens.
fn path(tokens: &[&str]) -> String {
    let mut p = String::with_capacity(48);
    for t in tokens {
        patch::push_token(&mut p, t);
    }
    p
}

#[cfg(test)]
mod tests;
