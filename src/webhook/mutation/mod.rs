//! The pure core: (pod, association, profile, settings) → JSON Patch. No I/O.
//!
//! Rules (the Kubernetes contract in docs/concepts.md): append, never replace arrays; create a
//! missing parent instead of adding into it; a user's env var, volume or mount wins; and running
//! the mutation on its own output yields no operation.
//!
//! The decision per container: it gets the env vars only when the token file they name will
//! exist, that is when a mount (the injected one, or the user's) provides a projected
//! service-account token with the profile's audience at that path. Otherwise the container gets
//! nothing and the answer carries a warning naming what is in the way (docs/concepts.md says
//! why this admits rather than refuses). "Already injected" is that same check.

pub mod patch;
pub mod pod;

use serde_json::json;

use crate::association::Association;
use crate::profile::Profile;
pub use patch::{Add, Patch, Value};
pub use pod::Pod;
use pod::{Container, EnvVar, Mount, Volume};

/// Pod label that opts a pod out when set to `"false"`.
pub const INJECT_LABEL: &str = "podidentity.io/inject";
/// Pod annotation listing containers (comma-separated) that get nothing injected.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "podidentity.io/skip-containers";
/// Pod annotation the webhook writes: the uid of the association it applied.
pub const ASSOCIATION_ANNOTATION: &str = "podidentity.io/association";
/// Pod annotation that lowers the token lifetime (seconds).
pub const TOKEN_EXPIRATION_ANNOTATION: &str = "podidentity.io/token-expiration";
/// The annotation the kubelet puts on a static pod's mirror; the API server refuses projected
/// service-account tokens in mirror pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The shortest token lifetime the API server accepts for a projected token.
pub const MIN_TOKEN_EXPIRATION: i64 = *crate::association::TOKEN_LIFETIME.start();
/// The longest given (48 hours; the API server would issue up to 2^32 s).
pub const MAX_TOKEN_EXPIRATION: i64 = *crate::association::TOKEN_LIFETIME.end();
/// Token lifetime when none is configured.
pub const DEFAULT_TOKEN_EXPIRATION: i64 = 86_400;

/// Operator settings that shape the injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Value of the endpoint env var.
    pub credentials_uri: String,
    /// Default `expirationSeconds` of the projected token, within the API server's range.
    pub token_expiration: i64,
    /// Region for the profile's region env vars (`eks`); none are injected without it.
    pub region: Option<String>,
}

impl Settings {
    /// Settings for `profile`; the endpoint falls back to the profile's default and the token
    /// lifetime is clamped into the API server's range rather than rejecting pods later.
    pub fn new(profile: &Profile, credentials_uri: Option<String>, token_expiration: i64) -> Self {
        Settings {
            credentials_uri: credentials_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| profile.default_endpoint.to_owned()),
            token_expiration: token_expiration.clamp(MIN_TOKEN_EXPIRATION, MAX_TOKEN_EXPIRATION),
            region: None,
        }
    }
}

/// Prepared JSON text with a number to write between its two halves.
#[derive(Debug, Clone)]
struct Spliced {
    head: String,
    tail: String,
}

impl Spliced {
    /// Renders `value`, which holds `placeholder` as its only number, and splits it there.
    fn around(value: &serde_json::Value, placeholder: i64) -> Self {
        let text = value.to_string();
        let (head, tail) = text
            .split_once(itoa::Buffer::new().format(placeholder))
            .expect("the placeholder is in the rendered value");
        Spliced {
            head: head.to_owned(),
            tail: tail.to_owned(),
        }
    }

    fn with(&self, number: i64) -> Value<'_> {
        Value::Spliced {
            head: &self.head,
            number,
            tail: &self.tail,
        }
    }
}

/// One env var the injection sets, with its JSON.
#[derive(Debug, Clone)]
struct EnvEntry {
    json: String,
    /// A container that sets any of these has made this choice itself: the entry is not added.
    set_by: &'static [&'static str],
}

/// What to inject, rendered to JSON text once from a profile and settings so that each
/// admission's patch only borrows it.
#[derive(Debug, Clone)]
pub struct Injection {
    pub profile: &'static Profile,
    pub settings: Settings,
    /// `volume` and `[volume]`, split at the token's lifetime.
    volume: Spliced,
    volumes: Spliced,
    mount: String,
    /// `[mount]`
    mounts: String,
    env: Vec<EnvEntry>,
    /// Every entry of `env`, as an array.
    env_array: String,
}

