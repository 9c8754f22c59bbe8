//! AdmissionReview in → decision → AdmissionReview out. Pure: no I/O, no clock.
//!
//! The request is decoded into a borrowed view holding only what the decision needs (the pod
//! is read in the same pass, partially); the response is written directly.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::association::{Association, Index, Store};
use crate::metrics::Outcome;
use crate::mutation::pod::{Pod, Str};
use crate::mutation::{self, Injection, Mutation, Skip};

/// The only AdmissionReview version the webhook speaks (and registers for).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// `O` is how `request.object` is read: as a [`Pod`] in one pass (the common case), or kept as
/// raw JSON so that a body the one-pass read refuses gets the answer it always got.
#[derive(Deserialize)]
struct ReviewIn<'a, O> {
    #[serde(borrow, rename = "apiVersion", default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default = "none")]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
struct RequestIn<'a, O> {
    #[serde(borrow, default)]
    uid: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Gvk<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    operation: Option<Str<'a>>,
    #[serde(default = "none")]
    object: Option<O>,
}

// Plain `default` would make serde require `O: Default`, which `&RawValue` is not.
fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize, Default)]
struct Gvk<'a> {
    #[serde(borrow, default)]
    group: Str<'a>,
    #[serde(borrow, default)]
    version: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
}

#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct StatusOut {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

