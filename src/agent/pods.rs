//! The pods of the agent's own node, watched (one watch, restricted by
//! `spec.nodeName=<node>`) so that credentials of a pod that is gone are dropped and never
//! refreshed again. Needs `list` and `watch` on `pods`; without them the agent keeps serving
//! and refreshing as before, and says so at start.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::cache::Cache;

/// Which pods to follow: those of `node`, through `client`.
#[derive(Clone)]
pub struct NodePods {
    pub client: kube::Client,
    pub node: String,
}

/// A running pod watch; stops when dropped.
pub(crate) struct PodWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the watch does to the cache, one event at a time.
#[derive(Default)]
struct Follow {
    /// Pod uids of a (re)list in progress, and when it started.
    relist: Option<(HashSet<String>, jiff::Timestamp)>,
}

impl Follow {
    /// Applies one event; returns how many cached credentials it dropped.
    fn apply(&mut self, cache: &Cache, event: Event<Pod>) -> usize {
        match event {
            Event::Init => {
                self.relist = Some((HashSet::new(), jiff::Timestamp::now()));
                0
            }
            Event::InitApply(pod) => {
                if let (Some((live, _)), Some(uid)) = (self.relist.as_mut(), pod.metadata.uid) {
                    live.insert(uid);
                }
                0
            }
            Event::InitDone => match self.relist.take() {
                Some((live, listed)) => cache.keep_pods(&live, listed),
                None => 0,
            },
            Event::Apply(_) => 0,
            Event::Delete(pod) => pod.metadata.uid.map_or(0, |uid| cache.forget_pod(&uid)),
        }
    }
}

/// Starts following the pods of `pods.node`, or returns `None` (after saying so) when the
/// agent may not list them.
pub(crate) async fn follow(pods: NodePods, cache: Arc<Cache>) -> Option<PodWatch> {
    let selector = format!("spec.nodeName={}", pods.node);
    let api: Api<Pod> = Api::all(pods.client);
    match api.list(&ListParams::default().fields(&selector).limit(1)).await {
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            tracing::warn!(
                node = pods.node,
                "may not list pods (grant list and watch on pods): credentials of pods that are gone are refreshed until the cache evicts them"
            );
            return None;
        }
        // Transient: the watch retries with backoff.
        Err(e) => tracing::warn!(node = pods.node, error = %e, "listing this node's pods failed; retrying"),
        Ok(_) => {
            tracing::info!(
                node = pods.node,
                "following this node's pods: credentials of pods that are gone are dropped"
            )
        }
    }
    let config = watcher::Config::default().fields(&selector);
    let task = tokio::spawn(async move {
        let mut follow = Follow::default();
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let dropped = follow.apply(&cache, event);
                    if dropped > 0 {
                        tracing::info!(dropped, "pods gone: their credentials dropped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            }
        }
    });
    Some(PodWatch { task })
}
