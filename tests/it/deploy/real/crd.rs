//! The `PodIdentityAssociation` CRDs on a real API server (the namespaced one, and the old
//! cluster-scoped one still read): their schema and CEL rules accept and refuse exactly what the
//! programs' own validation does, with the documented messages.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use pod_identity_webhook::testing::{PodIdentityAssociation, file, legacy, to_association};
use serde_json::{Value, json};

use crate::common::apiserver::ApiServer;

/// What the API server said of `object`: `Ok` (stored, or would be) or the refusal's message.
async fn verdict(api: &Api<DynamicObject>, object: &Value, dry_run: bool) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    api.create(&pp, &obj).await.map(|_| ()).map_err(|e| match e {
        kube::Error::Api(s) => s.message,
        e => panic!("not an API refusal: {e}"),
    })
}

/// What the programs' validation says of `object` (the file and watch sources share it).
/// What the programs' validation of a write says of `object`: the name rule of the watch, and
/// the association file's rules for its spec (the association API shares them). The watch
/// itself tolerates a token lifetime the CRD took before it was bounded.
fn ours(object: &Value) -> Result<(), String> {
    let mut spec = object["spec"].clone();
    if object["apiVersion"] == "podidentity.io/v1alpha1" {
        let old: legacy::PodIdentityAssociation =
            serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
        to_association(&legacy::twin(&old, true).map_err(|e| e.to_string())?, None)
            .map_err(|e| e.to_string())?;
    } else {
        let obj: PodIdentityAssociation =
            serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
        to_association(&obj, None).map_err(|e| e.to_string())?;
        spec["namespace"] = object["metadata"]["namespace"].clone();
    }
    let text = json!({"associations": [spec]}).to_string();
    file::parse(std::path::Path::new("associations.json"), &text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An old cluster-scoped object; `namespaced`: the namespaced object of the same case (in
/// the spec's namespace, named after the service account unless the case is about the name).
fn object(name: &str, spec: Value, namespaced: bool) -> Value {
    if !namespaced {
        return json!({"apiVersion": "podidentity.io/v1alpha1", "kind": "PodIdentityAssociation",
            "metadata": {"name": name}, "spec": spec});
    }
    let mut spec = spec;
    let ns = spec.as_object_mut().unwrap().remove("namespace").unwrap();
    let name = name.split_once('.').map_or(name, |(_, sa)| sa);
    json!({"apiVersion": "iam.podidentity.io/v1beta1", "kind": "PodIdentityAssociation",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn associations(api: &ApiServer, namespaced: Option<&str>) -> Api<DynamicObject> {
    match namespaced {
        Some(ns) => Api::namespaced_with(
            api.client(),
            ns,
            &ApiResource::erase::<PodIdentityAssociation>(&()),
        ),
        None => Api::all_with(
            api.client(),
            &ApiResource::erase::<legacy::PodIdentityAssociation>(&()),
        ),
    }
}

#[tokio::test]
async fn the_crds_rules_accept_and_refuse_what_the_validation_does() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: crd-rules}\n");
    rules_of(api, false).await;
    rules_of(api, true).await;
}

/// Every case against one of the two kinds.
async fn rules_of(api: &ApiServer, namespaced: bool) {
    let pias = associations(api, namespaced.then_some("crd-rules"));
    let base = || json!({"namespace": "crd-rules", "serviceAccount": "app", "agencyName": "reader"});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut s = base();
        f(&mut s);
        s
    };
    let tags = |n: usize| {
        (0..n)
            .map(|i| json!({"key": format!("k{i}")}))
            .collect::<Vec<_>>()
    };
    // (case, metadata.name, spec, the CRD's message when refused)
    let cases: Vec<(&str, &str, Value, Option<&str>)> = vec![
        ("an agency", "crd-rules.app", base(), None),
        (
            "a role",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app", "roleArn": "arn:aws:iam::1:role/r"}),
            None,
        ),
        (
            "agency and role",
            "crd-rules.app",
            with(&|s| s["roleArn"] = json!("arn:aws:iam::1:role/r")),
            Some("set exactly one of agencyName and roleArn"),
        ),
        (
            "neither",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app"}),
            Some("set exactly one of agencyName and roleArn"),
        ),
        (
            "a policy with session tags",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app", "roleArn": "arn:aws:iam::1:role/r", "policy": "{}"}),
            Some("policy is allowed only with disableSessionTags: true"),
        ),
        (
            "a policy without session tags",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app", "roleArn": "arn:aws:iam::1:role/r", "policy": "{}", "disableSessionTags": true}),
            None,
        ),
        (
            "a policy with an agency",
            "crd-rules.app",
            with(&|s| {
                s["policy"] = json!("{}");
                s["disableSessionTags"] = json!(true);
            }),
            Some("policy needs roleArn"),
        ),
        (
            "a target role without a role",
            "crd-rules.app",
            with(&|s| s["targetRoleArn"] = json!("arn:aws:iam::2:role/t")),
            Some("targetRoleArn needs roleArn"),
        ),
        (
            "a target role",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app", "roleArn": "arn:aws:iam::1:role/r", "targetRoleArn": "arn:aws:iam::2:role/t"}),
            None,
        ),
        (
            "token lifetime 0",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(0)),
            Some("tokenExpirationSeconds must be between 600 (10 minutes) and 172800 (48 hours)"),
        ),
        (
            "token lifetime 599 s",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(599)),
            Some("tokenExpirationSeconds must be between 600"),
        ),
        (
            "token lifetime 10 minutes",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(600)),
            None,
        ),
        (
            "token lifetime 48 hours",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(172_800)),
            None,
        ),
        (
            "token lifetime 48 hours and a second",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(172_801)),
            Some("tokenExpirationSeconds must be between 600"),
        ),
        (
            "token lifetime an hour",
            "crd-rules.app",
            with(&|s| s["tokenExpirationSeconds"] = json!(3600)),
            None,
        ),
        (
            "a tag key with a leading space",
            "crd-rules.app",
            with(&|s| s["tags"] = json!([{"key": " x"}])),
            Some("tag key must not start or end with a space"),
        ),
        (
            "a _sys_ tag key",
            "crd-rules.app",
            with(&|s| s["tags"] = json!([{"key": "_sys_x"}])),
            Some("tag keys starting with _sys_ are reserved"),
        ),
        (
            "a tag",
            "crd-rules.app",
            with(&|s| s["tags"] = json!([{"key": "team", "value": "a/b"}])),
            None,
        ),
        (
            "21 tags",
            "crd-rules.app",
            with(&|s| s["tags"] = json!(tags(21))),
            Some("must have at most 20 items"),
        ),
        (
            "20 tags",
            "crd-rules.app",
            with(&|s| s["tags"] = json!(tags(20))),
            None,
        ),
        (
            "a repeated tag key",
            "crd-rules.app",
            with(&|s| s["tags"] = json!([{"key": "k"}, {"key": "k"}])),
            Some("Duplicate value"),
        ),
        (
            "a name that is not namespace.serviceAccount",
            "crd-rules.other",
            base(),
            Some("metadata.name must be <spec.namespace>.<spec.serviceAccount>"),
        ),
        (
            "an agency of 65 characters",
            "crd-rules.app",
            with(&|s| s["agencyName"] = json!("a".repeat(65))),
            Some("may not be more than 64"),
        ),
        (
            "an upper-case namespace",
            "Crd-rules.app",
            with(&|s| s["namespace"] = json!("Crd-rules")),
            Some("should match"),
        ),
        (
            "a role that is no ARN",
            "crd-rules.app",
            json!({"namespace": "crd-rules", "serviceAccount": "app", "roleArn": "role/r"}),
            Some("should match '^arn:'"),
        ),
    ];
    let mut wrong = Vec::new();
    for (case, name, spec, message) in &cases {
        // A namespace's name is the API server's to check, not the CRD's.
        if namespaced && case.contains("namespace") && *case != "a name that is not namespace.serviceAccount"
        {
            continue;
        }
        let message = match (namespaced, *case) {
            (true, "a name that is not namespace.serviceAccount") => {
                &Some("metadata.name must be spec.serviceAccount")
            }
            _ => message,
        };
        let obj = object(name, spec.clone(), namespaced);
        let real = verdict(&pias, &obj, true).await;
        let mine = ours(&obj);
        if real.is_ok() != mine.is_ok() {
            wrong.push(format!(
                "{case}: the API server says {real:?}, the validation {mine:?}, for {obj}"
            ));
        }
        match (message, &real) {
            (None, Err(e)) => wrong.push(format!("{case}: refused ({e}) for {obj}")),
            (Some(m), Err(e)) if !e.contains(m) => wrong.push(format!("{case}: refused without {m:?}: {e}")),
            (Some(m), Ok(())) => wrong.push(format!("{case}: accepted, expected {m:?}, for {obj}")),
            _ => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "PodIdentityAssociation rules (namespaced: {namespaced}):\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn namespace_and_service_account_are_immutable_the_agency_is_not() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    for namespaced in [false, true] {
        immutable(api, namespaced).await;
    }
}

