//! The webhook over real TLS with every captured fixture, over HTTP/1.1 and HTTP/2.

use std::collections::HashSet;

use crate::common::*;
use pod_identity_webhook::profile::{self, Provider};
use pod_identity_webhook::webhook::metrics::Outcome;
use serde_json::Value;

const APP_UID: &str = "81f143f5-f469-4fb6-b17c-8f52af73184c";
const WORKER_UID: &str = "21d15a54-d383-4cf4-83a2-2ef5d28740bc";

/// What each fixture must produce: `Some(association uid)` when it is injected.
fn expected(name: &str) -> Option<&'static str> {
    match &name[..name.find('-').unwrap()] {
        "01" | "02" | "03" | "04" | "06" | "07" | "08" | "09" | "14" | "17" => Some(APP_UID),
        "12" | "12b" | "13" => Some(WORKER_UID),
        "05" | "10" | "11" | "15" | "16" => None,
        other => panic!("fixture {other} has no expectation"),
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
        .collect()
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

fn assert_unique(items: Option<&Vec<Value>>, key: &str, what: &str) {
    let mut seen = HashSet::new();
    for i in items.into_iter().flatten() {
        assert!(seen.insert(i[key].to_string()), "duplicate {what} {}", i[key]);
    }
}

/// Checks an injected pod against the original and the profile.
fn check_injected(
    name: &str,
    original: &Value,
    patched: &Value,
    patch: &json_patch::Patch,
    p: &profile::Profile,
    uid: &str,
) {
    for op in &patch.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "{name}: only add operations, got {op:?}"
        );
    }
    // User fields untouched: going from the original to the result only adds.
    for op in json_patch::diff(original, patched).0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "{name}: user data changed: {op:?}"
        );
    }
    assert_eq!(
        patched["metadata"]["annotations"]["podidentity.io/association"], uid,
        "{name}"
    );
    let volumes = patched["spec"]["volumes"].as_array().unwrap();
    assert_unique(Some(volumes), "name", "volume");
    let v = volumes
        .iter()
        .find(|v| v["name"] == p.volume_name)
        .expect("token volume");
    let sat = &v["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], p.audience, "{name}");
    // The default lifetime, spread per pod over its last twelfth.
    let seconds = sat["expirationSeconds"].as_i64().unwrap();
    assert!((79_200..=86_400).contains(&seconds), "{name}: {seconds}");
    assert_eq!(sat["path"], p.token_file, "{name}");
    let skipped: Vec<String> = patched["metadata"]["annotations"]["podidentity.io/skip-containers"]
        .as_str()
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
        .unwrap_or_default();
    let original_containers = containers(original);
    for (c, before) in containers(patched).into_iter().zip(original_containers) {
        let cname = c["name"].as_str().unwrap();
        assert_unique(c["volumeMounts"].as_array(), "mountPath", "mountPath");
        assert_unique(c["env"].as_array(), "name", "env var");
        if skipped.iter().any(|s| s == cname) {
            assert_eq!(c, before, "{name}: skipped container {cname} changed");
            continue;
        }
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == p.mount_path)
            .expect("token mount");
        assert_eq!(m["name"], p.volume_name);
        assert_eq!(m["readOnly"], true);
        let user_uri = env(before, p.endpoint_env);
        assert_eq!(
            env(c, p.endpoint_env),
            Some(user_uri.unwrap_or(p.default_endpoint)),
            "{name}/{cname}"
        );
        assert_eq!(
            env(c, p.token_file_env),
            Some(p.token_path().as_str()),
            "{name}/{cname}"
        );
    }
}

