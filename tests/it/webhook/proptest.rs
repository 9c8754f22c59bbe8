//! Properties of the mutation over generated pods, checked against the API server's JSON Patch
//! semantics: any mix of containers, init containers and native sidecars; user env, volumes and
//! mounts that reuse the injected names or the token path with other sources, audiences, token
//! files, paths and `subPath`s, and the token-file variable set to other files (or by
//! `valueFrom`); annotation keys with `/` and `~`; skipped containers; mirror pods; lifetimes
//! from the association and the annotation; missing or empty lists and missing metadata.
//!
//! For every pod and both provider profiles: the patch applies; every operation is an `add`
//! whose parent exists at that point and that replaces nothing; the result keeps every user
//! field; no container ends with a duplicate mount path or env name; no container the webhook
//! touched has a token-file variable naming a file no mount provides, and every container it
//! left alone for that reason is named in a warning; a container gets the identity exactly
//! when the documented decision says it can; an added token's lifetime is in the API server's
//! range (and in the spread when nothing chose it); and mutating the result again yields an
//! empty patch.

use std::collections::HashSet;

use json_patch::{Patch, PatchOperation};
use pod_identity_webhook::profile::{Profile, Provider};
use pod_identity_webhook::testing::{Association, AssociationSpec};
use pod_identity_webhook::webhook::mutation::{
    ASSOCIATION_ANNOTATION, DEFAULT_TOKEN_EXPIRATION, INJECT_LABEL, Injection, MAX_TOKEN_EXPIRATION,
    MIN_TOKEN_EXPIRATION, MIRROR_ANNOTATION, Mutation, Pod, SKIP_CONTAINERS_ANNOTATION, Settings, Skip,
    TOKEN_EXPIRATION_ANNOTATION, mutate,
};
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Map, Value, json};

const UID: &str = "81f143f5-f469-4fb6-b17c-8f52af73184c";

