//! The in-cluster association source: `PodIdentityAssociation` objects of both kinds (the
//! namespaced one and, for one more release, the cluster-scoped one it replaces) watched into
//! one index, where a namespaced association wins over an old one of the same service account.
//!
//! Only the validated record of each object is kept (no reflector cache of whole objects).
//! Objects are read as dynamic objects and converted one by one, so a malformed one is skipped
//! with a warning instead of failing the whole list. A kind whose CRD is not installed (the
//! old one deleted after the migration, or an install older than the new one) counts as "no
//! objects" and is watched for in case it appears; with neither installed nothing is ready.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, ResourceExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::Association;
use super::crd::{PodIdentityAssociation, legacy, to_association};
use super::index::{Index, Writer};
use crate::metrics::{InputMetrics, Source};

/// Which of the two CRDs an object or a watch is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    /// `iam.podidentity.io/v1beta1`, in the service account's namespace.
    #[default]
    Namespaced,
    /// `podidentity.io/v1alpha1`, cluster-scoped.
    Legacy,
}

impl Kind {
    /// The CRD's name.
    pub(crate) fn crd(self) -> String {
        let r = self.resource();
        format!("{}.{}", r.plural, r.group)
    }

    pub(crate) fn resource(self) -> ApiResource {
        match self {
            Kind::Namespaced => ApiResource::erase::<PodIdentityAssociation>(&()),
            Kind::Legacy => ApiResource::erase::<legacy::PodIdentityAssociation>(&()),
        }
    }

    /// The record of `obj`, an object of this kind.
    pub(crate) fn read(self, obj: &DynamicObject, cluster_id: Option<&str>) -> Result<Association, String> {
        let obj = obj.clone();
        let namespaced = match self {
            Kind::Namespaced => obj
                .try_parse::<PodIdentityAssociation>()
                .map_err(|e| e.to_string())?,
            Kind::Legacy => {
                let old = obj
                    .try_parse::<legacy::PodIdentityAssociation>()
                    .map_err(|e| e.to_string())?;
                legacy::twin(&old, true).map_err(|e| e.to_string())?
            }
        };
        to_association(&namespaced, cluster_id).map_err(|e| e.to_string())
    }
}

/// The associations a watch of one kind has seen, by `namespace/name`; a pure state machine
/// over watch events.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    kind: Kind,
    cluster_id: Option<String>,
    live: HashMap<String, Arc<Association>>,
    /// Objects of a (re)list in progress; they replace `live` when it completes.
    relist: Option<HashMap<String, Arc<Association>>>,
    synced: bool,
    /// The last list found no CRD.
    missing: bool,
}

impl WatchState {
    pub(crate) fn new(kind: Kind, cluster_id: Option<String>) -> Self {
        WatchState {
            kind,
            cluster_id,
            ..Default::default()
        }
    }

    /// The CRD is not installed: no objects of this kind, which is a complete list.
    pub(crate) fn absent(&mut self) -> bool {
        let changed = !self.live.is_empty() || !self.synced;
        self.live.clear();
        self.relist = None;
        self.synced = true;
        self.missing = true;
        changed
    }

    /// Applies one event; true when the live set changed.
    pub(crate) fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.missing = false;
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(obj) => {
                let (name, parsed) = self.read(&obj);
                if let (Some(relist), Some(a)) = (self.relist.as_mut(), parsed) {
                    relist.insert(name, a);
                }
                false
            }
            Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(obj) => {
                let (name, parsed) = self.read(&obj);
                match parsed {
                    Some(a) => {
                        let same = self.live.get(&name).is_some_and(|old| **old == *a);
                        if !same {
                            self.live.insert(name, a);
                        }
                        !same
                    }
                    // It no longer describes a valid association: stop honouring it.
                    None => self.live.remove(&name).is_some(),
                }
            }
            Event::Delete(obj) => self.live.remove(&key(&obj)).is_some(),
        }
    }

    fn read(&self, obj: &DynamicObject) -> (String, Option<Arc<Association>>) {
        let name = key(obj);
        match self.kind.read(obj, self.cluster_id.as_deref()) {
            Ok(a) => (name, Some(Arc::new(a))),
            Err(e) => {
                tracing::warn!(name, kind = ?self.kind, error = %e, "skipping malformed PodIdentityAssociation");
                (name, None)
            }
        }
    }

    /// Whether the initial list has completed.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }
}