impl Injection {
    pub fn new(profile: &'static Profile, settings: Settings) -> Self {
        let placeholder = MAX_TOKEN_EXPIRATION + 1;
        let volume = json!({
            "name": profile.volume_name,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": profile.audience,
                "expirationSeconds": placeholder,
                "path": profile.token_file,
            }}]}
        });
        let mount = json!({
            "name": profile.volume_name,
            "mountPath": profile.mount_path,
            "readOnly": true,
        });
        let var = |name: &str, value: &str| json!({"name": name, "value": value});
        let mut env = vec![
            (
                var(profile.endpoint_env, &settings.credentials_uri),
                std::slice::from_ref(&profile.endpoint_env),
            ),
            (
                var(profile.token_file_env, &profile.token_path()),
                std::slice::from_ref(&profile.token_file_env),
            ),
        ];
        if let Some(region) = &settings.region {
            // A user's region in either variable is the user's choice of region.
            env.extend(
                profile
                    .region_envs
                    .iter()
                    .map(|n| (var(n, region), profile.region_envs)),
            );
            env.extend(
                profile
                    .regional_envs
                    .iter()
                    .map(|(n, v)| (var(n, v), std::slice::from_ref(n))),
            );
        }
        let env_array = serde_json::Value::from_iter(env.iter().map(|(v, _)| v.clone())).to_string();
        Injection {
            profile,
            settings,
            volume: Spliced::around(&volume, placeholder),
            volumes: Spliced::around(&json!([volume]), placeholder),
            mount: mount.to_string(),
            mounts: json!([mount]).to_string(),
            env: env
                .into_iter()
                .map(|(json, set_by)| EnvEntry {
                    json: json.to_string(),
                    set_by,
                })
                .collect(),
            env_array,
        }
    }

    /// The token lifetime for this pod: the association's, else the default spread by the
    /// pod's `seed`; lowered by the pod's annotation; kept in the API server's range. Every
    /// adjustment is explained in `warnings`.
    fn lifetime(
        &self,
        pod: &Pod<'_>,
        association: &Association,
        seed: u64,
        warnings: &mut Vec<String>,
    ) -> i64 {
        let clamp = |seconds: i64, what: &str, warnings: &mut Vec<String>| {
            let used = seconds.clamp(MIN_TOKEN_EXPIRATION, MAX_TOKEN_EXPIRATION);
            if used != seconds {
                warnings.push(format!(
                    "{what} {seconds} is outside {MIN_TOKEN_EXPIRATION}..{MAX_TOKEN_EXPIRATION} s; token lifetime {used} s"
                ));
            }
            used
        };
        let (mut seconds, mut chosen) = match association.token_expiration_seconds {
            Some(s) => (clamp(s, "association tokenExpirationSeconds", warnings), true),
            None => (self.settings.token_expiration, false),
        };
        let annotation = pod.annotations().and_then(|a| a.token_expiration.as_ref());
        if let Some(text) = annotation.map(|a| a.as_str().trim()) {
            match text.parse::<i64>() {
                Ok(n) if n <= seconds => {
                    seconds = clamp(n, TOKEN_EXPIRATION_ANNOTATION, warnings);
                    chosen = true;
                }
                Ok(n) => warnings.push(format!(
                    "{TOKEN_EXPIRATION_ANNOTATION} {n} ignored: it may only lower the token lifetime ({seconds} s)"
                )),
                Err(_) => warnings.push(format!(
                    "{TOKEN_EXPIRATION_ANNOTATION} {text:?} ignored: not a whole number of seconds"
                )),
            }
        }
        if chosen { seconds } else { jitter(seconds, seed) }
    }
}

/// `seconds` lowered by up to a twelfth, by `seed`: EKS spreads its 86 400 s over 79 200–86 400 s
/// so that the tokens of pods created together are not all refreshed in the same second.
pub fn jitter(seconds: i64, seed: u64) -> i64 {
    let spread = (seconds / 12).max(0) as u64;
    (seconds - (seed % (spread + 1)) as i64).max(MIN_TOKEN_EXPIRATION.min(seconds))
}

/// The seed of a pod's lifetime jitter: its namespace and name, or for a pod named by
/// `generateName` (a controller's pods: identical, and nameless until after admission) the
/// admission request's uid. FNV-1a: stable across builds and processes, and cheap.
pub fn jitter_seed(pod: &Pod<'_>, namespace: &str, request_uid: &str) -> u64 {
    let parts = match pod.name() {
        Some(name) => [namespace, name],
        None if !request_uid.is_empty() => [request_uid, ""],
        None => [namespace, pod.generate_name().unwrap_or("")],
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Why a pod got no patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Label `podidentity.io/inject: "false"`.
    OptedOut,
    /// A static pod's mirror (annotation `kubernetes.io/config.mirror`).
    MirrorPod,
    /// No containers and no init containers.
    NoContainers,
    /// Every container is named in `podidentity.io/skip-containers`.
    AllContainersSkipped,
}

impl Skip {
    /// The reason, for the answer's warning and the `mutate` summary.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted out by label podidentity.io/inject=false",
            Skip::MirrorPod => {
                "mirror of a static pod: the API server refuses projected service account tokens there; pod identity not injected"
            }
            Skip::NoContainers => {
                "no containers (is spec.containers missing or misspelt?): nothing to inject"
            }
            Skip::AllContainersSkipped => "every container is named in podidentity.io/skip-containers",
        }
    }

    /// Whether the answer should say so: a skip the user did not ask for.
    pub fn warns(self) -> bool {
        matches!(self, Skip::MirrorPod | Skip::NoContainers)
    }
}

