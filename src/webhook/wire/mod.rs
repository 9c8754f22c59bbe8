//! The admission wire: AdmissionReview in → [decision](super::decide) → AdmissionReview out.
//! Pure: no I/O, no clock.
//!
//! This is the hot path, and why it is hand-tuned: the request is decoded into a borrowed view
//! holding only what the decision needs (the pod is read in the same pass, partially) by the
//! strict reader in [`fast_json`] when it can, serde_json when it cannot; the response is
//! written by hand. The tests beside them check both against serde_json.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod fast_json;

use super::decide::{Decision, decide};
use super::metrics::Outcome;
use super::mutation::patch::write_str;
use super::mutation::pod::{Pod, Str};
use super::mutation::{Injection, Patch};
use crate::association::Reader;

/// The only AdmissionReview version the webhook speaks (and registers for).
pub(crate) const API_VERSION: &str = "admission.k8s.io/v1";

/// `O` is how `request.object` is read: as a [`Pod`] in one pass (the common case), or kept as
/// raw JSON so that a body the one-pass read refuses gets the answer it always got.
#[derive(Debug, Deserialize)]
struct ReviewIn<'a, O> {
    #[serde(borrow, rename = "apiVersion", default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default = "none")]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize, Default)]
struct Gvk<'a> {
    #[serde(borrow, default)]
    group: Str<'a>,
    #[serde(borrow, default)]
    version: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
}

/// The `response` of the AdmissionReview the webhook answers with.
struct ResponseOut<'u, 'i> {
    uid: &'u str,
    allowed: bool,
    /// Sent base64-encoded with `patchType: JSONPatch` when not empty.
    patch: Patch<'i>,
    status: Option<StatusOut>,
    warnings: Vec<String>,
}

