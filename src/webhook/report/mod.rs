//! The missed-injection report: pods in selected namespaces whose service account has an
//! association but that carry no injection (created before the association, or admitted while
//! the webhook was unreachable under `failurePolicy: Ignore`) get a Kubernetes Event saying
//! why and what to do, and are counted in `podidentity_missed_injections{namespace}`.
//!
//! One replica reports at a time: the one holding the `pod-identity-webhook-report` Lease
//! (kube-lease-manager; the holder renews it a third of its duration before it ends, a
//! replica that stops releases it, and the others look again when it would have ended). The
//! holder runs one pod watch (from the API server's watch cache) and reads the namespaces it
//! needs with cached GETs; the other replicas cost the API server nothing but the Lease's
//! reads. The judgement itself is pure,
//! in [`tracker`].

mod tracker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::oneshot;

use super::metrics::ReportMetrics;
use super::mutation::Injection;
use super::selection::{Selection, WEBHOOK_CONFIGURATION};
use crate::association::Reader;
use crate::rate_limit::TokenBucket;
use tracker::{Judge, Tracker, by_namespace};

/// The Lease the replicas share.
const LEASE: &str = "pod-identity-webhook-report";
/// How often the candidates are judged again (associations and namespace labels change
/// without a pod event).
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
/// How often the webhook configuration's selectors are read again: when they change, every
/// pod is judged again.
const CONFIGURATION_TTL: Duration = Duration::from_secs(10);
/// How long a namespace's labels are trusted before they are read again, and how soon a
/// failed read is tried again.
const NAMESPACE_TTL: Duration = Duration::from_secs(60);
const NAMESPACE_RETRY: Duration = Duration::from_secs(10);
/// Events sent at most this fast (per second, and at once), so that an association created for
/// a service account with thousands of pods does not flood the API server; the rest follow.
const EVENT_RATE: f64 = 5.0;
const EVENT_BURST: f64 = 20.0;
/// Longest a single API request of the report may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// What the report needs.
pub(crate) struct ReportConfig {
    pub(crate) client: kube::Client,
    pub(crate) associations: Reader,
    pub(crate) injection: Injection,
    /// The namespace of the Lease (the webhook's own).
    pub(crate) namespace: String,
    /// This replica's name in the Lease.
    pub(crate) identity: String,
    /// Seconds the Lease holds without renewal; the holder renews it a third of that before
    /// its end, and a replica that waits for it looks again when it ends.
    pub(crate) lease_seconds: u64,
    pub(crate) metrics: Arc<ReportMetrics>,
}

/// The running report; [`stop`](Running::stop) releases the Lease.
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops reporting and releases the Lease (within `deadline`) so another replica takes
    /// over at once.
    pub(crate) async fn stop(mut self, deadline: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(deadline, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the report: it takes part in the Lease and reports while holding it. Without the
/// permissions it needs (pods list/watch, the Lease) it says so and does nothing.
pub(crate) fn start(config: ReportConfig) -> Running {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(lead(config, stopped));
    Running {
        stop: Some(stop),
        task,
    }
}

/// Whether a start-up error says the webhook lacks a permission (then retrying is useless).
fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_forbidden())
}

/// Joins the Lease and reports while holding it, until `stopped`.
async fn lead(config: ReportConfig, mut stopped: oneshot::Receiver<()>) {
    let shipped = match Selection::shipped() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the shipped webhook configuration cannot be read: missed injections are not reported");
            return;
        }
    };
    let pods: Api<Pod> = Api::all(config.client.clone());
    if let Err(e) = pods.list_metadata(&ListParams::default().limit(1)).await
        && forbidden(&e)
    {
        tracing::warn!(
            "may not list pods (grant get, list and watch on pods): missed injections are not reported"
        );
        return;
    }
    let manager = loop {
        let built = LeaseManagerBuilder::new(config.client.clone(), LEASE)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_seconds)
            .with_grace((config.lease_seconds / 3).max(1))
            .build();
        let retry = tokio::select! {
            built = built => match built {
                Ok(m) => break m,
                Err(kube_lease_manager::LeaseManagerError::KubeError(e)) if forbidden(&e) => {
                    tracing::warn!(
                        namespace = config.namespace,
                        lease = LEASE,
                        "may not use the Lease (grant get, create and patch on leases.coordination.k8s.io in this namespace): missed injections are not reported"
                    );
                    return;
                }
                Err(e) => e,
            },
            _ = &mut stopped => return,
        };
        tracing::warn!(error = %retry, "cannot read the report's Lease; retrying in 5 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = &mut stopped => return,
        }
    };
    tracing::info!(
        identity = config.identity,
        namespace = config.namespace,
        lease = LEASE,
        "missed-injection report: taking part in the Lease"
    );
    let config = Arc::new(config);
    let mut reporting: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            changed = manager.changed() => match changed {
                Ok(true) => {
                    tracing::info!(identity = config.identity, "holding the report's Lease: reporting missed injections");
                    config.metrics.set_leader(true);
                    reporting = Some(tokio::spawn(report(config.clone(), shipped.clone())));
                }
                Ok(false) => {
                    tracing::info!(identity = config.identity, "lost the report's Lease: another replica reports");
                    end(&config.metrics, reporting.take());
                }
                Err(e) => {
                    // Unknown whether the Lease still holds: stop reporting until it is known.
                    tracing::warn!(error = %e, "the report's Lease cannot be renewed; retrying");
                    end(&config.metrics, reporting.take());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = &mut stopped => break,
                    }
                }
            },
            _ = &mut stopped => break,
        }
    }
    end(&config.metrics, reporting.take());
    release(&manager).await;
}

