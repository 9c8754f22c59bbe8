//! Criterion benchmarks of the admission path (no I/O): run with `cargo bench`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pod_identity_webhook::admission::Admission;
use pod_identity_webhook::association::{Index, Store, file};
use pod_identity_webhook::mutation::{DEFAULT_TOKEN_EXPIRATION, Injection, Provider, Settings};

fn admission() -> Admission {
    let text = std::fs::read_to_string("tests/fixtures/associations.yaml").unwrap();
    let list = file::parse("associations.yaml".as_ref(), &text).unwrap();
    let profile = Provider::Cce.profile();
    Admission {
        store: Arc::new(Store::new(Index::build(list).unwrap())),
        injection: Injection::new(profile, Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION)),
    }
}

fn review(c: &mut Criterion) {
    let a = admission();
    let body =
        std::fs::read("tests/fixtures/admission/01-pod-single-container-sa-app-apply-dryrun.json").unwrap();
    c.bench_function("review/01-single-container", |b| {
        b.iter(|| a.review(black_box(&body)))
    });
}

criterion_group!(benches, review);
criterion_main!(benches);
