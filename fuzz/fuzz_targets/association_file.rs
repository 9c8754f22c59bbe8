//! Text → `association::file::parse`: never panics; what it accepts is valid and indexable.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pod_identity_webhook::testing::file::{FileError, parse};
use pod_identity_webhook::testing::{AssociationSpec, Index};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(Path::new("fuzz.yaml"), text) {
        Ok(list) => {
            for a in &list {
                assert!(!a.uid.is_empty());
                assert!(!a.target().is_empty());
                // Whatever validated once validates again, to the same record.
                // (The record written back in its own shape reads as the input shape.)
                let written = serde_json::to_value(a).expect("a record serializes");
                let spec: AssociationSpec =
                    serde_json::from_value(written).expect("a record reads back as an entry");
                assert_eq!(spec.validate().as_ref(), Ok(a));
            }
            // Indexing either works or names a duplicate; it never panics.
            let _ = Index::build(list);
        }
        Err(FileError::Empty { .. }) => assert!(text.trim().is_empty()),
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
