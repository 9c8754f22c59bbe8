//! The webhook's decision, read this first: find the pod's service account in the index; if
//! it has an association, compute the patch that gives the pod that identity.
//!
//! Everything around it is plumbing: [`wire`](super::wire) reads the AdmissionReview and
//! writes the answer, [`mutation`](super::mutation) computes the patch, and the index is filled
//! by the association source the [composition root](super) started.

use std::sync::Arc;

use super::mutation::{self, Injection, Mutation, Pod, Skip};
use crate::association::{Association, Index};

/// What the webhook decides for one pod.
#[derive(Debug)]
pub enum Decision<'i> {
    /// The pod's service account has an association; `mutation.patch` may be empty when the
    /// pod already carries everything, or when what is in the way is the user's (warnings).
    Inject {
        association: Arc<Association>,
        mutation: Mutation<'i>,
    },
    /// No association for the pod's service account.
    NoAssociation,
    /// The pod asked not to be injected.
    Skipped(Skip),
}

/// Looks up the pod's service account in `index` and computes its patch; `request_uid` (the
/// admission request's, or empty) seeds the token lifetime's spread for a pod with no name yet.
pub fn decide<'i>(
    pod: &Pod<'_>,
    namespace: &str,
    index: &Index,
    inj: &'i Injection,
    request_uid: &str,
) -> Decision<'i> {
    let Some(association) = index.get(namespace, pod.service_account()) else {
        return Decision::NoAssociation;
    };
    let seed = mutation::jitter_seed(pod, namespace, request_uid);
    match mutation::mutate(pod, association, inj, seed) {
        Ok(mutation) => Decision::Inject {
            association: association.clone(),
            mutation,
        },
        Err(skip) => Decision::Skipped(skip),
    }
}