/// The result of mutating one pod; borrows the injection's prepared JSON.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation<'i> {
    /// Operations to apply; empty when the pod already carries everything it can.
    pub patch: Patch<'i>,
    /// Things the user should know, returned as admission warnings.
    pub warnings: Vec<String>,
    /// Containers that have the identity once the patch is applied.
    pub served: usize,
    /// Containers left without it because something of the user's is in the way.
    pub unserved: usize,
}

/// The profile's token volume as the pod has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VolumeState {
    /// None of that name: the webhook adds it.
    Missing,
    /// The projected token with the profile's audience and file name.
    Ours,
    /// Something else under that name.
    Foreign,
}

/// Where the profile's mount stands in one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountState<'p> {
    Present,
    Missing,
    /// Something else is at the mount path (a user's mount, or the token volume with a
    /// `subPath`), or the token volume is not ours.
    Blocked(Blocker<'p>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocker<'p> {
    Volume,
    Mount(&'p str),
}

/// Whether `volume` carries a projected token for `audience` at `file`.
fn has_token(volume: &Volume<'_>, audience: &str, file: &str) -> bool {
    let tokens = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
    tokens.is_some_and(|t| {
        t.0.iter()
            .any(|t| t.path.as_str() == file && t.audience.as_ref().is_some_and(|a| a.as_str() == audience))
    })
}

/// Computes the patch that gives `pod` the identity of `association`; `seed` spreads the
/// default token lifetime ([`jitter_seed`]).
pub fn mutate<'i>(
    pod: &Pod<'_>,
    association: &Association,
    inj: &'i Injection,
    seed: u64,
) -> Result<Mutation<'i>, Skip> {
    if pod.label_inject() == Some("false") {
        return Err(Skip::OptedOut);
    }
    let annotations = pod.annotations();
    if annotations.is_some_and(|a| a.mirror.is_some()) {
        return Err(Skip::MirrorPod);
    }
    let profile = inj.profile;
    let skipped = annotations
        .and_then(|a| a.skip_containers.as_ref())
        .map(|s| s.as_str())
        .unwrap_or("");
    let is_skipped = |name: &str| skipped.split(',').any(|s| s.trim() == name);

    let Some(spec) = pod.spec.as_ref() else {
        return Err(Skip::NoContainers);
    };
    let groups = [
        ("initContainers", spec.init_containers.as_deref().unwrap_or(&[])),
        ("containers", spec.containers.as_deref().unwrap_or(&[])),
    ];
    if groups.iter().all(|(_, cs)| cs.is_empty()) {
        return Err(Skip::NoContainers);
    }
    if groups
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .all(|c| is_skipped(c.name.as_str()))
    {
        return Err(Skip::AllContainersSkipped);
    }

    let volumes = spec.volumes.as_deref().unwrap_or(&[]);
    let volume = match volumes.iter().find(|v| v.name.as_str() == profile.volume_name) {
        None => VolumeState::Missing,
        Some(v) if has_token(v, profile.audience, profile.token_file) => VolumeState::Ours,
        Some(_) => VolumeState::Foreign,
    };

    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    let (mut served, mut unserved, mut uses_volume) = (0, 0, false);
    for (field, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            if is_skipped(c.name.as_str()) {
                continue;
            }
            let mount = mount_state(c, volume, profile);
            let token_file = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name.as_str() == profile.token_file_env);
            let provided = match token_file {
                None => !matches!(mount, MountState::Blocked(_)),
                Some(var) => provides(var, c, mount, volumes, profile),
            };
            if !provided {
                unserved += 1;
                warnings.push(conflict(c, token_file, mount, profile));
                continue;
            }
            served += 1;
            // It mounts the token volume: the profile's mount, or a mount of the user's that
            // the token file was found through.
            uses_volume |= !matches!(mount, MountState::Blocked(_))
                || c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name.as_str() == profile.volume_name);
            let mut index = itoa::Buffer::new();
            let base = ["spec", field, index.format(i)];
            let at = |tail: &[&str]| {
                let mut p = path(&base);
                for t in tail {
                    patch::push_token(&mut p, t);
                }
                p
            };
            if mount == MountState::Missing {
                ops.push(match &c.volume_mounts {
                    None => add(at(&["volumeMounts"]), inj.mounts.as_str()),
                    Some(_) => add(at(&["volumeMounts", "-"]), inj.mount.as_str()),
                });
            }
            match &c.env {
                None => ops.push(add(at(&["env"]), inj.env_array.as_str())),
                Some(env) => {
                    let set = |name: &str| env.iter().any(|e| e.name.as_str() == name);
                    for entry in &inj.env {
                        if !entry.set_by.iter().any(|n| set(n)) {
                            ops.push(add(at(&["env", "-"]), entry.json.as_str()));
                        }
                    }
                }
            }
        }
    }
    if served == 0 {
        return Ok(Mutation {
            patch: Patch(ops),
            warnings,
            served,
            unserved,
        });
    }

    // The annotation and the volume go first: the patch reads top-down like the pod.
    let annotation = match annotations {
        None if pod.metadata.is_none() => Some(add(
            path(&["metadata"]),
            format!(
                r#"{{"annotations":{{"{ASSOCIATION_ANNOTATION}":{}}}}}"#,
                uid(association)
            ),
        )),
        None => Some(add(
            path(&["metadata", "annotations"]),
            format!(r#"{{"{ASSOCIATION_ANNOTATION}":{}}}"#, uid(association)),
        )),
        Some(a) if a.association.is_none() => Some(add(
            path(&["metadata", "annotations", ASSOCIATION_ANNOTATION]),
            uid(association),
        )),
        Some(_) => None,
    };
    let token_volume = (volume == VolumeState::Missing && uses_volume).then(|| {
        let seconds = inj.lifetime(pod, association, seed, &mut warnings);
        match &spec.volumes {
            None => add(path(&["spec", "volumes"]), inj.volumes.with(seconds)),
            Some(_) => add(path(&["spec", "volumes", "-"]), inj.volume.with(seconds)),
        }
    });
    for (at, op) in annotation.into_iter().chain(token_volume).enumerate() {
        ops.insert(at, op);
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
        served,
        unserved,
    })
}

