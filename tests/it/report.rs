//! The missed-injection report, with two real webhook replicas against the stand-in API
//! server: a pod created before its association (or admitted while the webhook was
//! unreachable) gets one Event and is counted by namespace; injected, opted-out, unselected
//! and association-less pods are not. Only the replica holding the Lease reports, and when it
//! stops the other takes over without reporting the same pods again.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::standin::{StandIn, association, pod};
use crate::common::*;

/// A pod of service account `sa`, with `extra` merged into it.
fn pod_of(ns: &str, name: &str, sa: &str, extra: Value) -> Value {
    let mut p = pod(ns, name, NODE);
    p["spec"]["serviceAccountName"] = json!(sa);
    json_patch::merge(&mut p, &extra);
    p
}

/// A webhook replica named `name` following the stand-in, its log in `dir`.
fn replica(api: &StandIn, dir: &Path, name: &str, port: u16) -> Reaped {
    let kubeconfig = api.kubeconfig(dir, "webhook-token");
    spawn(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cert-dir",
            dir.join("certs").to_str().unwrap(),
            "--source",
            "kubernetes",
            "--report-lease-seconds",
            "3",
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", name),
            ("POD_NAMESPACE", "pod-identity-system"),
            ("RUST_LOG", "info"),
        ],
        &dir.join(format!("{name}.log")),
    )
}

/// One ready webhook replica following the stand-in, and a client trusting it.
struct Single {
    _webhook: Reaped,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    base: String,
}