struct StatusOut {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ResponseOut<'_, '_> {
    /// The whole AdmissionReview as JSON. Written by hand: the patch goes from its prepared
    /// text through base64 straight into the body, with nothing to escape on the way.
    fn encode(&self) -> Vec<u8> {
        let patch = if self.patch.is_empty() {
            Vec::new()
        } else {
            self.patch.to_json()
        };
        let base64_len = patch.len().div_ceil(3) * 4;
        let mut out = Vec::with_capacity(160 + self.uid.len() + base64_len);
        out.extend_from_slice(br#"{"apiVersion":""#);
        out.extend_from_slice(API_VERSION.as_bytes());
        out.extend_from_slice(br#"","kind":"AdmissionReview","response":{"uid":"#);
        write_str(&mut out, self.uid);
        out.extend_from_slice(if self.allowed {
            br#","allowed":true"#
        } else {
            br#","allowed":false"#
        });
        if !patch.is_empty() {
            out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
            let start = out.len();
            out.resize(start + base64_len, 0);
            // The buffer was sized with the exact encoded length; padding is included.
            let written = BASE64.encode_slice(&patch, &mut out[start..]).unwrap_or_default();
            out.truncate(start + written);
            out.push(b'"');
        }
        if let Some(status) = &self.status {
            out.extend_from_slice(br#","status":{"status":"Failure","code":"#);
            out.extend_from_slice(itoa::Buffer::new().format(status.code).as_bytes());
            out.extend_from_slice(br#","reason":"#);
            write_str(&mut out, status.reason);
            out.extend_from_slice(br#","message":"#);
            write_str(&mut out, &status.message);
            out.push(b'}');
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(br#","warnings":["#);
            for (i, w) in self.warnings.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(&mut out, w);
            }
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
        out
    }
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

/// The admission handler's state: the live association index and what to inject.
pub struct Admission {
    pub associations: Reader,
    pub injection: Injection,
}

impl Admission {
    /// Answers one request body.
    pub fn review(&self, body: &[u8]) -> Answer {
        // One pass over the body, reading the pod with the rest: the body is most of the cost
        // of an admission. The fast reader takes what the API server sends; what it declines
        // (an escape in a string the view keeps, anything unusual) is read by serde_json in
        // one pass; and any body that refuses (not UTF-8, not JSON, an object that is not a
        // Pod) goes through the two-pass read below, which words every error and denial. Each
        // step accepts only what the next would accept, and reads it identically (tests below).
        if let Ok(text) = std::str::from_utf8(body) {
            if let Ok(review) = fast_json::from_str::<ReviewIn<Pod>>(text) {
                return self.answer(review, Ok);
            }
            if let Ok(review) = serde_json::from_str::<ReviewIn<Pod>>(text) {
                return self.answer(review, Ok);
            }
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
        Answer {
            status: 200,
            body: response.encode(),
            outcome,
        }
    }

    fn respond<'u, 'a, O>(
        &self,
        uid: &'u str,
        req: &RequestIn<'a, O>,
        object: Option<O>,
        read: impl FnOnce(O) -> Result<Pod<'a>, serde_json::Error>,
    ) -> (Outcome, ResponseOut<'u, '_>) {
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
        let index = self.associations.load();
        let decision = decide(&pod, namespace, &index, &self.injection, uid);
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
            Decision::Inject { mutation, .. } => {
                if mutation.unserved > 0 {
                    // The pod starts without credentials in some container: the operator
                    // should be able to see why, not only the user who created it.
                    tracing::info!(uid, namespace, name, warnings = ?mutation.warnings, "pod identity not injected everywhere");
                }
                let outcome = match mutation.patch.is_empty() {
                    true => Outcome::Unchanged,
                    false => Outcome::Mutated,
                };
                let r = ResponseOut {
                    patch: mutation.patch,
                    warnings: mutation.warnings,
                    ..allowed(uid)
                };
                (outcome, r)
            }
            Decision::NoAssociation => allow(Outcome::Unchanged),
            Decision::Skipped(skip) => {
                let r = ResponseOut {
                    warnings: skip
                        .warns()
                        .then(|| skip.reason().to_owned())
                        .into_iter()
                        .collect(),
                    ..allowed(uid)
                };
                (Outcome::Skipped, r)
            }
        }
    }
}

fn allowed<'u>(uid: &'u str) -> ResponseOut<'u, 'static> {
    ResponseOut {
        uid,
        allowed: true,
        patch: Patch::default(),
        status: None,
        warnings: Vec::new(),
    }
}

fn denied<'u>(uid: &'u str, code: u16, reason: &'static str, message: String) -> ResponseOut<'u, 'static> {
    ResponseOut {
        status: Some(StatusOut {
            code,
            reason,
            message,
        }),
        allowed: false,
        ..allowed(uid)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::webhook::mutation::Add;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("tests/fixtures/admission/{name}")).unwrap()
    }

    fn fixtures() -> Vec<(String, String)> {
        let mut names: Vec<_> = std::fs::read_dir("tests/fixtures/admission")
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names.into_iter().map(|n| (fixture(&n), n)).collect()
    }

    fn compact(text: &str) -> String {
        serde_json::from_str::<Value>(text).unwrap().to_string()
    }

    /// What the fast reader made of `text`, checked against serde_json's one-pass read: when
    /// the fast reader accepts, serde_json accepts and reads the same review.
    fn fast_read(text: &str) -> Option<String> {
        let fast = fast_json::from_str::<ReviewIn<Pod>>(text).ok()?;
        let slow = serde_json::from_str::<ReviewIn<Pod>>(text)
            .unwrap_or_else(|e| panic!("fast reader accepted what serde_json refuses ({e}): {text}"));
        let fast = format!("{fast:?}");
        assert_eq!(fast, format!("{slow:?}"), "{text}");
        Some(fast)
    }

    #[test]
    fn the_fast_reader_reads_every_fixture_as_serde_json_does() {
        for (text, name) in fixtures() {
            assert!(fast_read(&text).is_some(), "{name} as stored");
            assert!(fast_read(&compact(&text)).is_some(), "{name} compact");
        }
    }

    #[test]
    fn escaped_env_values_and_projected_tokens_stay_on_the_fast_reader() {
        // The API server writes `&` as `\u0026`: a URL in an env var is common, and its value
        // is not read, so it must not send the review to serde_json. A projected token's
        // strings are plain and read.
        let text = compact(&fixture(
            "02-pod-init-env-fieldref-volumes-sa-app-apply-dryrun.json",
        ));
        let env = r#""env":["#;
        assert!(text.contains(env));
        let text = text.replacen(
            env,
            r#""env":[{"name":"DB_URL","value":"postgres://db/app?a=1\u0026b=\"2\""},"#,
            1,
        );
        let volumes = r#""volumes":["#;
        let text = text.replacen(
            volumes,
            r#""volumes":[{"name":"t","projected":{"sources":[{"serviceAccountToken":{"audience":"service.cce.pods","expirationSeconds":600,"path":"t"}}]}},"#,
            1,
        );
        let read = fast_read(&text).expect("the fast reader takes it");
        assert!(
            read.contains("DB_URL") && read.contains("service.cce.pods"),
            "{read}"
        );
        // A token-file value is kept; with an escape it goes to serde_json, which reads it.
        let kept = text.replacen("\"DB_URL\"", "\"HC_CONTAINER_AUTHORIZATION_TOKEN_FILE\"", 1);
        assert!(fast_read(&kept).is_none());
        assert!(serde_json::from_str::<ReviewIn<Pod>>(&kept).is_ok());
    }

    /// A JSON value in text, with whitespace, escapes and numbers of every shape.
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n"]);
        let string = prop::collection::vec(
            prop::sample::select(vec![
                "a",
                "Z",
                " ",
                "é",
                "😀",
                "\\\"",
                "\\\\",
                "\\/",
                "\\n",
                "\\t",
                "\\b",
                "\\u00e9",
                "\\uD83D\\uDE00",
                "\\ud800",
                "k:{\\\"name\\\":\\\"app\\\"}",
            ]),
            0..8,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,6})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            string.clone(),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            let member = (string.clone(), ws.clone(), inner.clone())
                .prop_map(|(k, w, v)| format!("{w}{k}{w}:{w}{v}{w}"));
            prop_oneof![
                prop::collection::vec(inner, 0..6).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(member, 0..6).prop_map(|m| format!("{{{}}}", m.join(","))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        /// Any valid value where the views skip is skipped, and the review reads the same.
        #[test]
        fn skipped_values_of_any_shape_are_read_past_as_serde_json_does(
            value in json_text(),
            at in prop::sample::select(vec![
                "\"request\":{", "\"object\":{", "\"metadata\":{", "\"annotations\":{",
                "\"spec\":{", "\"containers\":[{", "\"volumes\":[{",
            ]),
        ) {
            let text = compact(&fixture("02-pod-init-env-fieldref-volumes-sa-app-apply-dryrun.json"));
            prop_assert!(text.contains(at));
            let text = text.replacen(at, &format!("{at}\"zz-unknown\":{value},"), 1);
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(), "{}", text);
            prop_assert!(fast_read(&text).is_some(), "fast reader refused {}", text);
        }

        /// Damaged bodies: whatever the fast reader still accepts, serde_json reads the same.
        #[test]
        fn damaged_bodies_are_refused_or_read_as_serde_json_reads_them(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                b"\"\\{}[],: -.0123456789eEtrufalsn\n\x01\x7fu/".to_vec())), 1..4),
        ) {
            let mut bytes = compact(&fixture("01-pod-single-container-sa-app-apply-dryrun.json")).into_bytes();
            for (at, kind, b) in edits {
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = b,
                    1 => bytes.insert(i, b),
                    _ => { bytes.remove(i); }
                }
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                fast_read(text);
            }
        }
    }

