//! What the missed-injection report knows, kept pure: the live pods that carry no injection
//! but could take one (the candidates), and which of them were reported. The runtime feeds it
//! the pod watch's events and asks, with the current associations and namespace selection,
//! which pods are missed.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::runtime::watcher::Event;

use crate::association::{Association, AssociationSpec, Index};
use crate::webhook::mutation::{self, ASSOCIATION_ANNOTATION, Injection, Pod};
use crate::webhook::selection::Selection;

/// A live pod without the injection that would get it if its service account had an
/// association and its namespace were selected. Kept compact (names shared, strings boxed):
/// the report holds one for every such pod of the cluster, 183 bytes each (100 000 of them,
/// resident memory before and after, release build); twice that during a relist.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) namespace: Arc<str>,
    pub(crate) name: Box<str>,
    pub(crate) uid: Box<str>,
    pub(crate) service_account: Arc<str>,
    reported: bool,
}

/// Candidates are one per pod uid, and looked up by it.
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.uid == other.uid
    }
}

impl Eq for Candidate {}

impl Hash for Candidate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.uid.hash(state);
    }
}

impl Borrow<str> for Candidate {
    fn borrow(&self) -> &str {
        &self.uid
    }
}

/// What the judge finds a pod to be, before it is stored.
#[derive(Debug)]
pub(crate) struct Seen {
    namespace: String,
    name: String,
    uid: String,
    service_account: String,
}

/// A candidate that is missed now: its service account has `association` and its namespace is
/// selected.
#[derive(Debug)]
pub(crate) struct Missed<'t> {
    pub(crate) pod: &'t Candidate,
    pub(crate) association: Arc<Association>,
}

/// The candidates, by pod uid.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pods: HashSet<Candidate>,
    /// The candidates of a (re)list in progress.
    relist: Option<HashSet<Candidate>>,
    /// A complete list has been seen.
    synced: bool,
    /// Namespace and service account names, each held once.
    names: HashSet<Arc<str>>,
}

/// How a pod is judged: by the webhook's own selectors and mutation.
pub(crate) struct Judge<'a> {
    pub(crate) selection: &'a Selection,
    pub(crate) injection: &'a Injection,
}

impl Judge<'_> {
    /// The pod as a candidate, or `None`: finished or being deleted, injected, not selected by
    /// the object selector, or with nothing the webhook would inject into (opted out, a
    /// mirror pod, every container skipped).
    pub(crate) fn candidate(&self, pod: &KubePod) -> Option<Seen> {
        let meta = &pod.metadata;
        let uid = meta.uid.as_ref()?;
        let namespace = meta.namespace.as_ref()?;
        let name = meta.name.as_ref()?;
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        if meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ASSOCIATION_ANNOTATION))
        {
            return None;
        }
        if !self
            .selection
            .object_selected(meta.labels.as_ref().unwrap_or(&BTreeMap::new()))
        {
            return None;
        }
        // The webhook's own mutation, with a stand-in association for the pod's service
        // account: whether any container would take the identity does not depend on which.
        let json = serde_json::to_string(pod).ok()?;
        let view: Pod<'_> = serde_json::from_str(&json).ok()?;
        let service_account = view.service_account().to_owned();
        let probe = AssociationSpec {
            namespace: namespace.clone(),
            service_account: service_account.clone(),
            agency_name: Some("probe".into()),
            ..AssociationSpec::default()
        }
        .validate()
        .ok()?;
        match mutation::mutate(&view, &probe, self.injection, 0) {
            Ok(m) if m.served > 0 => Some(Seen {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
                service_account,
            }),
            _ => None,
        }
    }
}

impl Tracker {
    /// Applies one watch event.
    pub(crate) fn apply(&mut self, judge: &Judge<'_>, event: Event<KubePod>) {
        match event {
            Event::Init => self.relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let Some(seen) = judge.candidate(&pod)
                    && self.relist.is_some()
                {
                    let c = self.store(seen);
                    if let Some(next) = self.relist.as_mut() {
                        next.replace(c);
                    }
                }
            }
            Event::InitDone => {
                if let Some(next) = self.relist.take() {
                    self.pods = next;
                    self.synced = true;
                    // Names no candidate uses any more.
                    self.names.retain(|n| Arc::strong_count(n) > 1);
                }
            }
            Event::Apply(pod) => match judge.candidate(&pod) {
                Some(seen) => {
                    let c = self.store(seen);
                    self.pods.replace(c);
                }
                None => {
                    if let Some(uid) = &pod.metadata.uid {
                        self.pods.remove(uid.as_str());
                    }
                }
            },
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.pods.remove(uid.as_str());
                }
            }
        }
    }

    /// `seen` as stored: its names shared, and reported if it already was.
    fn store(&mut self, seen: Seen) -> Candidate {
        let reported = self.pods.get(seen.uid.as_str()).is_some_and(|old| old.reported);
        Candidate {
            namespace: self.intern(&seen.namespace),
            service_account: self.intern(&seen.service_account),
            name: seen.name.into_boxed_str(),
            uid: seen.uid.into_boxed_str(),
            reported,
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(name);
                self.names.insert(n.clone());
                n
            }
        }
    }

    /// A complete list has been seen, so counts are whole.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    /// The namespaces whose selection matters now: those of candidates whose service account
    /// has an association.
    pub(crate) fn namespaces(&self, index: &Index) -> BTreeSet<String> {
        self.pods
            .iter()
            .filter(|c| index.get(&c.namespace, &c.service_account).is_some())
            .map(|c| c.namespace.to_string())
            .collect()
    }

    /// The candidates missed now; `selected(namespace)` says whether the webhook configuration
    /// selects a namespace (`None`: unknown yet, left out).
    pub(crate) fn missed(&self, index: &Index, selected: impl Fn(&str) -> Option<bool>) -> Vec<Missed<'_>> {
        let mut out: Vec<Missed<'_>> = self
            .pods
            .iter()
            .filter_map(|c| {
                let association = index.get(&c.namespace, &c.service_account)?;
                (selected(&c.namespace) == Some(true)).then(|| Missed {
                    pod: c,
                    association: association.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.pod.namespace, &a.pod.name).cmp(&(&b.pod.namespace, &b.pod.name)));
        out
    }

    /// The pod `uid` has its Event: it is not reported again while it lives.
    pub(crate) fn mark_reported(&mut self, uid: &str) {
        if let Some(mut c) = self.pods.take(uid) {
            c.reported = true;
            self.pods.insert(c);
        }
    }
}