fn end(metrics: &ReportMetrics, reporting: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = reporting {
        task.abort();
    }
    metrics.set_leader(false);
}

async fn release(manager: &LeaseManager) {
    match tokio::time::timeout(REQUEST_DEADLINE, manager.release()).await {
        Ok(Ok(())) => tracing::info!("released the report's Lease"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not release the report's Lease; it expires by itself")
        }
        Err(_) => tracing::warn!("releasing the report's Lease timed out; it expires by itself"),
    }
}

/// Reports while this replica holds the Lease (the task is aborted when it loses it), with the
/// selectors the API server applies, judging every pod again when they change.
async fn report(config: Arc<ReportConfig>, shipped: Selection) {
    let budget = TokenBucket::new(EVENT_RATE, EVENT_BURST);
    let mut configuration = Configuration::new(shipped);
    let mut selection = configuration.read(&config.client).await;
    while let Some(changed) = report_with(&config, &selection, &mut configuration, &budget).await {
        tracing::info!("the webhook configuration's selectors changed: every pod is judged again");
        selection = changed;
    }
}

/// Reports with `selection` until the pod watch ends (`None`) or the webhook configuration's
/// selectors change (the new ones). A fresh watch starts from the API server's watch cache.
async fn report_with(
    config: &ReportConfig,
    selection: &Selection,
    configuration: &mut Configuration,
    budget: &TokenBucket,
) -> Option<Selection> {
    let judge = Judge {
        selection,
        injection: &config.injection,
    };
    let pods: Api<Pod> = Api::all(config.client.clone());
    // `any_semantic`: the lists come from the API server's watch cache, not from etcd.
    let mut events = watcher::watcher(pods, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    let mut tracker = Tracker::default();
    let mut namespaces = Namespaces::new(config.client.clone(), selection.clone());
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => tracker.apply(&judge, event),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => return None,
            },
            _ = tick.tick() => {
                if configuration.stale() {
                    let now = configuration.read(&config.client).await;
                    if now != *selection {
                        return Some(now);
                    }
                }
                if tracker.synced() {
                    evaluate(config, &mut tracker, &mut namespaces, budget).await;
                }
            }
        }
    }
}

/// The selectors the API server applies: the MutatingWebhookConfiguration's in the cluster;
/// the shipped ones when there is none or it may not be read.
struct Configuration {
    shipped: Selection,
    /// The last selectors read, and when.
    last: Option<(Selection, Instant)>,
    /// Whether the last read was refused (said once).
    forbidden: bool,
}

impl Configuration {
    fn new(shipped: Selection) -> Self {
        Configuration {
            shipped,
            last: None,
            forbidden: false,
        }
    }

    fn stale(&self) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= CONFIGURATION_TTL)
    }

    /// Reads the configuration; a read that fails for another reason keeps what was known.
    async fn read(&mut self, client: &kube::Client) -> Selection {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let read = tokio::time::timeout(REQUEST_DEADLINE, api.get_opt(WEBHOOK_CONFIGURATION)).await;
        if matches!(read, Ok(Ok(_))) {
            self.forbidden = false;
        }
        let selection = match read {
            Ok(Ok(Some(w))) => serde_json::to_value(&w)
                .map(|v| Selection::of(&v))
                .unwrap_or_else(|_| self.shipped.clone()),
            Ok(Ok(None)) => self.shipped.clone(),
            Ok(Err(e)) if forbidden(&e) => {
                if !self.forbidden {
                    tracing::warn!(
                        configuration = WEBHOOK_CONFIGURATION,
                        "may not read the MutatingWebhookConfiguration (grant get on it): missed injections are judged with the shipped selectors"
                    );
                }
                self.forbidden = true;
                self.shipped.clone()
            }
            _ => match &self.last {
                Some((known, _)) => known.clone(),
                None => self.shipped.clone(),
            },
        };
        self.last = Some((selection.clone(), Instant::now()));
        selection
    }
}

