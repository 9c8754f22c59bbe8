use serde_json::{Value, json};

use super::*;
use crate::association::AssociationSpec;
use crate::profile::{self, Provider};

fn assoc_with(token_expiration_seconds: Option<i64>) -> Association {
    AssociationSpec {
        namespace: "ns".into(),
        service_account: "app".into(),
        agency_name: Some("agency".into()),
        uid: Some("uid-1".into()),
        token_expiration_seconds,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn assoc() -> Association {
    assoc_with(None)
}

/// Leaked so a test's patch can borrow it for as long as the test runs.
fn inj_with(p: Provider, region: Option<&str>) -> &'static Injection {
    let profile = p.profile();
    let mut settings = Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION);
    settings.region = region.map(str::to_owned);
    Box::leak(Box::new(Injection::new(profile, settings)))
}

fn inj(p: Provider) -> &'static Injection {
    inj_with(p, None)
}

/// Mutates `pod` (seed 0: no jitter), applies the patch and returns the result and the patch.
fn run<'i>(pod: &Value, inj: &'i Injection) -> (Value, Mutation<'i>) {
    run_with(pod, inj, &assoc(), 0)
}

fn run_with<'i>(pod: &Value, inj: &'i Injection, a: &Association, seed: u64) -> (Value, Mutation<'i>) {
    let bytes = serde_json::to_vec(pod).unwrap();
    let view = Pod::from_slice(&bytes).unwrap();
    let m = mutate(&view, a, inj, seed).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &m.patch.to_json_patch().0).unwrap();
    (out, m)
}

fn again_is_empty(pod: &Value, inj: &Injection) {
    let bytes = serde_json::to_vec(pod).unwrap();
    let m = mutate(&Pod::from_slice(&bytes).unwrap(), &assoc(), inj, 7).unwrap();
    assert!(m.patch.is_empty(), "second mutation not empty: {:?}", m.patch);
}

fn env(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or("").to_owned())
}

fn lifetime(out: &Value, volume: &str) -> i64 {
    let v = out["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap();
    v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"]
        .as_i64()
        .unwrap()
}

const CCE_VOLUME: &str = "cce-pod-identity-token";
const CCE_DIR: &str = "/var/run/secrets/service.cce.pods/serviceaccount";
const CCE_FILE_ENV: &str = "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE";
const CCE_URI_ENV: &str = "HC_CONTAINER_CREDENTIALS_FULL_URI";

fn token_volume(name: &str, audience: &str, path: &str) -> Value {
    json!({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"serviceAccountToken": {"audience": audience, "expirationSeconds": 86400, "path": path}},
    ]}})
}