fn association_with(token_expiration_seconds: Option<i64>) -> Association {
    AssociationSpec {
        namespace: "pi-demo".into(),
        service_account: "app".into(),
        agency_name: Some("demo-agency".into()),
        uid: Some(UID.into()),
        token_expiration_seconds,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn association() -> Association {
    association_with(None)
}

fn injection(p: Provider) -> Injection {
    Injection::new(
        p.profile(),
        Settings::new(p.profile(), None, DEFAULT_TOKEN_EXPIRATION),
    )
}

// ---- generators ----------------------------------------------------------------------------

/// Env names a user may set, including both profiles' injected names.
const ENV_NAMES: &[&str] = &[
    "HC_CONTAINER_CREDENTIALS_FULL_URI",
    "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "LOG_LEVEL",
    "POD_NAME",
    "PATH",
];

/// Values a user may give an env var: the injected token paths of both profiles, files under
/// the mount paths below (some a user's own token provides), and non-paths.
const ENV_VALUES: &[&str] = &[
    "/var/run/secrets/service.cce.pods/serviceaccount/cce-pod-identity-token",
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
    "/var/run/secrets/service.cce.pods/serviceaccount/token",
    "/data/token",
    "/data/cce-pod-identity-token",
    "/etc/config/eks-pod-identity-token",
    "/elsewhere/token",
    "plain user value",
    "",
];

/// Volume names, including both profiles' injected names.
const VOLUME_NAMES: &[&str] = &[
    "cce-pod-identity-token",
    "eks-pod-identity-token",
    "kube-api-access-x7k2p",
    "data",
    "config",
];

/// Audiences and token file names a projected token may have.
const AUDIENCES: &[&str] = &["service.cce.pods", "pods.eks.amazonaws.com", "sts.amazonaws.com"];
const TOKEN_FILES: &[&str] = &["cce-pod-identity-token", "eks-pod-identity-token", "token"];

/// Mount paths, including both token paths (and a trailing-slash spelling of each).
const MOUNT_PATHS: &[&str] = &[
    "/var/run/secrets/service.cce.pods/serviceaccount",
    "/var/run/secrets/service.cce.pods/serviceaccount/",
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/",
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/var/run/secrets/service.cce.pods",
    "/data",
    "/etc/config",
];

/// Container names (unique in a pod, as the API server requires).
const CONTAINER_NAMES: &[&str] = &["app", "sidecar", "init", "log-agent", "proxy", "worker", "setup"];

/// Annotation keys with `/` and `~` (JSON-pointer escapes `~1` and `~0`).
const ANNOTATION_KEYS: &[&str] = &[
    "example.com/a~b",
    "team.example.com/owner",
    "a.b/c-d_e.f",
    "x~1y",
    "~0",
    "/",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// A list field: absent, present but empty, or with items.
fn list(items: Vec<Value>, shape: u8) -> Option<Value> {
    match shape {
        0 => None,
        1 => Some(Value::Array(vec![])),
        _ => Some(Value::Array(items)),
    }
}

fn env_var() -> impl Strategy<Value = Vec<Value>> {
    subsequence(ENV_NAMES, 0..=ENV_NAMES.len())
        .prop_shuffle()
        .prop_flat_map(|names| {
            let n = names.len();
            (
                Just(names),
                proptest::collection::vec((0u8..3, prop::sample::select(ENV_VALUES)), n),
            )
        })
        .prop_map(|(names, kinds)| {
            names
                .into_iter()
                .zip(kinds)
                .map(|(name, (kind, value))| match kind {
                    0 => json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
                    _ => json!({"name": name, "value": value}),
                })
                .collect()
        })
}

fn mounts() -> impl Strategy<Value = Vec<Value>> {
    subsequence(MOUNT_PATHS, 0..=4)
        .prop_shuffle()
        .prop_flat_map(|paths| {
            let n = paths.len();
            (
                Just(paths),
                proptest::collection::vec(prop::sample::select(VOLUME_NAMES), n),
                proptest::collection::vec((any::<bool>(), 0u8..8), n),
            )
        })
        .prop_map(|(paths, names, extras)| {
            // Two spellings of one directory would be refused by the kubelet; keep one.
            let mut seen = HashSet::new();
            paths
                .into_iter()
                .zip(names)
                .zip(extras)
                .filter(|((p, _), _)| seen.insert(p.trim_end_matches('/')))
                .map(|((path, name), (ro, sub))| {
                    let mut m = json!({"name": name, "mountPath": path});
                    if ro {
                        m["readOnly"] = json!(true);
                    }
                    match sub {
                        0 => m["subPath"] = json!("token"),
                        1 => m["subPathExpr"] = json!("$(POD_NAME)"),
                        2 => m["subPath"] = json!(""),
                        _ => {}
                    }
                    m
                })
                .collect()
        })
}

/// A volume's source: what makes a volume under the injected name the injected token or not.
fn volume_source() -> impl Strategy<Value = Value> {
    let token = |audience: Option<&str>, path: &str| {
        let mut t = json!({"expirationSeconds": 3600, "path": path});
        if let Some(a) = audience {
            t["audience"] = json!(a);
        }
        json!({"projected": {"sources": [{"configMap": {"name": "ca"}}, {"serviceAccountToken": t}]}})
    };
    prop_oneof![
        Just(json!({"emptyDir": {}})),
        Just(json!({"secret": {"secretName": "mine"}})),
        Just(token(Some("service.cce.pods"), "cce-pod-identity-token")),
        Just(token(Some("pods.eks.amazonaws.com"), "eks-pod-identity-token")),
        prop::sample::select(AUDIENCES).prop_map(move |a| token(Some(a), "token")),
        (prop::sample::select(AUDIENCES), prop::sample::select(TOKEN_FILES))
            .prop_map(move |(a, p)| token(Some(a), p)),
        prop::sample::select(TOKEN_FILES).prop_map(move |p| token(None, p)),
    ]
}

/// One container without its name: (env, env shape, mounts, mounts shape, native sidecar).
type ContainerBody = (Vec<Value>, u8, Vec<Value>, u8, bool);

fn container_body() -> impl Strategy<Value = ContainerBody> {
    (env_var(), 0u8..3, mounts(), 0u8..3, any::<bool>())
}

fn build_container(name: &str, body: ContainerBody, init: bool) -> Value {
    let (env, env_shape, mounts, mounts_shape, sidecar) = body;
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    c.insert("image".into(), json!(format!("registry.example/{name}:1")));
    if init && sidecar {
        c.insert("restartPolicy".into(), json!("Always"));
    }
    if let Some(env) = list(env, env_shape) {
        c.insert("env".into(), env);
    }
    if let Some(m) = list(mounts, mounts_shape) {
        c.insert("volumeMounts".into(), m);
    }
    c.insert("resources".into(), json!({}));
    c.insert("terminationMessagePolicy".into(), json!("File"));
    Value::Object(c)
}

#[derive(Debug, Clone)]
struct PodInput {
    /// 0: no metadata; 1: metadata without annotations; 2: with annotations.
    metadata_shape: u8,
    annotation_keys: Vec<&'static str>,
    /// Which container names (by position in the pod) the skip annotation lists, plus noise.
    skip: Option<(Vec<bool>, bool)>,
    existing_association: Option<&'static str>,
    inject_label: Option<&'static str>,
    mirror: bool,
    token_expiration: Option<&'static str>,
    association_lifetime: Option<i64>,
    seed: u64,
    /// A setup of the user's own: a volume projecting a token, mounted in every container,
    /// and both profiles' token-file variables naming the file in it.
    own_token: Option<OwnToken>,
    /// 0: no spec; otherwise a spec.
    has_spec: bool,
    volumes: (Vec<(&'static str, Value)>, u8),
    init: (Vec<ContainerBody>, u8),
    containers: (Vec<ContainerBody>, u8),
    names: Vec<&'static str>,
    windows: bool,
}

#[derive(Debug, Clone)]
struct OwnToken {
    volume: &'static str,
    dir: &'static str,
    audience: &'static str,
    file: &'static str,
    sub_path: bool,
}

fn own_token() -> impl Strategy<Value = OwnToken> {
    (
        prop::sample::select(&["mine", "data", "cce-pod-identity-token", "eks-pod-identity-token"][..]),
        prop::sample::select(
            &[
                "/own",
                "/own/",
                "/var/run/secrets/service.cce.pods/serviceaccount",
                "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
            ][..],
        ),
        prop::sample::select(AUDIENCES),
        prop::sample::select(TOKEN_FILES),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(volume, dir, audience, file, sub_path)| OwnToken {
            volume,
            dir,
            audience,
            file,
            sub_path,
        })
}

fn pod_input() -> impl Strategy<Value = PodInput> {
    (
        (
            0u8..3,
            subsequence(ANNOTATION_KEYS, 0..=ANNOTATION_KEYS.len()),
            prop::option::of((proptest::collection::vec(any::<bool>(), 8), any::<bool>())),
            prop::option::weighted(0.2, prop::sample::select(vec![UID, "someone-elses-uid", ""])),
            prop::option::weighted(0.2, prop::sample::select(vec!["false", "true", ""])),
            prop::bool::weighted(0.05),
            prop::option::weighted(0.2, prop::sample::select(vec!["3600", "100", "999999", "1h"])),
            prop::option::weighted(0.2, prop::sample::select(vec![600, 7200, 172_800])),
            any::<u64>(),
            prop::option::weighted(0.3, own_token()),
        ),
        (
            prop::bool::weighted(0.9),
            (
                subsequence(VOLUME_NAMES, 0..=VOLUME_NAMES.len()).prop_flat_map(|names| {
                    let n = names.len();
                    (Just(names), proptest::collection::vec(volume_source(), n))
                        .prop_map(|(names, sources)| names.into_iter().zip(sources).collect())
                }),
                0u8..3,
            ),
            (proptest::collection::vec(container_body(), 0..3), 0u8..3),
            (proptest::collection::vec(container_body(), 0..4), 0u8..3),
            Just(CONTAINER_NAMES.to_vec()).prop_shuffle(),
            prop::bool::weighted(0.1),
        ),
    )
        .prop_map(
            |(
                (
                    metadata_shape,
                    annotation_keys,
                    skip,
                    existing_association,
                    inject_label,
                    mirror,
                    token_expiration,
                    association_lifetime,
                    seed,
                    own_token,
                ),
                (has_spec, volumes, init, containers, names, windows),
            )| PodInput {
                metadata_shape,
                annotation_keys,
                skip,
                existing_association,
                inject_label,
                mirror,
                token_expiration,
                association_lifetime,
                seed,
                own_token,
                has_spec,
                volumes,
                init,
                containers,
                names,
                windows,
            },
        )
}

/// Mounts the user's own token volume in `c` and points both token-file variables into it.
fn add_own_token(c: &mut Value, own: &OwnToken) {
    let dir = own.dir.trim_end_matches('/');
    let mounts = c
        .as_object_mut()
        .unwrap()
        .entry("volumeMounts")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap();
    mounts.retain(|m| m["mountPath"].as_str().unwrap().trim_end_matches('/') != dir);
    let mut m = json!({"name": own.volume, "mountPath": own.dir});
    if own.sub_path {
        m["subPath"] = json!(own.file);
    }
    mounts.push(m);
    let env = c
        .as_object_mut()
        .unwrap()
        .entry("env")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap();
    let file = format!("{dir}/{}", own.file);
    for name in [
        "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ] {
        env.retain(|e| e["name"] != name);
        env.push(json!({"name": name, "value": file}));
    }
}

fn build_pod(input: &PodInput) -> Value {
    let mut pod = Map::new();
    pod.insert("apiVersion".into(), json!("v1"));
    pod.insert("kind".into(), json!("Pod"));
    let mut names = input.names.iter();
    let mut all_names = Vec::new();
    let mut spec = Map::new();
    if input.has_spec {
        spec.insert("serviceAccountName".into(), json!("app"));
        spec.insert("dnsPolicy".into(), json!("ClusterFirst"));
        let vols = input
            .volumes
            .0
            .iter()
            .map(|(n, source)| {
                let mut v = source.clone();
                v["name"] = json!(n);
                v
            })
            .collect();
        if let Some(v) = list(vols, input.volumes.1) {
            spec.insert("volumes".into(), v);
        }
        if let Some(own) = &input.own_token {
            let v = json!({"name": own.volume, "projected": {"sources": [{"serviceAccountToken":
                {"audience": own.audience, "expirationSeconds": 7200, "path": own.file}}]}});
            let vols = spec.entry("volumes").or_insert_with(|| json!([]));
            let vols = vols.as_array_mut().unwrap();
            vols.retain(|x| x["name"] != own.volume);
            vols.push(v);
        }
        for (field, (bodies, shape), init) in [
            ("initContainers", &input.init, true),
            ("containers", &input.containers, false),
        ] {
            let cs = bodies
                .iter()
                .map(|b| {
                    let name = names.next().expect("enough names");
                    all_names.push(*name);
                    let mut c = build_container(name, b.clone(), init);
                    if let Some(own) = &input.own_token {
                        add_own_token(&mut c, own);
                    }
                    c
                })
                .collect();
            if let Some(cs) = list(cs, *shape) {
                spec.insert(field.into(), cs);
            }
        }
        if input.windows {
            spec.insert("nodeSelector".into(), json!({"kubernetes.io/os": "windows"}));
        }
    }
    if input.metadata_shape > 0 {
        let mut meta = Map::new();
        meta.insert("name".into(), json!("p"));
        meta.insert("namespace".into(), json!("pi-demo"));
        meta.insert("creationTimestamp".into(), Value::Null);
        if let Some(v) = input.inject_label {
            meta.insert("labels".into(), json!({INJECT_LABEL: v, "app": "demo"}));
        }
        if input.metadata_shape == 2 {
            let mut a = Map::new();
            for k in &input.annotation_keys {
                a.insert((*k).into(), json!(format!("value of {k} with ~ and /")));
            }
            if let Some((picks, noise)) = &input.skip {
                let mut listed: Vec<String> = all_names
                    .iter()
                    .zip(picks)
                    .filter(|(_, p)| **p)
                    .map(|(n, _)| (*n).to_owned())
                    .collect();
                if *noise {
                    listed.push(" not-a-container ".into());
                }
                a.insert(SKIP_CONTAINERS_ANNOTATION.into(), json!(listed.join(", ")));
            }
            if let Some(v) = input.existing_association {
                a.insert(ASSOCIATION_ANNOTATION.into(), json!(v));
            }
            if input.mirror {
                a.insert(MIRROR_ANNOTATION.into(), json!("3f2a9c"));
            }
            if let Some(v) = input.token_expiration {
                a.insert(TOKEN_EXPIRATION_ANNOTATION.into(), json!(v));
            }
            meta.insert("annotations".into(), Value::Object(a));
        }
        pod.insert("metadata".into(), Value::Object(meta));
    }
    if input.has_spec {
        pod.insert("spec".into(), Value::Object(spec));
    }
    pod.insert("status".into(), json!({}));
    Value::Object(pod)
}

// ---- the API server's view of a JSON Patch -------------------------------------------------

/// Splits a JSON pointer into unescaped tokens (RFC 6901: `~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> Vec<String> {
    assert!(pointer.starts_with('/'), "pointer {pointer:?} must start with /");
    pointer[1..]
        .split('/')
        .map(|t| {
            let b = t.as_bytes();
            assert!(
                (0..b.len()).all(|i| b[i] != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1'))),
                "bad escape in {pointer:?}"
            );
            t.replace("~1", "/").replace("~0", "~")
        })
        .collect()
}

fn resolve<'v>(doc: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Applies `patch` one operation at a time the way the API server would, failing on anything
/// this webhook promises never to do: an operation other than `add`, an `add` whose parent is
/// missing, an `add` that would replace a value or insert into the middle of an array.
fn apply_strictly(original: &Value, patch: &Patch) -> Value {
    let mut doc = original.clone();
    for op in &patch.0 {
        let PatchOperation::Add(add) = op else {
            panic!("only add operations are allowed: {op:?}");
        };
        let path = add.path.as_str();
        let toks = tokens(path);
        let (last, parent) = toks.split_last().expect("never the whole document");
        match resolve(&doc, parent) {
            Some(Value::Array(_)) => assert_eq!(last, "-", "{path}: arrays are appended to, never indexed"),
            Some(Value::Object(m)) => assert!(
                !m.contains_key(last.as_str()),
                "{path}: add would replace the existing value {}",
                m[last.as_str()]
            ),
            Some(other) => panic!("{path}: parent is {other}, not a container"),
            None => panic!("{path}: parent does not exist in {doc}"),
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op))
            .unwrap_or_else(|e| panic!("{path} does not apply: {e}"));
    }
    doc
}

fn names_of<'v>(list: Option<&'v Value>, key: &str) -> Vec<&'v str> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x[key].as_str()).collect())
        .unwrap_or_default()
}

fn assert_unique(what: &str, items: Vec<&str>) {
    let mut seen = HashSet::new();
    for i in items {
        assert!(seen.insert(i), "duplicate {what} {i:?}");
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|f| pod["spec"][f].as_array())
        .flatten()
}

fn mutate_value<'i>(
    pod: &Value,
    inj: &'i Injection,
    a: &Association,
    seed: u64,
) -> Result<Mutation<'i>, Skip> {
    let bytes = serde_json::to_vec(pod).unwrap();
    let view = Pod::from_slice(&bytes).expect("a generated pod always parses");
    mutate(&view, a, inj, seed)
}