/// An object's key in its watch: names are unique per namespace (cluster-scoped: none).
fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Both watches, and the index they make together.
#[derive(Debug)]
pub(crate) struct Watches {
    pub(crate) namespaced: WatchState,
    pub(crate) legacy: WatchState,
    /// Old objects a namespaced association overrides, already logged.
    shadowed: HashSet<String>,
}

impl Watches {
    pub(crate) fn new(cluster_id: Option<String>) -> Self {
        Watches {
            namespaced: WatchState::new(Kind::Namespaced, cluster_id.clone()),
            legacy: WatchState::new(Kind::Legacy, cluster_id),
            shadowed: HashSet::new(),
        }
    }

    pub(crate) fn of(&mut self, kind: Kind) -> &mut WatchState {
        match kind {
            Kind::Namespaced => &mut self.namespaced,
            Kind::Legacy => &mut self.legacy,
        }
    }

    /// Whether both initial lists have completed, or one did and the other found no CRD.
    pub(crate) fn synced(&self) -> bool {
        self.namespaced.synced && self.legacy.synced && !(self.namespaced.missing && self.legacy.missing)
    }

    /// The index of both live sets; of an old and a namespaced association of one service
    /// account, the namespaced one (logged once per old object). Names are unique and encode
    /// the service account, so two live associations of one kind never share one.
    pub(crate) fn index(&mut self) -> Index {
        let subject = |a: &Association| (a.namespace.clone(), a.service_account.clone());
        let new: HashSet<(String, String)> = self.namespaced.live.values().map(|a| subject(a)).collect();
        let mut shadowed = HashSet::new();
        let mut kept: Vec<Arc<Association>> = self.namespaced.live.values().cloned().collect();
        for (name, a) in &self.legacy.live {
            if !new.contains(&subject(a)) {
                kept.push(a.clone());
                continue;
            }
            if !self.shadowed.contains(name) {
                tracing::info!(
                    old = name.trim_start_matches('/'),
                    namespace = a.namespace,
                    service_account = a.service_account,
                    "a namespaced association overrides the cluster-scoped one of the same service account; \
                     `pod-identity-webhook migrate-associations --delete-old` removes the old one"
                );
            }
            shadowed.insert(name.clone());
        }
        self.shadowed = shadowed;
        Index::build(kept.iter().cloned()).unwrap_or_else(|dup| {
            tracing::error!(error = %dup, "duplicate association in the watch; keeping none of them out of caution");
            Index::build(kept.into_iter().filter(|a| a.namespace != dup.namespace || a.service_account != dup.service_account))
                .unwrap_or_default()
        })
    }
}

/// Both kinds listed once, into the index a watch would make (`explain`): a kind whose CRD is
/// not installed has no objects.
pub(crate) async fn list_once(client: &kube::Client) -> Result<Index, kube::Error> {
    let mut state = Watches::new(None);
    for kind in [Kind::Namespaced, Kind::Legacy] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        match api.list(&Default::default()).await {
            Ok(list) => {
                let watch = state.of(kind);
                watch.apply(Event::Init);
                for o in list.items {
                    watch.apply(Event::InitApply(o));
                }
                watch.apply(Event::InitDone);
            }
            Err(e) if crate::kube_client::is_absent(&e) => {
                state.of(kind).absent();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(state.index())
}

/// Whether a watch error means the kind's CRD is not installed (its list is a 404).
fn crd_absent(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
            crate::kube_client::is_absent(e)
        }
        _ => false,
    }
}

