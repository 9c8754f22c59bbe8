//! `explain NAMESPACE/NAME` of live pods on a real API server: the binary reads the pod, its
//! Namespace and the PodIdentityAssociations with `KUBECONFIG`, and says why, with the next
//! step and the exit status.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use pod_identity_webhook::testing::PodIdentityAssociation;
use serde_json::json;

use crate::common::apiserver::ApiServer;

/// `explain NAMESPACE/NAME` with a kubeconfig for `api` acting with `token`: the exit status
/// and the output.
async fn explain_live(api: &ApiServer, token: &str, target: &str) -> (i32, String) {
    tokio::task::block_in_place(|| api.run_as(token, &["explain", target]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pods_are_explained_from_the_cluster() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    let demo = api
        .namespace("pi-demo", &[("podidentity.io/injection", "enabled")])
        .await;
    let plain = api.namespace("plain", &[]).await;
    let ar = ApiResource::erase::<PodIdentityAssociation>(&());
    let association: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "iam.podidentity.io/v1beta1", "kind": "PodIdentityAssociation",
        "metadata": {"name": "app", "namespace": demo},
        "spec": {"serviceAccount": "app", "agencyName": "live-agency"}}))
    .unwrap();
    let association = Api::<DynamicObject>::namespaced_with(api.client(), &demo, &ar)
        .create(&PostParams::default(), &association)
        .await
        .unwrap();
    let uid = association.metadata.uid.unwrap();
    api.pod(&demo, "early", "app", "node-a").await;
    let injected = json!({"metadata": {"name": "injected",
        "annotations": {"podidentity.io/association": uid}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.example/app:1"}]}});
    api.pod_with(&demo, injected).await;
    api.pod(&plain, "early", "app", "node-a").await;

    // Created before its association: would be injected now, is not.
    let admin = "admin-token";
    let (code, out) = explain_live(api, admin, &format!("{demo}/early")).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("association {uid} grants live-agency")),
        "the cluster's association: {out}"
    );
    assert!(
        out.contains(&format!("ok   namespace {demo} is selected")),
        "{out}"
    );
    assert!(out.contains("next: recreate the pod"), "{out}");
    let (code, out) = explain_live(api, admin, &format!("{demo}/injected")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the pod carries the injection"), "{out}");
    // The Namespace's labels as the cluster has them: not opted in.
    let (code, out) = explain_live(api, admin, &format!("{plain}/early")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("kubectl label namespace {plain}")), "{out}");
    let (code, out) = explain_live(api, admin, &format!("{demo}/missing")).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("pod {demo}/missing")), "{out}");
    // A user who may not read the pod is told so.
    let (code, out) = explain_live(api, "bob-token", &format!("{demo}/early")).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("forbidden"), "{out}");
}