impl Candidate {
    pub(crate) fn reported(&self) -> bool {
        self.reported
    }
}

/// Missed pods counted by namespace.
pub(crate) fn by_namespace(missed: &[Missed<'_>]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for m in missed {
        *counts.entry(m.pod.namespace.to_string()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Provider;
    use serde_json::json;

    fn injection() -> Injection {
        let profile = Provider::Cce.profile();
        Injection::new(
            profile,
            mutation::Settings::new(profile, None, mutation::DEFAULT_TOKEN_EXPIRATION),
        )
    }

    fn pod(ns: &str, name: &str, sa: &str, extra: serde_json::Value) -> KubePod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("{name}-uid")},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running"},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn index(pairs: &[(&str, &str)]) -> Index {
        Index::build(pairs.iter().map(|(ns, sa)| {
            AssociationSpec {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
                agency_name: Some(format!("{sa}-agency")),
                ..AssociationSpec::default()
            }
            .validate()
            .unwrap()
        }))
        .unwrap()
    }

    fn missed_names(t: &Tracker, idx: &Index) -> Vec<String> {
        t.missed(idx, |ns| Some(ns != "off"))
            .iter()
            .map(|m| format!("{}/{}", m.pod.namespace, m.pod.name))
            .collect()
    }

    #[test]
    fn a_pod_without_the_injection_is_missed_once_its_service_account_has_an_association() {
        let selection = Selection::shipped().unwrap();
        let inj = injection();
        let judge = Judge {
            selection: &selection,
            injection: &inj,
        };
        let mut t = Tracker::default();
        t.apply(&judge, Event::Init);
        t.apply(&judge, Event::InitApply(pod("a", "early", "app", json!({}))));
        t.apply(
            &judge,
            Event::InitApply(pod(
                "a",
                "injected",
                "app",
                json!({"metadata": {"annotations": {ASSOCIATION_ANNOTATION: "x"}}}),
            )),
        );
        t.apply(
            &judge,
            Event::InitApply(pod(
                "a",
                "opted-out",
                "app",
                json!({"metadata": {"labels": {"podidentity.io/inject": "false"}}}),
            )),
        );
        t.apply(
            &judge,
            Event::InitApply(pod("a", "done", "app", json!({"status": {"phase": "Succeeded"}}))),
        );
        t.apply(&judge, Event::InitApply(pod("off", "other-ns", "app", json!({}))));
        t.apply(
            &judge,
            Event::InitApply(pod("a", "no-assoc", "nobody", json!({}))),
        );
        assert!(!t.synced());
        t.apply(&judge, Event::InitDone);
        assert!(t.synced());

        assert!(missed_names(&t, &index(&[])).is_empty());
        let idx = index(&[("a", "app"), ("off", "app")]);
        assert_eq!(missed_names(&t, &idx), ["a/early"]);
        assert_eq!(t.namespaces(&idx).into_iter().collect::<Vec<_>>(), ["a", "off"]);
        let missed = t.missed(&idx, |_| Some(true));
        assert_eq!(
            by_namespace(&missed),
            BTreeMap::from([("a".to_owned(), 1), ("off".to_owned(), 1)])
        );
        // Unknown namespaces are left out, not guessed.
        assert!(t.missed(&idx, |_| None).is_empty());

        // Reported once; the mark survives an update and a relist, not the pod's deletion.
        t.mark_reported("early-uid");
        t.apply(
            &judge,
            Event::Apply(pod(
                "a",
                "early",
                "app",
                json!({"metadata": {"labels": {"x": "y"}}}),
            )),
        );
        t.apply(&judge, Event::Init);
        t.apply(&judge, Event::InitApply(pod("a", "early", "app", json!({}))));
        t.apply(&judge, Event::InitDone);
        assert!(t.missed(&idx, |_| Some(true))[0].pod.reported());
        t.apply(&judge, Event::Delete(pod("a", "early", "app", json!({}))));
        assert!(missed_names(&t, &idx).is_empty());

        // A pod that becomes injected, or finishes, stops being a candidate.
        t.apply(&judge, Event::Apply(pod("a", "late", "app", json!({}))));
        assert_eq!(missed_names(&t, &idx), ["a/late"]);
        t.apply(
            &judge,
            Event::Apply(pod("a", "late", "app", json!({"status": {"phase": "Failed"}}))),
        );
        assert!(missed_names(&t, &idx).is_empty());
    }
}