impl Single {
    async fn start(api: &StandIn) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = local_certs(dir.path());
        let port = free_port();
        let webhook = replica(api, dir.path(), "replica-0", port);
        let client = client(&[&ca], Http::H1);
        let base = format!("https://localhost:{port}");
        let ready = format!("{base}/readyz");
        until_ready(&client, &ready, Instant::now() + Duration::from_secs(30)).await;
        Single {
            _webhook: webhook,
            dir,
            client,
            base,
        }
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("replica-0.log")
    }
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The uids of the pods the Events so far are about.
fn reported(api: &StandIn) -> Vec<String> {
    let mut uids: Vec<String> = api
        .events()
        .iter()
        .map(|e| e["regarding"]["uid"].as_str().unwrap_or("").to_owned())
        .collect();
    uids.sort();
    uids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_before_its_association_is_reported_once_by_one_of_two_replicas() {
    let api = StandIn::start(false).await;
    let opted_in = json!({"podidentity.io/injection": "enabled"});
    api.apply_namespace(json!({"metadata": {"name": "team-a", "labels": opted_in}}));
    api.apply_namespace(json!({"metadata": {"name": "team-off", "labels": {}}}));
    api.apply_pod(pod_of("team-a", "early", "app", json!({})));
    api.apply_pod(pod_of(
        "team-a",
        "injected",
        "app",
        json!({"metadata": {"annotations": {"podidentity.io/association": "x"}}}),
    ));
    api.apply_pod(pod_of(
        "team-a",
        "opted-out",
        "app",
        json!({"metadata": {"labels": {"podidentity.io/inject": "false"}}}),
    ));
    api.apply_pod(pod_of(
        "team-a",
        "finished",
        "app",
        json!({"status": {"phase": "Succeeded"}}),
    ));
    api.apply_pod(pod_of("team-a", "stranger", "nobody", json!({})));
    api.apply_pod(pod_of("team-off", "elsewhere", "app", json!({})));

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = local_certs(d);
    let c = client(&[&ca], Http::H1);
    let ports = [free_port(), free_port()];
    let mut replicas = vec![
        Some(replica(&api, d, "replica-0", ports[0])),
        Some(replica(&api, d, "replica-1", ports[1])),
    ];
    for p in ports {
        let url = format!("https://localhost:{p}/readyz");
        until_ready(&c, &url, Instant::now() + Duration::from_secs(30)).await;
    }
    let metrics = async |port: u16| {
        let url = format!("https://localhost:{port}/metrics");
        match c.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };

    // Associations created after the pods: only team-a/early is missed.
    api.apply(association("team-a", "app", "app-agency"));
    api.apply(association("team-off", "app", "app-agency"));
    eventually(
        "the Event for team-a/early",
        Duration::from_secs(15),
        async || !api.events().is_empty(),
    )
    .await;
    let event = &api.events()[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "PodIdentityNotInjected");
    assert_eq!(event["regarding"]["kind"], "Pod");
    assert_eq!(event["regarding"]["namespace"], "team-a");
    assert_eq!(event["regarding"]["name"], "early");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("team-a/app") && note.contains("app-agency") && note.contains("Recreate the pod"),
        "{note}"
    );

    // One replica holds the Lease and counts; the other does nothing.
    let mut leader = None;
    eventually("the count on the leader", Duration::from_secs(10), async || {
        for (i, p) in ports.iter().enumerate() {
            let m = metrics(*p).await;
            if metric(&m, "podidentity_report_leader") == 1
                && metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 1
            {
                leader = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let leader = leader.unwrap();
    let follower = 1 - leader;
    let holder = api
        .lease("pod-identity-system", "pod-identity-webhook-report")
        .unwrap();
    assert_eq!(holder["spec"]["holderIdentity"], format!("replica-{leader}"));
    let m = metrics(ports[leader]).await;
    assert!(!m.contains("namespace=\"team-off\""), "{m}");
    assert_eq!(metric(&m, "podidentity_missed_injection_events_total"), 1, "{m}");
    let m = metrics(ports[follower]).await;
    assert_eq!(metric(&m, "podidentity_report_leader"), 0, "{m}");
    // What the two replicas cost the API server in pods: each one permission check (a list of
    // one), and the leader's one watch with the list it starts from.
    assert_eq!((api.pod_lists(), api.pod_watches()), (3, 1));
    assert_eq!(metric(&m, "podidentity_missed_injection_events_total"), 0, "{m}");

    // A pod admitted while the webhook was unreachable is reported too, and nothing twice.
    api.apply_pod(pod_of("team-a", "late", "app", json!({})));
    eventually("the Event for team-a/late", Duration::from_secs(10), async || {
        api.events().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reported(&api), ["early-uid", "late-uid"]);

    // The leader stops and releases the Lease: the other takes over, counts the same pods
    // and sends no second Event for them.
    let mut stopped = replicas[leader].take().unwrap().into_inner();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &stopped.id().to_string()])
        .status();
    assert!(stopped.wait().unwrap().success());
    eventually(
        "the other replica taking over",
        Duration::from_secs(15),
        async || {
            let m = metrics(ports[follower]).await;
            metric(&m, "podidentity_report_leader") == 1
                && metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reported(&api), ["early-uid", "late-uid"]);
    assert_eq!(
        metric(
            &metrics(ports[follower]).await,
            "podidentity_missed_injection_events_total"
        ),
        0
    );

    // A recreated pod (the old one deleted) is no longer counted.
    api.delete_pod("team-a", "early");
    eventually("the count to drop", Duration::from_secs(10), async || {
        let m = metrics(ports[follower]).await;
        metric(&m, "podidentity_missed_injections{namespace=\"team-a\"}") == 1
    })
    .await;
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_on_pods_the_webhook_says_so_and_keeps_admitting() {
    let api = StandIn::start(false).await;
    api.forbid_pods();
    let one = Single::start(&api).await;
    let (c, base) = (&one.client, &one.base);
    let log = one.log();
    eventually("the warning", Duration::from_secs(10), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("may not list pods")
    })
    .await;
    let answer = c
        .post(format!("{base}/mutate"))
        .header("content-type", "application/json")
        .body(fixture("01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        api.lease("pod-identity-system", "pod-identity-webhook-report")
            .is_none()
    );
}

/// The shipped MutatingWebhookConfiguration, its namespace selector replaced by `selector`.
fn configuration(selector: Option<Value>) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/webhook.yaml");
    let mut c: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    if let Some(s) = selector {
        c["webhooks"][0]["namespaceSelector"] = s;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_judges_by_the_webhook_configuration_in_the_cluster() {
    let api = StandIn::start(false).await;
    // The cluster's configuration selects namespaces by a label of the user's own.
    api.apply_webhook_configuration(configuration(Some(json!({"matchLabels": {"team": "payments"}}))));
    api.apply_namespace(json!({"metadata": {"name": "payments", "labels": {"team": "payments"}}}));
    api.apply_namespace(json!({"metadata": {"name": "opted",
        "labels": {"podidentity.io/injection": "enabled"}}}));
    api.apply_pod(pod_of("payments", "p1", "app", json!({})));
    api.apply_pod(pod_of("opted", "o1", "app", json!({})));
    api.apply(association("payments", "app", "pay-agency"));
    api.apply(association("opted", "app", "opted-agency"));

    let one = Single::start(&api).await;
    let (c, base) = (&one.client, &one.base);
    let metrics = async || {
        c.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    // Only the pod the cluster's selectors take is missed, not the one the shipped ones would.
    eventually("the Event for payments/p1", Duration::from_secs(15), async || {
        reported(&api) == ["p1-uid"]
    })
    .await;
    let m = metrics().await;
    assert_eq!(
        metric(&m, "podidentity_missed_injections{namespace=\"payments\"}"),
        1,
        "{m}"
    );
    assert!(!m.contains("namespace=\"opted\""), "{m}");

    // The configuration changes back to the shipped selectors: every pod is judged again.
    api.apply_webhook_configuration(configuration(None));
    eventually("the Event for opted/o1", Duration::from_secs(30), async || {
        reported(&api) == ["o1-uid", "p1-uid"]
    })
    .await;
    eventually("the counts to follow", Duration::from_secs(10), async || {
        let m = metrics().await;
        metric(&m, "podidentity_missed_injections{namespace=\"opted\"}") == 1
            && !m.contains("namespace=\"payments\"")
    })
    .await;
    let log = std::fs::read_to_string(one.log()).unwrap();
    assert!(log.contains("selectors changed"), "{log}");
}