    fn decode(r: &ResponseOut) -> Value {
        serde_json::from_slice(&r.encode()).expect("the response is JSON")
    }

    #[test]
    fn an_allowed_answer_carries_only_uid_and_allowed() {
        assert_eq!(
            decode(&allowed("u-1")),
            json!({"apiVersion": API_VERSION, "kind": "AdmissionReview",
                "response": {"uid": "u-1", "allowed": true}})
        );
    }

    #[test]
    fn strings_from_the_request_and_the_messages_are_escaped() {
        let uid = "weird \"uid\" \\ \n \u{1} ü";
        let message = "pod \"x\" can't\tbe read: \u{7f}".to_owned();
        let r = decode(&denied(uid, 400, "BadRequest", message.clone()));
        assert_eq!(
            r["response"],
            json!({"uid": uid, "allowed": false, "status":
                {"status": "Failure", "code": 400, "reason": "BadRequest", "message": message}})
        );
    }

    #[test]
    fn a_patch_is_sent_base64_encoded_with_its_type_and_warnings() {
        for n in 0..4 {
            // Patch lengths that leave 0, 1 and 2 bytes for the last base64 group.
            let value = format!("\"{}\"", "x".repeat(n));
            let r = ResponseOut {
                patch: Patch(vec![Add {
                    path: "/metadata/annotations/a~1b".into(),
                    value: value.into(),
                }]),
                warnings: vec!["one \"quoted\"".into(), "two".into()],
                ..allowed("u")
            };
            let out = decode(&r);
            let resp = &out["response"];
            assert_eq!(resp["patchType"], "JSONPatch");
            assert_eq!(resp["warnings"], json!(["one \"quoted\"", "two"]));
            let patch = BASE64.decode(resp["patch"].as_str().unwrap()).unwrap();
            assert_eq!(patch, r.patch.to_json());
            assert_eq!(
                serde_json::from_slice::<Value>(&patch).unwrap(),
                json!([{"op": "add", "path": "/metadata/annotations/a~1b", "value": "x".repeat(n)}])
            );
        }
    }
}