/// The HTTP answer to one `/mutate` call.
#[derive(Debug)]
pub struct Answer {
    /// 200 for every review that has a uid to answer; 400 when there is none to answer.
    pub status: u16,
    /// An AdmissionReview (status 200) or a plain-text explanation (status 400).
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

impl Answer {
    fn bad_request(message: String) -> Self {
        Answer {
            status: 400,
            body: message.into_bytes(),
            outcome: Outcome::Invalid,
        }
    }
}

/// What the webhook decides for one pod.
#[derive(Debug)]
pub enum Decision {
    /// The pod's service account has an association; `mutation.patch` may be empty when the
    /// pod already carries everything.
    Inject {
        association: Arc<Association>,
        mutation: Mutation,
    },
    /// No association for the pod's service account.
    NoAssociation,
    /// The pod asked not to be injected.
    Skipped(Skip),
}

/// Looks up the pod's service account in `index` and computes its patch.
pub fn decide(pod: &Pod<'_>, namespace: &str, index: &Index, inj: &Injection) -> Decision {
    let Some(association) = index.get(namespace, pod.service_account()) else {
        return Decision::NoAssociation;
    };
    match mutation::mutate(pod, association, inj) {
        Ok(mutation) => Decision::Inject {
            association: association.clone(),
            mutation,
        },
        Err(skip) => Decision::Skipped(skip),
    }
}

/// The admission handler's state: the live association index and what to inject.
pub struct Admission {
    pub store: Arc<Store>,
    pub injection: Injection,
}

impl Admission {
    /// Answers one request body.
    pub fn review(&self, body: &[u8]) -> Answer {
        // One pass over the body, reading the pod with the rest: the body is most of the cost
        // of an admission, and reading the object as raw JSON first and then again as a Pod
        // walked it twice. Any body this pass refuses (not UTF-8, not JSON, an object that is
        // not a Pod, for any kind) goes through the two-pass read below, which words every
        // error and denial. Whatever this pass accepts, the two-pass read accepts identically:
        // same parser, same fields; the UTF-8 check stands in for the raw object's one.
        if let Ok(text) = std::str::from_utf8(body)
            && let Ok(review) = serde_json::from_str::<ReviewIn<Pod>>(text)
        {
            return self.answer(review, Ok);
        }
        let review: ReviewIn<&RawValue> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) if body.is_empty() => {
                return Answer::bad_request(format!(
                    "empty request body: expected an {API_VERSION} AdmissionReview ({e})"
                ));
            }
            Err(e) => {
                return Answer::bad_request(format!(
                    "request body is not an {API_VERSION} AdmissionReview: {e}"
                ));
            }
        };
        self.answer(review, |raw| Pod::from_slice(raw.get().as_bytes()))
    }

    /// Checks the review and answers it; `read` turns its object into the pod.
    fn answer<'a, O>(
        &self,
        review: ReviewIn<'a, O>,
        read: impl FnOnce(O) -> Result<Pod<'a>, serde_json::Error>,
    ) -> Answer {
        let api_version = review.api_version.as_ref().map(Str::as_str).unwrap_or("");
        if api_version != API_VERSION {
            return Answer::bad_request(format!(
                "unsupported apiVersion {api_version:?}: this webhook speaks {API_VERSION} only (set admissionReviewVersions: [\"v1\"])"
            ));
        }
        let kind = review.kind.as_ref().map(Str::as_str).unwrap_or("");
        if kind != "AdmissionReview" {
            return Answer::bad_request(format!("unexpected kind {kind:?}: expected AdmissionReview"));
        }
        let Some(mut req) = review.request else {
            return Answer::bad_request("AdmissionReview has no request to answer".into());
        };
        let uid = req.uid.as_ref().map(Str::as_str).unwrap_or("");
        if uid.is_empty() {
            return Answer::bad_request(
                "AdmissionReview request has no uid; a response cannot be matched to it".into(),
            );
        }
        let object = req.object.take();
        let (outcome, response) = self.respond(uid, &req, object, read);
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response,
        };
        match serde_json::to_vec(&out) {
            Ok(body) => Answer {
                status: 200,
                body,
                outcome,
            },
            // Serializing plain strings and bools cannot fail; answer rather than panic anyway.
            Err(e) => Answer::bad_request(format!("cannot encode the response: {e}")),
        }
    }

    fn respond<'u, 'a, O>(
        &self,
        uid: &'u str,
        req: &RequestIn<'a, O>,
        object: Option<O>,
        read: impl FnOnce(O) -> Result<Pod<'a>, serde_json::Error>,
    ) -> (Outcome, ResponseOut<'u>) {
        let allow = |outcome| (outcome, allowed(uid));
        let gvk = req.kind.as_ref();
        let is_pod = gvk.is_some_and(|k| {
            k.group.as_str().is_empty() && k.version.as_str() == "v1" && k.kind.as_str() == "Pod"
        });
        let operation = req.operation.as_ref().map(Str::as_str).unwrap_or("");
        if !is_pod || operation != "CREATE" {
            return allow(Outcome::Skipped);
        }
        let deny = |message: String| (Outcome::Invalid, denied(uid, 400, "BadRequest", message));
        let Some(object) = object else {
            return deny("pod CREATE review carries no object".into());
        };
        let pod = match read(object) {
            Ok(pod) => pod,
            Err(e) => {
                return deny(format!(
                    "pod identity webhook cannot read the object as a Pod ({e}); refusing rather than starting the pod without its identity"
                ));
            }
        };
        let Some(namespace) = req
            .namespace
            .as_ref()
            .map(Str::as_str)
            .filter(|n| !n.is_empty())
            .or(pod.namespace())
        else {
            return deny("pod CREATE review has no namespace".into());
        };
        let index = self.store.load();
        let decision = decide(&pod, namespace, &index, &self.injection);
        let name = req.name.as_ref().map(Str::as_str).unwrap_or("");
        tracing::debug!(
            uid,
            namespace,
            name,
            service_account = pod.service_account(),
            ?decision,
            "admission"
        );
        match decision {
            Decision::Inject { mutation, .. } if !mutation.patch.0.is_empty() => {
                let json = serde_json::to_vec(&mutation.patch).unwrap_or_default();
                let mut r = allowed(uid);
                r.patch_type = Some("JSONPatch");
                r.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
                r.warnings = mutation.warnings;
                (Outcome::Mutated, r)
            }
            Decision::Inject { .. } | Decision::NoAssociation => allow(Outcome::Unchanged),
            Decision::Skipped(_) => allow(Outcome::Skipped),
        }
    }
}

fn allowed(uid: &str) -> ResponseOut<'_> {
    ResponseOut {
        uid,
        allowed: true,
        patch_type: None,
        patch: None,
        status: None,
        warnings: Vec::new(),
    }
}

fn denied<'a>(uid: &'a str, code: u16, reason: &'static str, message: String) -> ResponseOut<'a> {
    ResponseOut {
        status: Some(StatusOut {
            status: "Failure",
            code,
            reason,
            message,
        }),
        allowed: false,
        ..allowed(uid)
    }
}
