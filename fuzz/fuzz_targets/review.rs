//! Bytes → `Admission::review`, with the fixture associations loaded.
//!
//! Beyond "does not panic": a 200 answer is a well-formed AdmissionReview, and any patch it
//! returns applies to the request's object (the same check the API server makes).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pod_identity_webhook::webhook::wire::Admission;
use pod_identity_webhook::testing::file::parse;
use pod_identity_webhook::testing::{Index, Reader};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::webhook::mutation::{DEFAULT_TOKEN_EXPIRATION, Injection, Settings};
use serde_json::Value;

static ADMISSION: LazyLock<Admission> = LazyLock::new(|| {
    let text = include_str!("../../tests/fixtures/associations.yaml");
    let list = parse(Path::new("associations.yaml"), text).expect("fixture associations parse");
    let index = Index::build(list).expect("fixture associations are unique");
    let profile = Provider::Cce.profile();
    Admission {
        associations: Reader::fixed(index),
        injection: Injection::new(profile, Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION)),
    }
});

fuzz_target!(|data: &[u8]| {
    let answer = ADMISSION.review(data);
    match answer.status {
        200 => {}
        400 => {
            assert!(!answer.body.is_empty(), "a 400 must say why");
            return;
        }
        other => panic!("unexpected status {other}"),
    }
    let out: Value = serde_json::from_slice(&answer.body).expect("a 200 body is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let response = &out["response"];
    assert!(response["uid"].as_str().is_some_and(|u| !u.is_empty()), "{out}");
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    if !allowed {
        assert!(
            response.get("patch").is_none(),
            "a denial carries no patch: {out}"
        );
        assert!(
            response["status"]["message"].is_string(),
            "a denial says why: {out}"
        );
    }
    let Some(patch) = response.get("patch") else {
        return;
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    assert!(!patch.0.is_empty(), "an empty patch is not sent");
    // The request as a generic document: when it does not parse as one (serde_json::Value is
    // stricter than the skipping parser, e.g. lone surrogates in ignored strings), there is
    // no object to apply the patch to.
    let Ok(review) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut object = review["request"]["object"].clone();
    for op in &patch.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "only add operations: {op:?}"
        );
    }
    if let Err(e) = json_patch::patch(&mut object, &patch.0) {
        panic!(
            "patch does not apply to the request's object: {e}\npatch: {}\nobject: {}",
            String::from_utf8_lossy(&bytes),
            review["request"]["object"]
        );
    }
});