fn volume<'p>(pod: &'p Value, name: &str) -> Option<&'p Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// Whether `volume` projects a service-account token for the profile's audience at `file`.
fn projects(volume: Option<&Value>, profile: &Profile, file: &str) -> bool {
    let Some(sources) = volume.and_then(|v| v["projected"]["sources"].as_array()) else {
        return false;
    };
    sources.iter().any(|s| {
        let t = &s["serviceAccountToken"];
        t["audience"] == profile.audience && t["path"] == file
    })
}

fn has_sub_path(mount: &Value) -> bool {
    ["subPath", "subPathExpr"]
        .iter()
        .any(|k| mount[*k].as_str().is_some_and(|s| !s.is_empty()))
}

/// Whether, in `pod`, container `c` has the file `file` holding a token with the profile's
/// audience: a whole-volume mount of a volume that projects one at the rest of the path.
fn provides(pod: &Value, c: &Value, file: &str, profile: &Profile) -> bool {
    let mounts = c["volumeMounts"].as_array().into_iter().flatten();
    mounts.filter(|m| !has_sub_path(m)).any(|m| {
        let dir = m["mountPath"].as_str().unwrap().trim_end_matches('/');
        let rest = file.strip_prefix(dir).and_then(|r| r.strip_prefix('/'));
        rest.is_some_and(|rest| projects(volume(pod, m["name"].as_str().unwrap()), profile, rest))
    })
}

