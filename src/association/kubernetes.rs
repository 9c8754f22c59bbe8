//! The in-cluster association source: `PodIdentityAssociation` objects watched into the index.
//!
//! Only the validated record of each object is kept (no reflector cache of whole objects).
//! Objects are read as dynamic objects and converted one by one, so a malformed one is skipped
//! with a warning instead of failing the whole list.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, ResourceExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::Association;
use super::crd::{PodIdentityAssociation, to_association};
use super::index::{Index, Writer};
use crate::metrics::{InputMetrics, Source};

/// The associations a watch has seen, by object name; a pure state machine over watch events.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    cluster_id: Option<String>,
    live: HashMap<String, Arc<Association>>,
    /// Objects of a (re)list in progress; they replace `live` when it completes.
    relist: Option<HashMap<String, Arc<Association>>>,
    synced: bool,
}

impl WatchState {
    pub(crate) fn new(cluster_id: Option<String>) -> Self {
        WatchState {
            cluster_id,
            ..Default::default()
        }
    }

    /// Applies one event; true when the live set changed.
    pub(crate) fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
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
            Event::Delete(obj) => self.live.remove(&obj.name_any()).is_some(),
        }
    }

    fn read(&self, obj: &DynamicObject) -> (String, Option<Arc<Association>>) {
        let name = obj.name_any();
        let parsed = obj
            .clone()
            .try_parse::<PodIdentityAssociation>()
            .map_err(|e| e.to_string())
            .and_then(|pia| to_association(&pia, self.cluster_id.as_deref()).map_err(|e| e.to_string()));
        match parsed {
            Ok(a) => (name, Some(Arc::new(a))),
            Err(e) => {
                tracing::warn!(name, error = %e, "skipping malformed PodIdentityAssociation");
                (name, None)
            }
        }
    }

    /// Whether the initial list has completed.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    /// The index of the live set. Names are unique and the name encodes the service account,
    /// so two live associations never share one.
    pub(crate) fn index(&self) -> Index {
        Index::build(self.live.values().cloned()).unwrap_or_else(|dup| {
            tracing::error!(error = %dup, "duplicate association in the watch; keeping none of them out of caution");
            Index::build(self.live.values().filter(|a| a.namespace != dup.namespace || a.service_account != dup.service_account).cloned())
                .unwrap_or_default()
        })
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
    /// Watches all `PodIdentityAssociation`s. `synced` turns true after the first complete
    /// list; after that, losing the API server keeps the last index serving while the watcher
    /// retries with backoff.
    pub(crate) fn start(
        client: kube::Client,
        writer: Writer,
        metrics: Arc<InputMetrics>,
        cluster_id: Option<String>,
    ) -> Self {
        let resource = ApiResource::erase::<PodIdentityAssociation>(&());
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let task = tokio::spawn(async move {
            let mut state = WatchState::new(cluster_id);
            let events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .ready_chunks(512);
            futures::pin_mut!(events);
            while let Some(batch) = events.next().await {
                let mut changed = false;
                for event in batch {
                    match event {
                        Ok(event) => {
                            if !metrics.is_source_connected() {
                                tracing::info!("association watch reconnected");
                                metrics.source_connected(true);
                            }
                            changed |= state.apply(event);
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
        state.index().get(ns, sa).map(|a| a.target().to_owned())
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
        let mut s = WatchState::new(Some("c".into()));
        assert!(!s.synced());
        s.apply(Event::Init);
        s.apply(Event::InitApply(obj("a", "x", "ag1")));
        assert!(!s.synced(), "not synced before the list completes");
        assert!(s.apply(Event::InitDone));
        assert!(s.synced());
        assert_eq!(target(&s, "a", "x").as_deref(), Some("ag1"));
        assert_eq!(s.index().get("a", "x").unwrap().cluster_id.as_deref(), Some("c"));

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
        let mut s = WatchState::new(None);
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
        assert_eq!(s.index().len(), 1);
    }

    #[test]
    fn malformed_objects_are_skipped_not_fatal() {
        let mut s = WatchState::new(None);
        let mut wrong_name = obj("a", "x", "1");
        wrong_name.metadata.name = Some("not-the-rule".into());
        list(&mut s, vec![malformed("bad"), wrong_name, obj("b", "y", "2")]);
        assert_eq!(s.index().len(), 1);
        assert!(!s.apply(Event::Apply(malformed("other"))));
        // An object that turns malformed stops being honoured.
        let mut broken = malformed("b.y");
        broken.metadata.name = Some("b.y".into());
        assert!(s.apply(Event::Apply(broken)));
        assert!(s.index().is_empty());
    }
}