/// Judges every candidate against the current associations and namespaces: updates the
/// counts, and sends the Events not sent yet (within the budget).
async fn evaluate(
    config: &ReportConfig,
    tracker: &mut Tracker,
    namespaces: &mut Namespaces,
    budget: &TokenBucket,
) {
    let index = config.associations.load();
    for ns in tracker.namespaces(&index) {
        namespaces.refresh(&ns).await;
    }
    let missed = tracker.missed(&index, |ns| namespaces.selected(ns));
    config.metrics.set_missed(by_namespace(&missed));
    let unreported: Vec<Event> = missed
        .iter()
        .filter(|m| !m.pod.reported())
        .map(|m| missed_event(&config.identity, m.pod, &m.association))
        .collect();
    drop(missed);
    for event in unreported {
        if budget.take().is_err() {
            // The rest are sent on the next rounds.
            break;
        }
        let regarding = event.regarding.clone().unwrap_or_default();
        let (ns, pod, uid) = (
            regarding.namespace.unwrap_or_default(),
            regarding.name.unwrap_or_default(),
            regarding.uid.unwrap_or_default(),
        );
        let api: Api<Event> = Api::namespaced(config.client.clone(), &ns);
        let sent = tokio::time::timeout(REQUEST_DEADLINE, api.create(&PostParams::default(), &event)).await;
        match sent {
            Ok(Ok(_)) => {
                config.metrics.event_sent();
                tracker.mark_reported(&uid);
                tracing::info!(namespace = ns, pod, "pod was not injected: Event sent");
            }
            // Another replica (an earlier holder of the Lease) sent it already.
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => tracker.mark_reported(&uid),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not send the missed-injection Event (grant create on events.k8s.io events); retrying later");
                break;
            }
            Err(_) => {
                tracing::warn!("sending the missed-injection Event timed out; retrying later");
                break;
            }
        }
    }
}

/// The Event for a missed pod. Its name is derived from the pod's uid, so that a pod is
/// reported once whichever replica holds the Lease, and after a restart (the API server
/// refuses a second Event of that name).
fn missed_event(
    identity: &str,
    pod: &tracker::Candidate,
    association: &crate::association::Association,
) -> Event {
    let note = format!(
        "pod identity not injected: service account {}/{} has association {} ({}), but this pod was created without it (before the association existed, or while the webhook was unreachable), so it gets no credentials. Recreate the pod: kubectl rollout restart its workload, or kubectl delete pod {} -n {}",
        pod.namespace,
        pod.service_account,
        association.uid,
        association.target(),
        pod.name,
        pod.namespace,
    );
    Event {
        metadata: ObjectMeta {
            name: Some(format!("podidentity-missed.{}", pod.uid)),
            namespace: Some(pod.namespace.to_string()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        type_: Some("Warning".into()),
        reason: Some("PodIdentityNotInjected".into()),
        action: Some("Report".into()),
        note: Some(truncated(note, 1024)),
        reporting_controller: Some("podidentity.io/pod-identity-webhook".into()),
        reporting_instance: Some(truncated(identity.to_owned(), 128)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.to_string()),
            namespace: Some(pod.namespace.to_string()),
            uid: Some(pod.uid.to_string()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

/// `text` cut to at most `max` bytes (the API server's limits on an Event's fields).
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Namespaces' selection by the webhook configuration, read with GETs and kept for
/// [`NAMESPACE_TTL`]: only the namespaces of candidates with an association are read.
struct Namespaces {
    api: Api<Namespace>,
    selection: Selection,
    /// Selected or not (unknown when never read), and until when that is trusted.
    known: HashMap<String, (Option<bool>, Instant)>,
}

impl Namespaces {
    fn new(client: kube::Client, selection: Selection) -> Self {
        Namespaces {
            api: Api::all(client),
            selection,
            known: HashMap::new(),
        }
    }

    /// Reads `name` again when its labels are older than the TTL.
    async fn refresh(&mut self, name: &str) {
        let now = Instant::now();
        if self.known.get(name).is_some_and(|(_, until)| now < *until) {
            return;
        }
        let read = match tokio::time::timeout(REQUEST_DEADLINE, self.api.get_opt(name)).await {
            Ok(Ok(Some(ns))) => {
                let labels = ns.metadata.labels.unwrap_or_else(BTreeMap::new);
                Some(self.selection.namespace_selected(name, &labels))
            }
            Ok(Ok(None)) => Some(false),
            Ok(Err(e)) => {
                tracing::warn!(namespace = name, error = %e, "cannot read the namespace (grant get on namespaces); trying again in 10 s");
                None
            }
            Err(_) => None,
        };
        // A failed read keeps what was known, and is tried again sooner.
        let entry = match read {
            Some(selected) => (Some(selected), now + NAMESPACE_TTL),
            None => (self.selected(name), now + NAMESPACE_RETRY),
        };
        self.known.insert(name.to_owned(), entry);
    }

    fn selected(&self, name: &str) -> Option<bool> {
        self.known.get(name).and_then(|(s, _)| *s)
    }
}