fn env_entry<'c>(c: &'c Value, name: &str) -> Option<&'c Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

/// The decision docs/concepts.md describes, written from the pod's side: a container can have the identity when
/// nothing of the user's stands at the token path or under the volume name (or what stands
/// there is the token itself), and its token-file variable, if the user set one, names a file
/// a token mount provides once the injected volume and mount are in place.
fn can_serve(pod: &Value, c: &Value, profile: &Profile) -> bool {
    let theirs = volume(pod, profile.volume_name);
    let foreign = theirs.is_some() && !projects(theirs, profile, profile.token_file);
    let mounts: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
    let at_path = mounts
        .iter()
        .find(|m| m["mountPath"].as_str().unwrap().trim_end_matches('/') == profile.mount_path);
    let mount_ok = !foreign && at_path.is_none_or(|m| m["name"] == profile.volume_name && !has_sub_path(m));
    let Some(var) = env_entry(c, profile.token_file_env) else {
        return mount_ok;
    };
    let Some(file) = var["value"].as_str() else {
        return false;
    };
    // The pod as it would be with the injected volume (if it has none of that name) and
    // mount (if nothing is in the way) added.
    let mut ready = pod.clone();
    let mut container = c.clone();
    if theirs.is_none() {
        let ours = json!({"name": profile.volume_name, "projected": {"sources": [
            {"serviceAccountToken": {"audience": profile.audience, "path": profile.token_file}}]}});
        match ready["spec"]["volumes"].as_array_mut() {
            Some(vs) => vs.push(ours),
            None => ready["spec"]["volumes"] = json!([ours]),
        }
    }
    if mount_ok && at_path.is_none() {
        let ours = json!({"name": profile.volume_name, "mountPath": profile.mount_path});
        match container["volumeMounts"].as_array_mut() {
            Some(ms) => ms.push(ours),
            None => container["volumeMounts"] = json!([ours]),
        }
    }
    provides(&ready, &container, file, profile)
}