async fn every_fixture(http: Http) {
    let server = TestServer::start(Provider::Cce).await;
    let c = client(&[&server.ca_pem()], http);
    let want_version = if http == Http::H2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    let mut mutated = 0;
    for (name, body) in fixtures() {
        let (status, version, bytes) = server.post(&c, body.clone()).await;
        assert_eq!(version, want_version);
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&bytes));
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        let request: Value = serde_json::from_slice::<Value>(&body).unwrap()["request"].clone();
        let response = &review["response"];
        assert_eq!(response["uid"], request["uid"], "{name}");
        assert_eq!(response["allowed"], true, "{name}");
        match expected(&name) {
            None => assert!(response.get("patch").is_none(), "{name}: unexpected patch"),
            Some(uid) => {
                let (patched, patch) = apply(response, &request["object"]);
                assert!(!patch.0.is_empty(), "{name}: expected a patch");
                check_injected(&name, &request["object"], &patched, &patch, &profile::CCE, uid);
                // Idempotent: the webhook's own output needs nothing more.
                let again = server
                    .review(
                        &c,
                        review_of(&patched, request["namespace"].as_str().unwrap(), "again"),
                    )
                    .await;
                assert!(
                    again.get("patch").is_none(),
                    "{name}: second pass patched: {again}"
                );
                mutated += 1;
            }
        }
    }
    assert_eq!(mutated, 13);
    let m = &server.state.metrics;
    assert_eq!(m.admissions(Outcome::Mutated), 13);
    assert_eq!(
        m.admissions(Outcome::Unchanged),
        13 + 2,
        "13 second passes + 05 and 11"
    );
    assert_eq!(
        m.admissions(Outcome::Skipped),
        3,
        "10 opted out, 15 update, 16 configmap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_over_http1() {
    every_fixture(Http::H1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_over_http2() {
    every_fixture(Http::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_details() {
    let server = TestServer::start(Provider::Cce).await;
    let c = server.h2();
    let get = |prefix: &str| {
        let body = fixture(prefix);
        let object = serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
        (body, object)
    };
    // 08: the user's endpoint stays; the other container gets the default.
    let (body, object) = get("08-");
    let (pod, _) = apply(&server.review(&c, body).await, &object);
    assert_eq!(
        env(&pod["spec"]["containers"][0], "HC_CONTAINER_CREDENTIALS_FULL_URI"),
        Some("http://127.0.0.1:9999/custom")
    );
    assert_eq!(
        env(&pod["spec"]["containers"][1], "HC_CONTAINER_CREDENTIALS_FULL_URI"),
        Some(profile::CCE.default_endpoint)
    );
    // 09: the sidecar named in the annotation gets nothing.
    let (body, object) = get("09-");
    let (pod, _) = apply(&server.review(&c, body).await, &object);
    let sidecar = containers(&pod)
        .into_iter()
        .find(|c| c["name"] == "sidecar")
        .unwrap();
    assert!(env(sidecar, "HC_CONTAINER_CREDENTIALS_FULL_URI").is_none());
    // 06: no volumes, mounts or env at all: the parents are created.
    let (body, object) = get("06-");
    assert!(object["spec"].get("volumes").is_none());
    let (pod, _) = apply(&server.review(&c, body).await, &object);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
    // 07: the init container and the native sidecar are both injected.
    let (body, object) = get("07-");
    let (pod, _) = apply(&server.review(&c, body).await, &object);
    for ic in pod["spec"]["initContainers"].as_array().unwrap() {
        assert!(
            env(ic, "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some(),
            "{}",
            ic["name"]
        );
    }
    // 12: annotation keys with `/` and `~` are left intact; ours is escaped in the pointer.
    let (body, object) = get("12-");
    let response = server.review(&c, body).await;
    let (pod, patch) = apply(&response, &object);
    assert!(
        serde_json::to_string(&patch)
            .unwrap()
            .contains("/metadata/annotations/podidentity.io~1association")
    );
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/a~b"],
        object["metadata"]["annotations"]["example.com/a~b"]
    );
    // 14: Windows pods are injected with a warning.
    let response = server.review(&c, fixture("14-")).await;
    assert!(response["warnings"][0].as_str().unwrap().contains("Windows"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_profile_injects_the_eks_names() {
    let server = TestServer::start(Provider::Eks).await;
    let c = server.h1();
    let body = fixture("17-");
    let object = serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
    let (pod, patch) = apply(&server.review(&c, body).await, &object);
    check_injected("17 (eks)", &object, &pod, &patch, &profile::EKS, APP_UID);
    let text = serde_json::to_string(&pod).unwrap();
    assert!(text.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI") && !text.contains("HC_CONTAINER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_the_pod() {
    let server = TestServer::start_with(Provider::Cce, |c| {
        c.injection = pod_identity_webhook::webhook::mutation::Injection::new(
            &profile::CCE,
            pod_identity_webhook::webhook::mutation::Settings::new(
                &profile::CCE,
                Some("http://10.1.2.3:2703/v1/credentials".into()),
                100,
            ),
        );
    })
    .await;
    let body = fixture("01-");
    let object = serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
    let (pod, _) = apply(&server.review(&server.h1(), body).await, &object);
    assert_eq!(
        env(&pod["spec"]["containers"][0], "HC_CONTAINER_CREDENTIALS_FULL_URI"),
        Some("http://10.1.2.3:2703/v1/credentials")
    );
    let v = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "cce-pod-identity-token")
        .unwrap();
    assert_eq!(
        v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = TestServer::start(Provider::Cce).await;
    let c = server.h1();
    let r = c.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.review(&c, fixture("01-")).await;
    server.review(&c, fixture("16-")).await;
    let r = c.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("podidentity_admissions_total{outcome=\"mutated\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("podidentity_admissions_total{outcome=\"skipped\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("podidentity_admission_duration_seconds_count 2\n"),
        "{text}"
    );
    assert!(text.contains("podidentity_associations 2\n"), "{text}");
    let r = c.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(server.url("/mutate")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

/// Fixture 01's pod with `edit` applied, as a review with request uid `uid`.
fn edited(prefix: &str, uid: &str, edit: impl FnOnce(&mut Value)) -> (Vec<u8>, Value) {
    let body: Value = serde_json::from_slice(&fixture(prefix)).unwrap();
    let mut object = body["request"]["object"].clone();
    edit(&mut object);
    let ns = body["request"]["namespace"].as_str().unwrap().to_owned();
    (review_of(&object, &ns, uid), object)
}

fn lifetime(pod: &Value, p: &profile::Profile) -> i64 {
    let v = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == p.volume_name)
        .expect("token volume");
    v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_pods_are_skipped_with_a_reason() {
    let server = TestServer::start(Provider::Cce).await;
    let (body, _) = edited("01-", "mirror-1", |pod| {
        pod["metadata"]["annotations"] =
            serde_json::json!({"kubernetes.io/config.mirror": "5d41402abc4b2a76"});
    });
    let response = server.review(&server.h1(), body).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("static pod") && warning.contains("not injected"),
        "{warning}"
    );
    assert_eq!(server.state.metrics.admissions(Outcome::Skipped), 1);
}

/// A user's volume under the injected name that is not the token: admitted as it is, with a
/// warning naming the volume, instead of env vars pointing at a file that will not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_volume_is_admitted_unchanged_with_a_warning() {
    let server = TestServer::start(Provider::Cce).await;
    let (body, _) = edited("01-", "conflict-1", |pod| {
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "cce-pod-identity-token", "emptyDir": {}}));
    });
    let response = server.review(&server.h2(), body).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("volume \"cce-pod-identity-token\" is not the pod identity token"),
        "{warning}"
    );
    assert_eq!(server.state.metrics.admissions(Outcome::Unchanged), 1);
}

/// The pods of one ReplicaSet arrive identical and nameless (generateName): each admission's
/// uid spreads their tokens' lifetimes, the same review always gets the same lifetime, and the
/// webhook's own output needs nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_pods_get_spread_token_lifetimes() {
    let server = TestServer::start(Provider::Cce).await;
    let c = server.h2();
    let mut seen = HashSet::new();
    for i in 0..40 {
        let uid = format!("6f1c2a8e-0000-4000-8000-{i:012}");
        let (body, object) = edited("13-", &uid, |_| {});
        assert!(object["metadata"].get("name").is_none());
        let (pod, _) = apply(&server.review(&c, body.clone()).await, &object);
        let seconds = lifetime(&pod, &profile::CCE);
        assert!((79_200..=86_400).contains(&seconds), "{seconds}");
        let (again, _) = apply(&server.review(&c, body).await, &object);
        assert_eq!(
            lifetime(&again, &profile::CCE),
            seconds,
            "deterministic per review"
        );
        let second = server.review(&c, review_of(&pod, "pi-demo", "again")).await;
        assert!(second.get("patch").is_none(), "{second}");
        seen.insert(seconds);
    }
    assert!(seen.len() >= 35, "40 pods, only {} lifetimes", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_and_annotation_lifetimes_reach_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("associations.yaml");
    std::fs::write(
        &file,
        "associations:\n\
         - {namespace: pi-demo, serviceAccount: app, agencyName: a, tokenExpirationSeconds: 3600}\n\
         - {namespace: pi-demo, serviceAccount: worker, agencyName: w, tokenExpirationSeconds: 600}\n",
    )
    .unwrap();
    let server = TestServer::start_with(Provider::Cce, |c| {
        c.source = pod_identity_webhook::testing::AssociationSource::File(file);
    })
    .await;
    let c = server.h1();
    let annotate = |value: &'static str| {
        move |pod: &mut Value| {
            pod["metadata"]["annotations"] = serde_json::json!({"podidentity.io/token-expiration": value});
        }
    };
    for (prefix, edit, want, warning) in [
        ("01-", annotate("1800"), 1800, None),
        ("01-", annotate("7200"), 3600, Some("may only lower")),
        ("01-", annotate("60"), 600, Some("60 is outside")),
        ("01-", annotate(" 3600 "), 3600, None),
        ("13-", annotate("2400"), 600, Some("may only lower")),
    ] {
        let (body, object) = edited(prefix, "u", edit);
        let response = server.review(&c, body).await;
        let (pod, _) = apply(&response, &object);
        assert_eq!(lifetime(&pod, &profile::CCE), want, "{prefix} {warning:?}");
        let warnings = response["warnings"].to_string();
        match warning {
            Some(w) => assert!(warnings.contains(w), "{w}: {warnings}"),
            None => assert!(response.get("warnings").is_none(), "{warnings}"),
        }
    }
    // The worker association's 600 s, the shortest allowed, is used as it is.
    let (body, object) = edited("13-", "u", |_| {});
    let response = server.review(&c, body).await;
    assert_eq!(lifetime(&apply(&response, &object).0, &profile::CCE), 600);
    assert!(response.get("warnings").is_none(), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_region_variables_reach_the_pod_and_keep_the_users() {
    let server = TestServer::start_with(Provider::Eks, |c| {
        let mut settings =
            pod_identity_webhook::webhook::mutation::Settings::new(&profile::EKS, None, 86_400);
        settings.region = Some("eu-west-1".into());
        c.injection = pod_identity_webhook::webhook::mutation::Injection::new(&profile::EKS, settings);
    })
    .await;
    let c = server.h2();
    let (body, object) = edited("08-", "u", |pod| {
        pod["spec"]["containers"][1]["env"] = serde_json::json!([
            {"name": "AWS_DEFAULT_REGION", "value": "ap-southeast-1"},
            {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "legacy"},
        ]);
    });
    let (pod, _) = apply(&server.review(&c, body).await, &object);
    let app = &pod["spec"]["containers"][0];
    assert_eq!(env(app, "AWS_REGION"), Some("eu-west-1"));
    assert_eq!(env(app, "AWS_DEFAULT_REGION"), Some("eu-west-1"));
    assert_eq!(env(app, "AWS_STS_REGIONAL_ENDPOINTS"), Some("regional"));
    let helper = &pod["spec"]["containers"][1];
    assert_eq!(env(helper, "AWS_DEFAULT_REGION"), Some("ap-southeast-1"));
    assert_eq!(
        env(helper, "AWS_REGION"),
        None,
        "not set against the user's region"
    );
    assert_eq!(env(helper, "AWS_STS_REGIONAL_ENDPOINTS"), Some("legacy"));
    assert!(env(helper, "AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some());
    let again = server.review(&c, review_of(&pod, "pi-demo", "again")).await;
    assert!(again.get("patch").is_none(), "{again}");
}