/// A running watch; stops when dropped.
pub(crate) struct KubeSource {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Watches all `PodIdentityAssociation`s of both kinds. `synced` turns true after the
    /// first complete lists; after that, losing the API server keeps the last index serving
    /// while the watchers retry with backoff.
    pub(crate) fn start(
        client: kube::Client,
        writer: Writer,
        metrics: Arc<InputMetrics>,
        cluster_id: Option<String>,
    ) -> Self {
        let watch = |kind: Kind| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (kind, e))
        };
        let events = futures::stream::select(watch(Kind::Namespaced), watch(Kind::Legacy)).ready_chunks(512);
        let task = tokio::spawn(async move {
            let mut state = Watches::new(cluster_id);
            futures::pin_mut!(events);
            while let Some(batch) = events.next().await {
                let mut changed = false;
                for (kind, event) in batch {
                    match event {
                        Ok(event) => {
                            if !metrics.is_source_connected() {
                                tracing::info!("association watch reconnected");
                                metrics.source_connected(true);
                            }
                            changed |= state.of(kind).apply(event);
                        }
                        Err(e) if crd_absent(&e) => {
                            let first = !state.of(kind).synced();
                            changed |= state.of(kind).absent();
                            if first {
                                tracing::info!(
                                    crd = kind.crd(),
                                    "this association CRD is not installed: none of its objects; watching for it"
                                );
                            }
                            if state.namespaced.missing && state.legacy.missing {
                                metrics.source_error();
                                tracing::error!(
                                    "neither association CRD is installed: apply `pod-identity-webhook crd | kubectl apply -f -`; not ready until one is"
                                );
                            }
                        }
                        Err(e) => {
                            metrics.source_error();
                            metrics.source_connected(false);
                            tracing::warn!(error = %e, "association watch failed; the last index keeps serving while it retries");
                        }
                    }
                }
                // Rebuilt once per batch: a relist of thousands of objects costs one swap.
                if changed && state.synced() {
                    let index = state.index();
                    tracing::info!(
                        associations = index.len(),
                        "association index updated from the cluster"
                    );
                    metrics.set_associations(index.len());
                    metrics.reload(Source::Associations, true);
                    writer.replace(index);
                    if !writer.mark_synced() {
                        tracing::info!("initial association list synced");
                    }
                }
            }
        });
        KubeSource { task }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(ns: &str, sa: &str, agency: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "podidentity.io/v1alpha1",
            "kind": "PodIdentityAssociation",
            "metadata": {"name": format!("{ns}.{sa}"), "uid": format!("uid-{ns}-{sa}")},
            "spec": {"namespace": ns, "serviceAccount": sa, "agencyName": agency},
        }))
        .unwrap()
    }

    fn namespaced(ns: &str, sa: &str, agency: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "iam.podidentity.io/v1beta1",
            "kind": "PodIdentityAssociation",
            "metadata": {"name": sa, "namespace": ns, "uid": format!("uid-new-{ns}-{sa}")},
            "spec": {"serviceAccount": sa, "agencyName": agency},
        }))
        .unwrap()
    }

    fn malformed(name: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "podidentity.io/v1alpha1",
            "kind": "PodIdentityAssociation",
            "metadata": {"name": name},
            "spec": {"namespace": 7, "serviceAccount": ["x"]},
        }))
        .unwrap()
    }

    fn target(state: &WatchState, ns: &str, sa: &str) -> Option<String> {
        index(state).get(ns, sa).map(|a| a.target().to_owned())
    }

    /// One watch's live set alone.
    fn index(state: &WatchState) -> Index {
        Index::build(state.live.values().cloned()).unwrap()
    }

    fn target_of(w: &mut Watches, ns: &str, sa: &str) -> Option<(String, String)> {
        w.index()
            .get(ns, sa)
            .map(|a| (a.target().to_owned(), a.uid.clone()))
    }

    #[test]
    fn a_namespaced_association_wins_over_an_old_one_of_the_same_service_account() {
        let mut w = Watches::new(None);
        list(&mut w.legacy, vec![obj("a", "x", "old"), obj("b", "y", "old-b")]);
        assert!(!w.synced(), "the namespaced list is still to come");
        list(&mut w.namespaced, vec![namespaced("a", "x", "new")]);
        assert!(w.synced());
        assert_eq!(
            target_of(&mut w, "a", "x"),
            Some(("new".into(), "uid-new-a-x".into()))
        );
        assert_eq!(
            target_of(&mut w, "b", "y"),
            Some(("old-b".into(), "uid-b-y".into()))
        );
        // The namespaced one goes: the old one serves again (until the migration deletes it).
        assert!(w.namespaced.apply(Event::Delete(namespaced("a", "x", "new"))));
        assert_eq!(
            target_of(&mut w, "a", "x"),
            Some(("old".into(), "uid-a-x".into()))
        );
        // A namespaced object is keyed by namespace and name: another namespace's is another.
        assert!(w.namespaced.apply(Event::Apply(namespaced("c", "x", "c-new"))));
        assert_eq!(target_of(&mut w, "c", "x").unwrap().0, "c-new");
        assert_eq!(w.index().len(), 3);
    }

    #[test]
    fn a_missing_crd_is_no_objects_but_both_missing_is_not_ready() {
        let mut w = Watches::new(None);
        assert!(w.legacy.absent());
        assert!(!w.legacy.absent(), "still missing: no change");
        assert!(!w.synced());
        assert!(w.namespaced.absent());
        assert!(!w.synced(), "with neither CRD installed nothing is ready");
        // The new CRD is installed: its list makes the source ready.
        list(&mut w.namespaced, vec![namespaced("a", "x", "new")]);
        assert!(w.synced());
        assert_eq!(w.index().len(), 1);
        // The old CRD deleted later (after the migration): its objects are gone, the rest stays.
        let mut w = Watches::new(None);
        list(&mut w.legacy, vec![obj("b", "y", "old")]);
        list(&mut w.namespaced, vec![]);
        assert_eq!(w.index().len(), 1);
        assert!(w.legacy.absent());
        assert!(w.synced());
        assert!(w.index().is_empty());
    }

    fn list(state: &mut WatchState, objects: Vec<DynamicObject>) -> bool {
        state.apply(Event::Init);
        for o in objects {
            state.apply(Event::InitApply(o));
        }
        state.apply(Event::InitDone)
    }

    #[test]
    fn initial_list_then_applies_and_deletes() {
        let mut s = WatchState::new(Kind::Legacy, Some("c".into()));
        assert!(!s.synced());
        s.apply(Event::Init);
        s.apply(Event::InitApply(obj("a", "x", "ag1")));
        assert!(!s.synced(), "not synced before the list completes");
        assert!(s.apply(Event::InitDone));
        assert!(s.synced());
        assert_eq!(target(&s, "a", "x").as_deref(), Some("ag1"));
        assert_eq!(index(&s).get("a", "x").unwrap().cluster_id.as_deref(), Some("c"));

        assert!(s.apply(Event::Apply(obj("b", "y", "ag2"))));
        assert!(s.apply(Event::Apply(obj("a", "x", "ag1-changed"))));
        assert!(
            !s.apply(Event::Apply(obj("a", "x", "ag1-changed"))),
            "same object again is no change"
        );
        assert_eq!(target(&s, "a", "x").as_deref(), Some("ag1-changed"));
        assert!(s.apply(Event::Delete(obj("b", "y", "ag2"))));
        assert!(target(&s, "b", "y").is_none());
        assert!(!s.apply(Event::Delete(obj("b", "y", "ag2"))));
    }

    #[test]
    fn a_relist_replaces_everything_and_drops_what_vanished() {
        let mut s = WatchState::new(Kind::Legacy, None);
        list(&mut s, vec![obj("a", "x", "1"), obj("b", "y", "2")]);
        // Restart or 410 Gone: objects deleted while the watch was down are absent from the list.
        s.apply(Event::Init);
        s.apply(Event::InitApply(obj("b", "y", "2b")));
        assert_eq!(
            target(&s, "a", "x").as_deref(),
            Some("1"),
            "the old set serves during the relist"
        );
        s.apply(Event::InitDone);
        assert!(target(&s, "a", "x").is_none());
        assert_eq!(target(&s, "b", "y").as_deref(), Some("2b"));
        assert_eq!(index(&s).len(), 1);
    }

    #[test]
    fn malformed_objects_are_skipped_not_fatal() {
        let mut s = WatchState::new(Kind::Legacy, None);
        let mut wrong_name = obj("a", "x", "1");
        wrong_name.metadata.name = Some("not-the-rule".into());
        list(&mut s, vec![malformed("bad"), wrong_name, obj("b", "y", "2")]);
        assert_eq!(index(&s).len(), 1);
        assert!(!s.apply(Event::Apply(malformed("other"))));
        // An object that turns malformed stops being honoured.
        let mut broken = malformed("b.y");
        broken.metadata.name = Some("b.y".into());
        assert!(s.apply(Event::Apply(broken)));
        assert!(index(&s).is_empty());
    }
}
