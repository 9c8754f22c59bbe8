//! Who may call the exchange, decided on a real API server: only a token bound to a running
//! pod of the agent DaemonSet, on the node the token names. A node-bound token of the agents'
//! service account, or a pod-bound one of a pod outside the DaemonSet, is refused and counted.

use serde_json::json;

use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::{NODE, doubles};

const AUD: &str = "service.cce.pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_running_agent_daemonset_pod_on_its_node_may_call() {
    let Some(api) = ApiServer::shared() else { return };
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .tweak(|c| {
            c.agent_daemonset = Some((AGENT_NAMESPACE.into(), "pod-identity-agent".into()));
        })
        .start()
        .await;
    let pod = || async {
        let name = format!("caller-{:08x}", fastrand::u32(..));
        api.pod_token("pi-demo", "app", &name, NODE, AUD).await
    };

    // The DaemonSet's running pod on the node.
    let (status, body) = redeem(&exchange, &api.agent_token(NODE).await, &pod().await).await;
    assert_eq!(status, 200, "{body}");

    // The agents' service account, bound to the node itself.
    let node_bound = api
        .node_token(
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            NODE,
            "pod-identity-exchange",
        )
        .await;
    let (status, body) = redeem(&exchange, &node_bound, &pod().await).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], "CCE.01403005", "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("not bound to a pod"),
        "{body}"
    );

    // A pod of the agents' service account on the node, running, but no pod of the DaemonSet.
    let stray = api
        .pod(
            AGENT_NAMESPACE,
            &format!("stray-{:08x}", fastrand::u32(..)),
            AGENT_SERVICE_ACCOUNT,
            NODE,
        )
        .await;
    let stray = api.set_running(&stray).await;
    let token = api
        .token(
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            Some(&stray),
            "pod-identity-exchange",
            3600,
        )
        .await;
    let (status, body) = redeem(&exchange, &token, &pod().await).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("is not one of the DaemonSet's"),
        "{body}"
    );

    // A pod of the DaemonSet that is not running (yet).
    let other = "node-pending";
    let mut pending = api.agent_pod(other).await;
    pending.status = None;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(api.client(), AGENT_NAMESPACE);
    let name = pending.metadata.name.clone().unwrap();
    pods.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": "Pending"}})),
    )
    .await
    .unwrap();
    let token = api
        .token(
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            Some(&pending),
            "pod-identity-exchange",
            3600,
        )
        .await;
    let pod_there = api
        .pod_token(
            "pi-demo",
            "app",
            &format!("pending-{:08x}", fastrand::u32(..)),
            other,
            AUD,
        )
        .await;
    let (status, body) = redeem(&exchange, &token, &pod_there).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("not Running"),
        "{body}"
    );

    let metrics = crate::common::metrics_of(&exchange.url).await;
    assert!(
        metrics.contains("podidentity_exchange_refusals_total{reason=\"caller_not_agent_pod\"} 3\n"),
        "{metrics}"
    );
    assert_eq!(iam.calls().len(), 1, "only the DaemonSet pod's call reached IAM");
}