/// Every property for one pod and one profile.
fn check(pod: &Value, provider: Provider, input: &PodInput) {
    let inj = injection(provider);
    let profile = provider.profile();
    let assoc = association_with(input.association_lifetime);
    let skipped: Vec<&str> = pod["metadata"]["annotations"][SKIP_CONTAINERS_ANNOTATION]
        .as_str()
        .map(|s| s.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let all: Vec<&Value> = containers(pod).collect();
    let targets: Vec<&str> = all
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| !skipped.contains(n))
        .collect();

    let mutation = match mutate_value(pod, &inj, &assoc, input.seed) {
        Err(Skip::OptedOut) => {
            assert_eq!(pod["metadata"]["labels"][INJECT_LABEL], "false");
            return;
        }
        Err(Skip::MirrorPod) => {
            assert!(pod["metadata"]["annotations"].get(MIRROR_ANNOTATION).is_some());
            return;
        }
        Err(Skip::NoContainers) => {
            assert!(all.is_empty(), "{pod}");
            return;
        }
        Err(Skip::AllContainersSkipped) => {
            assert!(!all.is_empty() && targets.is_empty(), "{pod}");
            return;
        }
        Ok(m) => m,
    };
    assert_ne!(pod["metadata"]["labels"][INJECT_LABEL], "false");
    assert!(pod["metadata"]["annotations"].get(MIRROR_ANNOTATION).is_none());
    assert!(!targets.is_empty());

    // The patch applies as a whole, and step by step under the API server's rules.
    let mut whole = pod.clone();
    let patch = mutation.patch.to_json_patch();
    json_patch::patch(&mut whole, &patch.0).expect("patch applies");
    let out = apply_strictly(pod, &patch);
    assert_eq!(out, whole);

    // Nothing of the user's is changed or removed: the difference is additions only.
    for op in json_patch::diff(pod, &out).0 {
        assert!(
            matches!(op, PatchOperation::Add(_)),
            "the result changes a user field: {op:?}"
        );
    }
    assert_unique("volume", names_of(out["spec"].get("volumes"), "name"));

    let (mut served, mut unserved) = (0, 0);
    for c in containers(&out) {
        let name = c["name"].as_str().unwrap();
        let paths: Vec<&str> = names_of(c.get("volumeMounts"), "mountPath")
            .into_iter()
            .map(|p| p.trim_end_matches('/'))
            .collect();
        assert_unique(&format!("mountPath in {name}"), paths);
        assert_unique(&format!("env name in {name}"), names_of(c.get("env"), "name"));
        let before = all.iter().find(|b| b["name"] == name).unwrap();
        if !targets.contains(&name) {
            assert_eq!(c, *before, "skipped container {name} changed");
            continue;
        }
        let file = env_entry(c, profile.token_file_env).and_then(|e| e["value"].as_str());
        let has_identity = file.is_some_and(|f| provides(&out, c, f, profile))
            && env_entry(c, profile.endpoint_env).is_some();
        // The decision is the documented one.
        assert_eq!(
            has_identity,
            can_serve(pod, before, profile),
            "{name}: identity {has_identity} against the decision\nin:  {before}\nout: {c}\nvolumes: {}",
            out["spec"]["volumes"]
        );
        if has_identity {
            served += 1;
            if env_entry(before, profile.token_file_env).is_none() {
                assert_eq!(file, Some(profile.token_path().as_str()));
            }
        } else {
            // Never an env var naming a file no mount provides: a container left without the
            // identity is left as it was, and a warning says which and why.
            unserved += 1;
            assert_eq!(c, *before, "{name} was changed but has no identity");
            let prefix = format!("container {name:?}: ");
            assert!(
                mutation.warnings.iter().any(|w| w.starts_with(&prefix)),
                "no warning names {name}: {:?}",
                mutation.warnings
            );
        }
    }
    assert_eq!((mutation.served, mutation.unserved), (served, unserved));

    let annotation = &out["metadata"]["annotations"][ASSOCIATION_ANNOTATION];
    if served == 0 {
        assert_eq!(&out, pod, "nothing is added when no container has the identity");
    } else {
        match pod["metadata"]["annotations"].get(ASSOCIATION_ANNOTATION) {
            Some(user) => assert_eq!(annotation, user),
            None => assert_eq!(annotation, UID),
        }
    }

    // An added token's lifetime is one the API server takes; the default one is spread.
    if let (None, Some(v)) = (
        volume(pod, profile.volume_name),
        volume(&out, profile.volume_name),
    ) {
        let seconds = v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"]
            .as_i64()
            .unwrap();
        assert!((MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(&seconds));
        let annotated = pod["metadata"]["annotations"].get(TOKEN_EXPIRATION_ANNOTATION);
        if input.association_lifetime.is_none() && annotated.is_none() {
            assert!((79_200..=86_400).contains(&seconds), "{seconds}");
        }
    }

    // Idempotent: the webhook on its own output adds nothing (reinvocationPolicy: IfNeeded).
    let again =
        mutate_value(&out, &inj, &assoc, input.seed.wrapping_add(1)).expect("the result is not skipped");
    assert!(
        again.patch.is_empty(),
        "second run patched again: {:?}",
        again.patch
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn cce_patches_follow_the_api_server_rules(input in pod_input()) {
        check(&build_pod(&input), Provider::Cce, &input);
    }

    #[test]
    fn eks_patches_follow_the_api_server_rules(input in pod_input()) {
        check(&build_pod(&input), Provider::Eks, &input);
    }
}

// ---- regressions ---------------------------------------------------------------------------

mod regressions {
    use base64::Engine;
    use pod_identity_webhook::testing::{Index, Reader};
    use pod_identity_webhook::webhook::wire::Admission;
    use serde_json::{Value, json};

    use super::*;

    fn admission() -> Admission {
        Admission {
            associations: Reader::fixed(Index::build([association()]).unwrap()),
            injection: injection(Provider::Cce),
        }
    }

    fn review(object: Value) -> Value {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "pi-demo",
                "operation": "CREATE",
                "object": object,
            }
        });
        let answer = admission().review(&serde_json::to_vec(&body).unwrap());
        assert_eq!(answer.status, 200);
        serde_json::from_slice::<Value>(&answer.body).unwrap()["response"].clone()
    }

    /// Found writing the `review` fuzz target's check that a returned patch applies to the
    /// request's object (a review of the pod view, not a libFuzzer run): serde's derive read a struct from an array of its
    /// fields, so a pod (or its metadata, spec, a container, a volume, an env var or a mount)
    /// written as an array was taken as an empty one, and the patch for it (`add /spec`,
    /// `add /metadata/annotations`, `add .../volumeMounts`) could not apply: the API server
    /// would have failed the admission with an opaque patch error. Now such an object is
    /// denied with the reason, like any other object that cannot be read as a Pod.
    #[test]
    fn an_object_written_as_an_array_is_denied_not_given_a_patch_that_cannot_apply() {
        for object in [
            json!([]),
            json!([null, {"serviceAccountName": "app"}]),
            json!({"metadata": [], "spec": {"serviceAccountName": "app", "containers": [{"name": "c"}]}}),
            json!({"spec": []}),
            json!({"spec": {"serviceAccountName": "app", "containers": [["c"]]}}),
            json!({"spec": {"serviceAccountName": "app", "containers": [{"name": "c", "volumeMounts": [["cce-pod-identity-token", "/x"]]}]}}),
            json!({"spec": {"serviceAccountName": "app", "volumes": [["cce-pod-identity-token"]], "containers": [{"name": "c"}]}}),
        ] {
            let r = review(object.clone());
            assert_eq!(r["allowed"], false, "{object}: {r}");
            assert!(r.get("patch").is_none(), "{object}: {r}");
            assert_eq!(r["status"]["code"], 400, "{object}: {r}");
            let message = r["status"]["message"].as_str().unwrap();
            assert!(message.contains("cannot read the object as a Pod"), "{message}");
        }
        // The same pods written as objects are injected, and the patch applies.
        let object = json!({"spec": {"serviceAccountName": "app", "containers": [{"name": "c"}]}});
        let r = review(object.clone());
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        apply_strictly(&object, &patch);
    }
}
