//! What an entry was issued under, and forgetting entries whose association or pod is gone.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Cache, retain};
use crate::agent::token;
use crate::association::Index;

/// Whose token an entry holds, from its claims (unverified: the upstream verifies it; this
/// only decides what to forget).
#[derive(Debug, Clone, Default)]
pub(super) struct Owner {
    /// (namespace, service account).
    subject: Option<(String, String)>,
    pub(super) pod_uid: Option<String>,
}

impl Owner {
    pub(super) fn of(token: &str) -> Self {
        // Expiry is the upstream's concern, not this bookkeeping's.
        match token::claims(token, i64::MIN) {
            Ok(c) => Owner {
                subject: Some((c.namespace, c.service_account)),
                pod_uid: c.pod_uid,
            },
            Err(_) => Owner::default(),
        }
    }
}

/// The association an answer was given under: its uid and target. `None` when the service
/// account had none in the agent's index.
pub(super) type Grant = Option<(String, String)>;

fn grant(index: &Index, owner: &Owner) -> Grant {
    let (ns, sa) = owner.subject.as_ref()?;
    index.get(ns, sa).map(|a| (a.uid.clone(), a.target().to_owned()))
}

impl Cache {
    /// Whether an answer given under `grant` still stands: always when the agent does not
    /// follow associations.
    pub(super) fn stands(&self, owner: &Owner, given: &Grant) -> bool {
        match &self.associations {
            Some(r) => grant(&r.load(), owner) == *given,
            None => true,
        }
    }

    /// What an answer for `owner` is given under now.
    pub(super) fn grant_now(&self, owner: &Owner) -> Grant {
        self.associations.as_ref().and_then(|r| grant(&r.load(), owner))
    }

    /// When the association index changed since the last look, drops every entry and
    /// remembered refusal given under an association that is gone or names another
    /// uid/target, so they are neither served nor refreshed. Returns how many it dropped.
    pub(crate) fn follow_associations(&self) -> usize {
        let Some(reader) = &self.associations else {
            return 0;
        };
        let index = Arc::clone(&reader.load());
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.as_ref().is_some_and(|s| Arc::ptr_eq(s, &index)) {
                return 0;
            }
            *swept = Some(index.clone());
        }
        let stale = |owner: &Owner, given: &Grant| grant(&index, owner) != *given;
        let dropped = retain(&self.entries, |e| !stale(&e.owner, &e.grant));
        self.refused.retain(|r| !stale(&r.owner, &r.grant));
        if dropped > 0 {
            tracing::info!(
                dropped,
                "associations changed: credentials issued under them dropped"
            );
        }
        dropped
    }

    /// Drops the entries of the pod with `uid` (it is gone); returns how many.
    pub(crate) fn forget_pod(&self, uid: &str) -> usize {
        retain(&self.entries, |e| e.owner.pod_uid.as_deref() != Some(uid))
    }

    /// After a full list of the node's pods (`live`, listed from `listed`): drops the entries
    /// fetched before that list for pods not in it; returns how many.
    pub(crate) fn keep_pods(&self, live: &HashSet<String>, listed: jiff::Timestamp) -> usize {
        retain(&self.entries, |e| match &e.owner.pod_uid {
            Some(uid) => live.contains(uid) || e.fetched >= listed,
            None => true,
        })
    }
}