#[test]
fn both_profiles_use_the_design_names() {
    for (p, aud, uri_env, file_env, vol, mount) in [
        (
            Provider::Cce,
            "service.cce.pods",
            CCE_URI_ENV,
            CCE_FILE_ENV,
            CCE_VOLUME,
            CCE_DIR,
        ),
        (
            Provider::Eks,
            "pods.eks.amazonaws.com",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "eks-pod-identity-token",
            "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
        ),
    ] {
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let (out, m) = run(&pod, inj(p));
        assert_eq!((m.served, m.unserved), (1, 0));
        let v = &out["spec"]["volumes"][0];
        assert_eq!(v["name"], vol);
        let sat = &v["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(sat["audience"], aud);
        assert_eq!(sat["expirationSeconds"], 86400);
        assert_eq!(sat["path"], vol);
        let c = &out["spec"]["containers"][0];
        assert_eq!(
            c["volumeMounts"][0],
            json!({"name": vol, "mountPath": mount, "readOnly": true})
        );
        assert_eq!(env(c, uri_env).unwrap(), "http://169.254.170.23/v1/credentials");
        assert_eq!(env(c, file_env).unwrap(), format!("{mount}/{vol}"));
        assert_eq!(out["metadata"]["annotations"][ASSOCIATION_ANNOTATION], "uid-1");
        again_is_empty(&out, inj(p));
    }
}

#[test]
fn settings_clamp_expiration_and_override_the_endpoint() {
    let s = Settings::new(&profile::CCE, Some("http://10.0.0.1/c".into()), 60);
    assert_eq!(s.token_expiration, 600);
    assert_eq!(s.credentials_uri, "http://10.0.0.1/c");
    assert_eq!(
        Settings::new(&profile::CCE, Some(String::new()), 7200).credentials_uri,
        profile::CCE.default_endpoint
    );
    assert_eq!(Settings::new(&profile::CCE, None, 7200).token_expiration, 7200);
    assert_eq!(
        Settings::new(&profile::CCE, None, 1 << 40).token_expiration,
        MAX_TOKEN_EXPIRATION
    );
}

#[test]
fn appends_to_existing_arrays_and_never_replaces_them() {
    let pod = json!({
        "metadata": {"annotations": {"a": "b"}},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "env": [{"name": "X", "value": "1"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}], "unknownField": 3}]
        }
    });
    let (out, m) = run(&pod, inj(Provider::Cce));
    for a in &m.patch.0 {
        assert!(
            a.path.as_str().ends_with("/-") || a.path.as_str().contains("annotations/"),
            "{}",
            a.path
        );
    }
    let c = &out["spec"]["containers"][0];
    assert_eq!(c["env"][0], json!({"name": "X", "value": "1"}));
    assert_eq!(c["volumeMounts"][0]["name"], "data");
    assert_eq!(c["unknownField"], 3);
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
    assert_eq!(out["metadata"]["annotations"]["a"], "b");
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn a_users_endpoint_wins_and_the_rest_is_injected() {
    let pod = json!({"spec": {"containers": [{"name": "c",
        "env": [{"name": CCE_URI_ENV, "value": "http://127.0.0.1:9999/custom"}]}]}});
    let (out, m) = run(&pod, inj(Provider::Cce));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let c = &out["spec"]["containers"][0];
    assert_eq!(env(c, CCE_URI_ENV).unwrap(), "http://127.0.0.1:9999/custom");
    assert_eq!(env(c, CCE_FILE_ENV).unwrap(), profile::CCE.token_path());
    assert_eq!(c["env"].as_array().unwrap().len(), 2);
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn already_injected_means_the_same_token_audience_and_path() {
    let pod = json!({"metadata": {"annotations": {ASSOCIATION_ANNOTATION: "uid-1"}}, "spec": {
        "volumes": [token_volume(CCE_VOLUME, "service.cce.pods", CCE_VOLUME)],
        "containers": [{"name": "c",
            "volumeMounts": [{"name": CCE_VOLUME, "mountPath": CCE_DIR}],
            "env": [{"name": CCE_URI_ENV, "value": "http://x"}, {"name": CCE_FILE_ENV, "value": profile::CCE.token_path()}]}]
    }});
    let (_, m) = run(&pod, inj(Provider::Cce));
    assert!(m.patch.is_empty() && m.warnings.is_empty(), "{m:?}");
    assert_eq!((m.served, m.unserved), (1, 0));
}

/// A user's volume under the injected name that is not the injected token: the container gets
/// no env vars (they would name a file that never exists) and the answer says why.
#[test]
fn a_volume_under_the_token_name_that_is_not_the_token_gets_a_warning_not_env_vars() {
    for volume in [
        json!({"name": CCE_VOLUME, "emptyDir": {}}),
        json!({"name": CCE_VOLUME, "secret": {"secretName": "mine"}}),
        token_volume(CCE_VOLUME, "sts.amazonaws.com", CCE_VOLUME),
        token_volume(CCE_VOLUME, "service.cce.pods", "token"),
        json!({"name": CCE_VOLUME, "projected": {"sources": [{"serviceAccountToken": {"path": CCE_VOLUME}}]}}),
    ] {
        for mounts in [
            json!([]),
            json!([{"name": CCE_VOLUME, "mountPath": CCE_DIR}]),
            json!([{"name": CCE_VOLUME, "mountPath": "/elsewhere"}]),
        ] {
            let pod = json!({"spec": {"volumes": [volume], "containers": [{"name": "app", "volumeMounts": mounts}]}});
            let (out, m) = run(&pod, inj(Provider::Cce));
            assert!(m.patch.is_empty(), "{volume} {mounts}: {:?}", m.patch);
            assert_eq!((m.served, m.unserved), (0, 1));
            assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
            let w = &m.warnings[0];
            assert!(
                w.contains("\"app\"") && w.contains(CCE_VOLUME) && w.contains("not injected"),
                "{w}"
            );
            assert!(w.len() <= 120, "warnings stay short: {w}");
            assert_eq!(out, pod);
        }
    }
}

#[test]
fn a_foreign_mount_at_the_token_path_is_kept_with_a_warning() {
    for mount in [
        json!({"name": "other", "mountPath": format!("{CCE_DIR}/")}),
        json!({"name": CCE_VOLUME, "mountPath": CCE_DIR, "subPath": "x"}),
        json!({"name": CCE_VOLUME, "mountPath": CCE_DIR, "subPathExpr": "$(POD)"}),
    ] {
        let pod = json!({"spec": {"volumes": [{"name": "other", "emptyDir": {}}], "containers": [{"name": "c", "volumeMounts": [mount]}]}});
        let (out, m) = run(&pod, inj(Provider::Cce));
        assert_eq!(out, pod, "{mount}");
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        let name = mount["name"].as_str().unwrap();
        assert!(
            m.warnings[0].contains(&format!("mount {name:?} at the token path")),
            "{}",
            m.warnings[0]
        );
        assert!(
            m.warnings[0].len() <= 120,
            "warnings stay short: {}",
            m.warnings[0]
        );
    }
}

#[test]
fn the_token_file_var_set_elsewhere_gets_no_endpoint_unless_a_token_is_there() {
    for (value, volumes, mounts, provided) in [
        // No mount provides /mine/token.
        (json!("/mine/token"), json!([]), json!([]), false),
        // The injected mount is there, but the var names another file.
        (
            json!("/mine/token"),
            json!([token_volume(CCE_VOLUME, "service.cce.pods", CCE_VOLUME)]),
            json!([{"name": CCE_VOLUME, "mountPath": CCE_DIR}]),
            false,
        ),
        // A mount of a volume projecting another audience.
        (
            json!("/mine/token"),
            json!([token_volume("mine", "sts.amazonaws.com", "token")]),
            json!([{"name": "mine", "mountPath": "/mine"}]),
            false,
        ),
        // Through a subPath the file is not where the var says.
        (
            json!("/mine/token"),
            json!([token_volume("mine", "service.cce.pods", "token")]),
            json!([{"name": "mine", "mountPath": "/mine", "subPath": "token"}]),
            false,
        ),
        (json!(""), json!([]), json!([]), false),
        // The user's own projected token with the profile's audience provides it.
        (
            json!("/mine/token"),
            json!([token_volume("mine", "service.cce.pods", "token")]),
            json!([{"name": "mine", "mountPath": "/mine/"}]),
            true,
        ),
        // The volume under the injected name projects the audience under another file name:
        // not the injected token, but the file the var names exists.
        (
            json!("/mine/other"),
            json!([token_volume(CCE_VOLUME, "service.cce.pods", "other")]),
            json!([{"name": CCE_VOLUME, "mountPath": "/mine"}]),
            true,
        ),
        // The injected path, before the mount is there: the webhook adds the mount.
        (json!(profile::CCE.token_path()), json!([]), json!([]), true),
        // The injected volume, mounted by the user elsewhere.
        (
            json!(format!("/elsewhere/{CCE_VOLUME}")),
            json!([token_volume(CCE_VOLUME, "service.cce.pods", CCE_VOLUME)]),
            json!([{"name": CCE_VOLUME, "mountPath": "/elsewhere"}]),
            true,
        ),
    ] {
        let pod = json!({"spec": {"volumes": volumes, "containers": [{"name": "app",
            "volumeMounts": mounts, "env": [{"name": CCE_FILE_ENV, "value": value}]}]}});
        let (out, m) = run(&pod, inj(Provider::Cce));
        let c = &out["spec"]["containers"][0];
        assert_eq!(
            env(c, CCE_FILE_ENV).as_deref(),
            value.as_str(),
            "the user's value stays"
        );
        if provided {
            assert!(m.warnings.is_empty(), "{value} {mounts}: {:?}", m.warnings);
            assert!(env(c, CCE_URI_ENV).is_some(), "{value}");
            assert_eq!(m.served, 1);
            again_is_empty(&out, inj(Provider::Cce));
        } else {
            assert!(m.patch.is_empty(), "{value} {mounts}: {:?}", m.patch);
            assert_eq!((m.served, m.unserved), (0, 1));
            assert!(
                m.warnings[0].contains(&format!("{CCE_FILE_ENV} names a file no token mount provides")),
                "{:?}",
                m.warnings
            );
        }
    }
    let pod = json!({"spec": {"containers": [{"name": "app", "env": [{"name": CCE_FILE_ENV,
        "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]}]}});
    let (_, m) = run(&pod, inj(Provider::Cce));
    assert!(m.patch.is_empty());
    assert!(m.warnings[0].contains("valueFrom"), "{:?}", m.warnings);
}

#[test]
fn the_injected_volume_mounted_elsewhere_is_also_mounted_at_the_token_path() {
    let pod = json!({"spec": {
        "volumes": [token_volume(CCE_VOLUME, "service.cce.pods", CCE_VOLUME)],
        "containers": [{"name": "c", "volumeMounts": [{"name": CCE_VOLUME, "mountPath": "/mine"}]}]
    }});
    let (out, m) = run(&pod, inj(Provider::Cce));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let c = &out["spec"]["containers"][0];
    assert_eq!(c["volumeMounts"][1]["mountPath"], CCE_DIR);
    assert_eq!(env(c, CCE_FILE_ENV).unwrap(), profile::CCE.token_path());
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 1);
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn partial_states_are_completed() {
    // Mount there, volume and env vars missing.
    let pod = json!({"spec": {"containers": [{"name": "c", "volumeMounts": [{"name": CCE_VOLUME, "mountPath": CCE_DIR}]}]}});
    let (out, m) = run(&pod, inj(Provider::Cce));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    assert_eq!(out["spec"]["volumes"][0]["name"], CCE_VOLUME);
    assert!(env(&out["spec"]["containers"][0], CCE_URI_ENV).is_some());
    again_is_empty(&out, inj(Provider::Cce));
    // Volume there, nothing in the container.
    let pod = json!({"spec": {"volumes": [token_volume(CCE_VOLUME, "service.cce.pods", CCE_VOLUME)], "containers": [{"name": "c"}]}});
    let (out, _) = run(&pod, inj(Provider::Cce));
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        CCE_DIR
    );
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn one_blocked_container_does_not_stop_the_others() {
    let pod = json!({"spec": {"containers": [
        {"name": "app"},
        {"name": "legacy", "env": [{"name": CCE_FILE_ENV, "value": "/old/token"}]},
    ]}});
    let (out, m) = run(&pod, inj(Provider::Cce));
    assert_eq!((m.served, m.unserved), (1, 1));
    assert_eq!(m.warnings.len(), 1);
    assert!(
        m.warnings[0].starts_with("container \"legacy\""),
        "{:?}",
        m.warnings
    );
    assert!(env(&out["spec"]["containers"][0], CCE_URI_ENV).is_some());
    assert_eq!(out["spec"]["containers"][1], pod["spec"]["containers"][1]);
    assert_eq!(out["metadata"]["annotations"][ASSOCIATION_ANNOTATION], "uid-1");
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn init_containers_sidecars_and_skips() {
    let pod = json!({
        "metadata": {"annotations": {SKIP_CONTAINERS_ANNOTATION: " proxy , other"}},
        "spec": {
            "initContainers": [{"name": "setup"}, {"name": "sidecar", "restartPolicy": "Always"}],
            "containers": [{"name": "app"}, {"name": "proxy"}]
        }
    });
    let (out, _) = run(&pod, inj(Provider::Cce));
    for path in [
        "/spec/initContainers/0",
        "/spec/initContainers/1",
        "/spec/containers/0",
    ] {
        let c = out.pointer(path).unwrap();
        assert_eq!(c["env"].as_array().unwrap().len(), 2, "{path}");
        assert_eq!(c["volumeMounts"].as_array().unwrap().len(), 1, "{path}");
    }
    assert!(out.pointer("/spec/containers/1/env").is_none());
    assert!(out.pointer("/spec/containers/1/volumeMounts").is_none());
    again_is_empty(&out, inj(Provider::Cce));
}

fn skip_of(pod: Value) -> Result<(), Skip> {
    let bytes = serde_json::to_vec(&pod).unwrap();
    mutate(&Pod::from_slice(&bytes).unwrap(), &assoc(), inj(Provider::Cce), 0).map(|_| ())
}

#[test]
fn opted_out_mirror_empty_and_all_skipped_pods_get_no_patch() {
    let c = json!([{"name": "c"}]);
    let cases = [
        (
            json!({"metadata": {"labels": {INJECT_LABEL: "false"}}, "spec": {"containers": c}}),
            Skip::OptedOut,
        ),
        (
            json!({"metadata": {"annotations": {SKIP_CONTAINERS_ANNOTATION: "c"}}, "spec": {"containers": c}}),
            Skip::AllContainersSkipped,
        ),
        (
            json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "3f2a"}}, "spec": {"containers": c}}),
            Skip::MirrorPod,
        ),
        (json!({}), Skip::NoContainers),
        (json!({"spec": {"contaners": c}}), Skip::NoContainers),
        (
            json!({"spec": {"containers": [], "initContainers": []}}),
            Skip::NoContainers,
        ),
    ];
    for (pod, skip) in cases {
        assert_eq!(skip_of(pod.clone()), Err(skip), "{pod}");
    }
    assert!(Skip::MirrorPod.warns() && Skip::MirrorPod.reason().contains("static pod"));
    assert!(Skip::NoContainers.reason().contains("no containers"));
    assert!(!Skip::OptedOut.warns());
    // Any other label value injects.
    let pod = json!({"metadata": {"labels": {INJECT_LABEL: "true"}}, "spec": {"containers": c}});
    let (out, _) = run(&pod, inj(Provider::Cce));
    assert!(out["spec"]["volumes"].is_array());
}

#[test]
fn annotation_keys_with_slash_and_tilde_are_escaped() {
    let pod = json!({"metadata": {"annotations": {"example.com/a~b": "x"}}, "spec": {"containers": [{"name": "c"}]}});
    let (out, m) = run(&pod, inj(Provider::Cce));
    let a = &m.patch.0[0];
    assert_eq!(
        a.path.as_str(),
        "/metadata/annotations/podidentity.io~1association"
    );
    assert_eq!(out["metadata"]["annotations"]["example.com/a~b"], "x");
    assert_eq!(out["metadata"]["annotations"][ASSOCIATION_ANNOTATION], "uid-1");
}

#[test]
fn windows_pods_get_a_warning() {
    let pod =
        json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": [{"name": "c"}]}});
    let (_, m) = run(&pod, inj(Provider::Cce));
    assert!(m.warnings.iter().any(|w| w.contains("Windows")));
}

fn with_annotation(value: &str) -> Value {
    json!({"metadata": {"annotations": {TOKEN_EXPIRATION_ANNOTATION: value}}, "spec": {"containers": [{"name": "c"}]}})
}

#[test]
fn the_default_lifetime_is_spread_per_pod_within_the_last_twelfth() {
    let pod = json!({"spec": {"containers": [{"name": "c"}]}});
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..2000u64 {
        let seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (out, m) = run_with(&pod, inj(Provider::Cce), &assoc(), seed);
        let s = lifetime(&out, CCE_VOLUME);
        assert!((79_200..=86_400).contains(&s), "{s}");
        assert!(m.warnings.is_empty());
        // Deterministic: the same seed, the same lifetime.
        assert_eq!(
            lifetime(&run_with(&pod, inj(Provider::Cce), &assoc(), seed).0, CCE_VOLUME),
            s
        );
        seen.insert(s);
        if seed % 100 == 0 {
            again_is_empty(&out, inj(Provider::Cce));
        }
    }
    assert!(seen.len() > 1000, "only {} distinct lifetimes", seen.len());
    assert!(
        seen.first() < Some(&80_000) && seen.last() > Some(&85_600),
        "{seen:?}"
    );
    // The spread never goes below the API server's minimum.
    for base in [600, 601, 7000] {
        for seed in 0..50 {
            let j = jitter(base, seed);
            assert!(
                (MIN_TOKEN_EXPIRATION..=base).contains(&j) && j >= base - base / 12,
                "{base} {j}"
            );
        }
    }
}

#[test]
fn association_and_annotation_lifetimes_are_used_exactly_and_clamped_with_a_warning() {
    let cce = inj(Provider::Cce);
    for (association, annotation, want, warning) in [
        (Some(3600), None, 3600, None),
        (Some(3600), Some("1800"), 1800, None),
        (None, Some(" 7200 "), 7200, None),
        (Some(3600), Some("7200"), 3600, Some("may only lower")),
        (None, Some("90000"), -1, Some("may only lower")),
        (None, Some("1h"), -1, Some("not a whole number")),
        (
            Some(3600),
            Some("60"),
            600,
            Some("podidentity.io/token-expiration 60 is outside"),
        ),
        (Some(172_800), None, MAX_TOKEN_EXPIRATION, None),
    ] {
        let pod = match annotation {
            Some(a) => with_annotation(a),
            None => json!({"spec": {"containers": [{"name": "c"}]}}),
        };
        let seed = 12345;
        let (out, m) = run_with(&pod, cce, &assoc_with(association), seed);
        let got = lifetime(&out, CCE_VOLUME);
        let want = if want < 0 {
            jitter(DEFAULT_TOKEN_EXPIRATION, seed)
        } else {
            want
        };
        assert_eq!(got, want, "{association:?} {annotation:?}");
        match warning {
            None => assert!(m.warnings.is_empty(), "{:?}", m.warnings),
            Some(w) => assert!(m.warnings.iter().any(|x| x.contains(w)), "{w}: {:?}", m.warnings),
        }
        // A second pass neither adds nor warns about the lifetime again.
        let bytes = serde_json::to_vec(&out).unwrap();
        let again = mutate(
            &Pod::from_slice(&bytes).unwrap(),
            &assoc_with(association),
            cce,
            1,
        )
        .unwrap();
        assert!(again.patch.is_empty() && again.warnings.is_empty(), "{again:?}");
    }
}

#[test]
fn the_seed_is_the_pods_name_or_else_the_requests_uid() {
    let seed = |pod: Value, ns: &str, uid: &str| {
        let bytes = serde_json::to_vec(&pod).unwrap();
        jitter_seed(&Pod::from_slice(&bytes).unwrap(), ns, uid)
    };
    let named = |n: &str| json!({"metadata": {"name": n}});
    assert_eq!(seed(named("a"), "ns", "u1"), seed(named("a"), "ns", "u2"));
    assert_ne!(seed(named("a"), "ns", "u"), seed(named("b"), "ns", "u"));
    assert_ne!(seed(named("a"), "ns", "u"), seed(named("a"), "other", "u"));
    let generated = json!({"metadata": {"generateName": "web-7f9c-"}});
    assert_ne!(
        seed(generated.clone(), "ns", "u1"),
        seed(generated.clone(), "ns", "u2")
    );
    assert_eq!(seed(generated.clone(), "ns", "u1"), seed(generated, "ns", "u1"));
}

#[test]
fn eks_region_variables_are_injected_unless_the_user_chose() {
    let eks = inj_with(Provider::Eks, Some("eu-west-1"));
    let (out, m) = run(&json!({"spec": {"containers": [{"name": "c"}]}}), eks);
    assert!(m.warnings.is_empty());
    let c = &out["spec"]["containers"][0];
    assert_eq!(env(c, "AWS_REGION").as_deref(), Some("eu-west-1"));
    assert_eq!(env(c, "AWS_DEFAULT_REGION").as_deref(), Some("eu-west-1"));
    assert_eq!(env(c, "AWS_STS_REGIONAL_ENDPOINTS").as_deref(), Some("regional"));
    again_is_empty(&out, eks);

    for (user, kept) in [
        ("AWS_REGION", ["AWS_REGION"]),
        ("AWS_DEFAULT_REGION", ["AWS_DEFAULT_REGION"]),
        ("AWS_STS_REGIONAL_ENDPOINTS", ["AWS_STS_REGIONAL_ENDPOINTS"]),
    ] {
        let pod = json!({"spec": {"containers": [{"name": "c", "env": [{"name": user, "value": "mine"}]}]}});
        let (out, _) = run(&pod, eks);
        let c = &out["spec"]["containers"][0];
        assert_eq!(env(c, kept[0]).as_deref(), Some("mine"));
        let names: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let region_vars = names.iter().filter(|n| n.ends_with("REGION")).count();
        if user.ends_with("REGION") {
            // The user's region stands alone: the other region variable is not set against it.
            assert_eq!(region_vars, 1, "{names:?}");
            assert!(names.contains(&"AWS_STS_REGIONAL_ENDPOINTS"), "{names:?}");
        } else {
            assert_eq!(region_vars, 2, "{names:?}");
        }
        assert_eq!(names.iter().filter(|n| **n == user).count(), 1);
        again_is_empty(&out, eks);
    }
    // Without a region, or for cce, nothing of the kind.
    for inj in [inj(Provider::Eks), inj_with(Provider::Cce, Some("eu-west-1"))] {
        let (out, _) = run(&json!({"spec": {"containers": [{"name": "c"}]}}), inj);
        assert_eq!(out["spec"]["containers"][0]["env"].as_array().unwrap().len(), 2);
    }
}