async fn immutable(api: &ApiServer, namespaced: bool) {
    let ns = format!("crd-imm-{:08x}", fastrand::u32(..));
    api.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ));
    let pias = associations(api, namespaced.then_some(&ns));
    let name = if namespaced {
        "app".to_owned()
    } else {
        format!("{ns}.app")
    };
    let spec = json!({"namespace": ns, "serviceAccount": "app", "agencyName": "reader"});
    verdict(&pias, &object(&name, spec.clone(), namespaced), false)
        .await
        .unwrap();
    let replace = async |f: &dyn Fn(&mut Value)| {
        let mut current = serde_json::to_value(pias.get(&name).await.unwrap()).unwrap();
        f(&mut current["spec"]);
        let obj: DynamicObject = serde_json::from_value(current).unwrap();
        pias.replace(&name, &PostParams::default(), &obj)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    replace(&|s| s["agencyName"] = json!("writer"))
        .await
        .expect("the agency may change");
    let e = replace(&|s| s["serviceAccount"] = json!("other"))
        .await
        .unwrap_err();
    assert!(e.contains("serviceAccount is immutable"), "{e}");
    if !namespaced {
        let e = replace(&|s| s["namespace"] = json!("other")).await.unwrap_err();
        assert!(e.contains("namespace is immutable"), "{e}");
    }
    let stored = pias.get(&name).await.unwrap();
    assert_eq!(stored.data["spec"]["agencyName"], "writer");
}
