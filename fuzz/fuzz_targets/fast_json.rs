//! Differential target: whatever `fast_json` accepts, serde_json accepts and reads the same.
//!
//! Inputs are request bodies (the `review` corpus). Each is read three ways by both readers:
//! as a review whose object is the webhook's pod view, as the pod view alone (so the whole
//! review is skipped as unknown fields), and as "any one JSON value" (validation only).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_webhook::webhook::wire::fast_json;
use pod_identity_webhook::webhook::mutation::pod::{Pod, Str};
use serde::Deserialize;
use serde::de::IgnoredAny;

#[allow(dead_code)] // read through Debug
#[derive(Debug, Deserialize)]
struct Review<'a> {
    #[serde(borrow, rename = "apiVersion", default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

#[allow(dead_code)] // read through Debug
#[derive(Debug, Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    uid: Option<Str<'a>>,
    #[serde(borrow, default)]
    object: Option<Pod<'a>>,
}

fn same<'de, T: Deserialize<'de> + std::fmt::Debug>(text: &'de str) {
    if let Ok(fast) = fast_json::from_str::<T>(text) {
        let slow = serde_json::from_str::<T>(text)
            .unwrap_or_else(|e| panic!("fast_json accepted what serde_json refuses: {e}"));
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    same::<Review>(text);
    same::<Pod>(text);
    same::<IgnoredAny>(text);
});