/// Whether the profile's mount is in `c`, can be added, or is blocked.
fn mount_state<'p>(c: &'p Container<'_>, volume: VolumeState, profile: &Profile) -> MountState<'p> {
    let at_path = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.dir() == profile.mount_path);
    match at_path {
        Some(m) if m.name.as_str() == profile.volume_name && !m.has_sub_path() => match volume {
            VolumeState::Foreign => MountState::Blocked(Blocker::Volume),
            _ => MountState::Present,
        },
        Some(m) => MountState::Blocked(Blocker::Mount(m.name.as_str())),
        None if volume == VolumeState::Foreign => MountState::Blocked(Blocker::Volume),
        None => MountState::Missing,
    }
}

/// Whether the file `var` names will hold a token with the profile's audience: through the
/// profile's mount (there, or added), or through any mount of a volume that projects one.
fn provides(
    var: &EnvVar<'_>,
    c: &Container<'_>,
    mount: MountState<'_>,
    volumes: &[Volume<'_>],
    profile: &Profile,
) -> bool {
    let Some(file) = var.value.as_ref().map(|v| v.as_str()) else {
        return false;
    };
    let under = |dir: &str| file.strip_prefix(dir).and_then(|rest| rest.strip_prefix('/'));
    if !matches!(mount, MountState::Blocked(_)) && under(profile.mount_path) == Some(profile.token_file) {
        return true;
    }
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| !m.has_sub_path())
        .any(|m: &Mount<'_>| {
            let Some(rest) = under(m.dir()) else {
                return false;
            };
            match volumes.iter().find(|v| v.name == m.name) {
                Some(v) => has_token(v, profile.audience, rest),
                // A mount of the token volume the pod lacks: the webhook adds that volume.
                None => m.name.as_str() == profile.volume_name && rest == profile.token_file,
            }
        })
}

/// The warning for a container left without the identity: what is in the way.
fn conflict(
    c: &Container<'_>,
    token_file: Option<&EnvVar<'_>>,
    mount: MountState<'_>,
    profile: &Profile,
) -> String {
    let name = c.name.as_str();
    let why = match (token_file, mount) {
        (Some(var), _) if var.value.is_none() => format!("{} is set by valueFrom", profile.token_file_env),
        (Some(_), _) => format!("{} names a file no token mount provides", profile.token_file_env),
        (None, MountState::Blocked(Blocker::Mount(m))) => {
            format!("mount {m:?} at the token path is not the pod identity token")
        }
        (None, _) => format!("volume {:?} is not the pod identity token", profile.volume_name),
    };
    format!("container {name:?}: {why}; credentials not injected")
}

fn uid(association: &Association) -> String {
    patch::str_literal(&association.uid)
}

fn add<'i>(path: String, value: impl Into<Value<'i>>) -> Add<'i> {
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
