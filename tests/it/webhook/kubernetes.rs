//! `serve --source kubernetes` when the API server misbehaves, on the in-process stand-in (a
//! real one cannot be made to): lists held back (not ready until synced), objects the CRD would
//! refuse (written before it tightened), history compacted (`410 Gone`), the server lost and
//! back. The ordinary watch runs on the real API server (`webhook::real::admission`).

use std::time::Duration;

use crate::common::standin::{StandIn, association};
use crate::common::*;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::AssociationSource;
use serde_json::json;

async fn injected(server: &TestServer, c: &reqwest::Client, fixture_prefix: &str) -> bool {
    server
        .review(c, fixture(fixture_prefix))
        .await
        .get("patch")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_follow_the_associations_in_the_cluster() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let api = StandIn::start(true).await;
    api.apply(association("pi-demo", "app", "demo-agency"));
    let client = api.client().await;
    let server = TestServer::start_in(Some(client), Provider::Cce, |c| {
        c.source = AssociationSource::Kubernetes {
            cluster_id: Some("c-1".into()),
        };
    })
    .await;
    let c = server.h2();

    // Not ready while the initial list is held back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("associations not synced"));
    api.release_lists();
    eventually("readiness", Duration::from_secs(10), async || {
        c.get(server.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(injected(&server, &c, "01-").await, "pi-demo/app is associated");
    assert!(!injected(&server, &c, "13-").await, "pi-demo/worker is not yet");

    // An association appears: its pods are injected.
    api.apply(association("pi-demo", "worker", "worker-agency"));
    eventually("worker injected", Duration::from_secs(10), async || {
        injected(&server, &c, "13-").await
    })
    .await;

    // Malformed objects are skipped; the rest keeps working.
    api.apply(
        json!({"apiVersion": "iam.podidentity.io/v1beta1", "kind": "PodIdentityAssociation",
        "metadata": {"name": "broken", "namespace": "pi-other"}, "spec": {"serviceAccount": 5}}),
    );
    api.apply(
        association("pi-other", "app", "x")
            .as_object()
            .cloned()
            .map(|mut o| {
                o["metadata"]["name"] = json!("wrong-name");
                serde_json::Value::Object(o)
            })
            .unwrap(),
    );
    api.apply(association("pi-other", "default", "other"));
    let other = review_of(
        &json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}}),
        "pi-other",
        "o",
    );
    eventually("pi-other/default", Duration::from_secs(10), async || {
        server.review(&c, other.clone()).await.get("patch").is_some()
    })
    .await;
    assert!(injected(&server, &c, "13-").await);

    // Deleted: no longer injected.
    api.delete("pi-demo/app");
    eventually("app no longer injected", Duration::from_secs(10), async || {
        !injected(&server, &c, "01-").await
    })
    .await;

    // History compacted (410 Gone): the watcher relists and sees what changed meanwhile.
    let lists = api.lists();
    api.expire();
    api.apply(association("pi-demo", "app", "demo-agency-2"));
    eventually("app injected after relist", Duration::from_secs(20), async || {
        injected(&server, &c, "01-").await
    })
    .await;
    assert!(api.lists() > lists, "a relist happened");

    // API server lost: the last index keeps serving, and metrics say so.
    let m = server.state.metrics.clone();
    api.set_down(true);
    eventually("the watch notices", Duration::from_secs(20), async || {
        !m.inputs.is_source_connected()
    })
    .await;
    assert!(m.render().contains("podidentity_source_connected 0\n"));
    assert!(injected(&server, &c, "01-").await && injected(&server, &c, "13-").await);
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        200,
        "still ready on the last index"
    );
    // Changes made while it was unreachable arrive once it is back.
    api.set_down(false);
    api.delete("pi-demo/worker");
    eventually(
        "reconnected and worker removed",
        Duration::from_secs(40),
        async || m.inputs.is_source_connected() && !injected(&server, &c, "13-").await,
    )
    .await;
    assert!(m.inputs.source_errors() >= 1);
    assert!(
        m.render().contains("podidentity_associations 2\n"),
        "{}",
        m.render()
    );
}
