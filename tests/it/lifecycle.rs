//! Association lifecycle on the node: cached credentials follow the associations (deleted or
//! pointed at another agency: the next answer is the new one) and the pods of the agent's
//! node (a pod that is gone loses its credentials and is not refreshed again), against the
//! stand-in API server.

use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::doubles;
use crate::common::standin::{StandIn, association, pod};
use crate::common::{Logs, NODE, eventually};
use pod_identity_webhook::agent::NodePods;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::watch_associations;
use serde_json::Value;

const AUD: &str = "service.cce.pods";

/// What an SDK gets from the agent for `token`: the status and the agency of the answer.
async fn ask(c: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let r = c.get(url).header("Authorization", token).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    // sts::<domain>::assumed-agency:<agency>/<session>
    let agency = body["assumedAgency"]["urn"]
        .as_str()
        .and_then(|u| u.split("assumed-agency:").nth(1))
        .and_then(|a| a.split('/').next())
        .unwrap_or("")
        .to_owned();
    (status, agency)
}

/// The bound the tests hold revocation to, from the API server's event to the SDK's answer.
const BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_repointed_association_changes_the_next_answer_within_two_seconds() {
    let api = StandIn::start(false).await;
    api.apply(association("pi-demo", "app", "app-agency"));
    api.apply(association("pi-demo", "worker", "worker-agency"));
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    // The exchange and the agent each follow the cluster with their own watch, as deployed.
    let (exchange_index, _w1) = watch_associations(api.client().await);
    let exchange = start_exchange_on(&api, &iam.url, dir.path(), exchange_index).await;
    let (agent_index, _w2) = watch_associations(api.client().await);
    let agent = start_agent_following(
        Provider::Cce,
        cce_backend(&exchange.url, dir.path(), Duration::from_secs(4)),
        Some(agent_index),
        |_| {},
    )
    .await;
    let c = reqwest::Client::new();
    eventually("the agent ready", BOUND, async || {
        let r = c.get(format!("{}/readyz", agent.admin)).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let app = pod_token("pi-demo", "app", "app-1", AUD);
    let worker = pod_token("pi-demo", "worker", "worker-1", AUD);
    assert_eq!(ask(&c, &agent.url, &app).await, (200, "app-agency".into()));
    assert_eq!(ask(&c, &agent.url, &worker).await, (200, "worker-agency".into()));
    let before = iam.calls().len();
    assert_eq!(ask(&c, &agent.url, &app).await.0, 200);
    assert_eq!(iam.calls().len(), before, "answered from the cache");

    let start = Instant::now();
    api.delete("pi-demo.app");
    api.apply(association("pi-demo", "worker", "other-agency"));
    // SDK-like clients keep asking, each change timed from the API server's event.
    let (mut revoked, mut repointed) = (None, None);
    while revoked.is_none() || repointed.is_none() {
        assert!(
            start.elapsed() < BOUND,
            "after {:?}: app {:?}, worker {:?}",
            start.elapsed(),
            ask(&c, &agent.url, &app).await,
            ask(&c, &agent.url, &worker).await
        );
        if revoked.is_none() && ask(&c, &agent.url, &app).await.0 != 200 {
            revoked = Some(start.elapsed());
        }
        if repointed.is_none() && ask(&c, &agent.url, &worker).await == (200, "other-agency".into()) {
            repointed = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("measured: refused after {revoked:?}, new agency after {repointed:?} (bound {BOUND:?})");
    // And it stays that way: nothing cached under the old associations comes back.
    assert_eq!(ask(&c, &agent.url, &app).await.0, 404);
    assert_eq!(ask(&c, &agent.url, &worker).await, (200, "other-agency".into()));
    let agencies: Vec<String> = iam
        .calls()
        .iter()
        .map(|call| call.body["auth"]["identity"]["assume_role"]["agency_name"].to_string())
        .collect();
    assert_eq!(
        agencies.last().map(String::as_str),
        Some("\"other-agency\""),
        "{agencies:?}"
    );
}

/// The agent on the tests' node following its pods, with the CCE double as upstream issuing
/// two-second credentials, refreshed after one.
async fn agent_on_node(api: &StandIn) -> (doubles::Double, RunningAgent, tempfile::TempDir) {
    let cce = doubles::cce().await;
    cce.set_lifetime(2);
    let dir = tempfile::tempdir().unwrap();
    let client = api.client().await;
    let agent = start_agent(
        Provider::Cce,
        cce_backend(&cce.url, dir.path(), Duration::from_secs(4)),
        |c| {
            c.cache.min_remaining = Duration::from_millis(100);
            c.refresh_interval = Duration::from_millis(100);
            c.pods = Some(NodePods {
                client,
                node: NODE.into(),
            });
        },
    )
    .await;
    (cce, agent, dir)
}

/// The CCE double's calls for `token`.
fn calls_for(cce: &doubles::Double, token: &str) -> usize {
    cce.calls().iter().filter(|c| c.body["token"] == token).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_credentials_are_dropped_and_never_refreshed() {
    let api = StandIn::start(false).await;
    api.apply_pod(pod("pi-demo", "stays", NODE));
    api.apply_pod(pod("pi-demo", "goes", NODE));
    api.apply_pod(pod("pi-demo", "elsewhere", "node-b"));
    let (cce, agent, _dir) = agent_on_node(&api).await;
    let c = reqwest::Client::new();
    let stays = pod_token("pi-demo", "app", "stays", AUD);
    let goes = pod_token("pi-demo", "app", "goes", AUD);
    eventually("the pod watch listing", BOUND, async || api.pod_lists() > 0).await;
    assert_eq!(ask(&c, &agent.url, &stays).await.0, 200);
    assert_eq!(ask(&c, &agent.url, &goes).await.0, 200);
    assert_eq!(agent.cache.len(), 2);

    api.delete_pod("pi-demo", "goes");
    eventually("the gone pod's credentials dropped", BOUND, async || {
        agent.cache.len() == 1
    })
    .await;
    let calls_after_delete = calls_for(&cce, &goes);
    // Several refresh periods: the pod that stays is refreshed, the one that went is not.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(calls_for(&cce, &stays) >= 2, "the live pod is refreshed");
    assert_eq!(calls_for(&cce, &goes), 1, "one call, before the pod went");
    assert_eq!(calls_for(&cce, &goes), calls_after_delete);
    assert_eq!(agent.cache.len(), 1);
    assert!(agent.cache.fetched_at(&stays).is_some());
}

/// Tests that read the log run on a current-thread runtime: the agent's tasks run on the
/// test's thread, whose log events [`Logs`] captures.
#[tokio::test(flavor = "current_thread")]
async fn without_permission_to_list_pods_the_agent_says_so_and_keeps_refreshing() {
    let (logs, _guard) = Logs::capture();
    let api = StandIn::start(false).await;
    api.forbid_pods();
    let (cce, agent, _dir) = agent_on_node(&api).await;
    let c = reqwest::Client::new();
    let token = pod_token("pi-demo", "app", "gone-already", AUD);
    assert_eq!(ask(&c, &agent.url, &token).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !logs.lines_with(&["may not list pods", "node-a"]).is_empty(),
        "{}",
        logs.text()
    );
    assert!(calls_for(&cce, &token) >= 2, "refreshed as before");
    assert_eq!(api.pod_lists(), 0);
}
