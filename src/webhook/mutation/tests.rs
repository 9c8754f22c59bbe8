use serde_json::{Value, json};

use super::*;
use crate::association::AssociationSpec;
use crate::profile::{self, Provider};

fn assoc() -> Association {
    AssociationSpec {
        namespace: "ns".into(),
        service_account: "app".into(),
        agency_name: Some("agency".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    }
    .validate()
    .unwrap()
}

/// Leaked so a test's patch can borrow it for as long as the test runs.
fn inj(p: Provider) -> &'static Injection {
    let profile = p.profile();
    Box::leak(Box::new(Injection::new(
        profile,
        Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION),
    )))
}

/// Mutates `pod`, applies the patch and returns the result and the patch.
fn run<'i>(pod: &Value, inj: &'i Injection) -> (Value, Mutation<'i>) {
    let bytes = serde_json::to_vec(pod).unwrap();
    let view = Pod::from_slice(&bytes).unwrap();
    let m = mutate(&view, &assoc(), inj).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &m.patch.to_json_patch().0).unwrap();
    (out, m)
}

fn again_is_empty(pod: &Value, inj: &Injection) {
    let bytes = serde_json::to_vec(pod).unwrap();
    let m = mutate(&Pod::from_slice(&bytes).unwrap(), &assoc(), inj).unwrap();
    assert!(m.patch.is_empty(), "second mutation not empty: {:?}", m.patch);
}

fn env(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or("").to_owned())
}

#[test]
fn both_profiles_use_the_design_names() {
    for (p, aud, uri_env, file_env, vol, mount) in [
        (
            Provider::Cce,
            "service.cce.pods",
            "HC_CONTAINER_CREDENTIALS_FULL_URI",
            "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "cce-pod-identity-token",
            "/var/run/secrets/service.cce.pods/serviceaccount",
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
        let (out, _) = run(&pod, inj(p));
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
fn user_values_win_and_the_rest_is_injected() {
    let pod = json!({"spec": {
        "volumes": [{"name": "cce-pod-identity-token", "secret": {"secretName": "mine"}}],
        "containers": [{"name": "c", "env": [{"name": "HC_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:9999/custom"}]}]
    }});
    let (out, _) = run(&pod, inj(Provider::Cce));
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(out["spec"]["volumes"][0]["secret"]["secretName"], "mine");
    let c = &out["spec"]["containers"][0];
    assert_eq!(
        env(c, "HC_CONTAINER_CREDENTIALS_FULL_URI").unwrap(),
        "http://127.0.0.1:9999/custom"
    );
    assert!(env(c, "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some());
    assert_eq!(c["env"].as_array().unwrap().len(), 2);
    again_is_empty(&out, inj(Provider::Cce));
}

#[test]
fn a_foreign_mount_at_the_token_path_is_kept_with_a_warning() {
    let pod = json!({"spec": {"containers": [{"name": "c",
        "volumeMounts": [{"name": "other", "mountPath": "/var/run/secrets/service.cce.pods/serviceaccount/"}]}]}});
    let (out, m) = run(&pod, inj(Provider::Cce));
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(
        m.warnings[0].len() <= 120,
        "warnings stay short: {}",
        m.warnings[0]
    );
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

#[test]
fn opt_out_label_and_all_skipped_give_no_patch() {
    let pod =
        json!({"metadata": {"labels": {INJECT_LABEL: "false"}}, "spec": {"containers": [{"name": "c"}]}});
    let bytes = serde_json::to_vec(&pod).unwrap();
    assert_eq!(
        mutate(&Pod::from_slice(&bytes).unwrap(), &assoc(), inj(Provider::Cce)),
        Err(Skip::OptedOut)
    );
    let pod = json!({"metadata": {"annotations": {SKIP_CONTAINERS_ANNOTATION: "c"}}, "spec": {"containers": [{"name": "c"}]}});
    let bytes = serde_json::to_vec(&pod).unwrap();
    assert_eq!(
        mutate(&Pod::from_slice(&bytes).unwrap(), &assoc(), inj(Provider::Cce)),
        Err(Skip::AllContainersSkipped)
    );
    // Any other label value injects.
    let pod =
        json!({"metadata": {"labels": {INJECT_LABEL: "true"}}, "spec": {"containers": [{"name": "c"}]}});
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

#[test]
fn pod_without_containers_still_gets_the_volume() {
    // Not a valid pod for the API server, but the mutation must not fail on it.
    let (out, _) = run(&json!({}), inj(Provider::Eks));
    assert_eq!(out["spec"]["volumes"][0]["name"], "eks-pod-identity-token");
}
