//! What recording one admission costs in metrics: the hand-written atomics the programs used
//! before (a counter per outcome, a histogram in atomics) against prometheus-client's labelled
//! family and histogram, which they use now: looked up per count, and with the row's counter
//! kept (as the webhook counts admissions). Run with `cargo bench --bench metrics`;
//! BENCHMARKS.md has the figures against an admission's cost.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

const BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum Outcome {
    Mutated,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        let v = match self {
            Outcome::Mutated => "mutated",
        };
        std::fmt::Write::write_str(e, v)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    outcome: Outcome,
}

/// The earlier recorder: one atomic per outcome, per bucket, for the count and the sum.
#[derive(Default)]
struct Atomics {
    admissions: [AtomicU64; 4],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Atomics {
    fn record(&self, outcome: Outcome, secs: f64) {
        self.admissions[outcome as usize].fetch_add(1, Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add((secs * 1e9) as u64, Relaxed);
    }
}

fn record_one_admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let atomics = Atomics::default();
    g.bench_function("hand-written-atomics", |b| {
        b.iter(|| atomics.record(black_box(Outcome::Mutated), black_box(0.0004)))
    });
    let family: Family<Label, Counter> = Family::default();
    let histogram = Histogram::new(BUCKETS);
    g.bench_function("prometheus-client", |b| {
        b.iter(|| {
            let outcome = black_box(Outcome::Mutated);
            family.get_or_create(&Label { outcome }).inc();
            histogram.observe(black_box(0.0004));
        })
    });
    let row = family
        .get_or_create(&Label {
            outcome: Outcome::Mutated,
        })
        .clone();
    g.bench_function("prometheus-client-row-kept", |b| {
        b.iter(|| {
            black_box(&row).inc();
            histogram.observe(black_box(0.0004));
        })
    });
    g.finish();
}

criterion_group!(benches, record_one_admission);
criterion_main!(benches);
