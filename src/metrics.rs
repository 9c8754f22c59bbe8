//! Prometheus metrics shared by the three programs, through `prometheus-client`: each part
//! holds its counters, gauges and histograms (label sets derived, label values the enums'
//! names) and registers them into the page its program renders on `/metrics`, in the
//! Prometheus text format. Recording is an atomic add (a labelled row: a read-locked lookup
//! first) on the hot path.

use std::fmt::Write;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The content type of [`Page::finish`]: the Prometheus text format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A label value written as the enum's `as_str` says, so that renaming a variant never
/// renames a series.
macro_rules! label_value {
    ($($t:ty),+) => {$(
        impl prometheus_client::encoding::EncodeLabelValue for $t {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )+};
}
pub(crate) use label_value;

/// One program's `/metrics` page: what its parts register, once per scrape.
#[derive(Default)]
pub(crate) struct Page(Registry);

impl Page {
    /// Registers `metric` as `name` (as it appears in the page: a counter's with `_total`)
    /// with `help` (one sentence).
    pub(crate) fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        let name = name.strip_suffix("_total").unwrap_or(name);
        self.0
            .register(name, help.strip_suffix('.').unwrap_or(help), metric);
    }

    pub(crate) fn finish(self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.0);
        text
    }
}

/// A latency histogram in seconds, fixed buckets from 25 µs to 1 s.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(BUCKETS))
    }
}

impl Latency {
    pub(crate) fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }

    pub(crate) fn add_to(&self, page: &mut Page, name: &str, help: &str) {
        page.add(name, help, self.0.clone());
    }
}

const BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// A counter by `result`: `ok` or `error`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ByResult(Family<ResultLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    result: Outcome,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

label_value!(Outcome);

impl ByResult {
    pub(crate) fn record(&self, ok: bool) {
        self.row(ok).inc();
    }

    fn row(&self, ok: bool) -> Counter {
        let result = if ok { Outcome::Ok } else { Outcome::Error };
        self.0.get_or_create(&ResultLabel { result }).clone()
    }

    /// Calls with either result.
    pub(crate) fn total(&self) -> u64 {
        self.row(true).get() + self.row(false).get()
    }

    pub(crate) fn add_to(&self, page: &mut Page, name: &str, help: &str) {
        // Both rows are shown from the start, at 0.
        self.row(true);
        self.row(false);
        page.add(name, help, self.0.clone());
    }
}

/// Answers counted by HTTP status: the statuses the programs answer with, and `other`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ByStatus(Family<CodeLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    code: Code,
}

/// A counted status (0 stands for any other).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct Code(u16);

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        match self.0 {
            0 => encoder.write_str("other"),
            c => write!(encoder, "{c}"),
        }
    }
}

/// Counted statuses in label order; 0 stands for any other.
const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 429, 500, 502, 503, 504, 0];

impl ByStatus {
    pub(crate) fn record(&self, status: u16) {
        let code = Code(if STATUSES.contains(&status) { status } else { 0 });
        self.0.get_or_create(&CodeLabel { code }).inc();
    }

    pub(crate) fn add_to(&self, page: &mut Page, name: &str, help: &str) {
        for s in STATUSES {
            let _ = self.0.get_or_create(&CodeLabel { code: Code(s) });
        }
        page.add(name, help, self.0.clone());
    }
}

/// A reloadable input of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Tls,
    Associations,
}

impl Source {
    const ALL: [Source; 2] = [Source::Tls, Source::Associations];

    fn as_str(self) -> &'static str {
        match self {
            Source::Tls => "tls",
            Source::Associations => "associations",
        }
    }
}

label_value!(Source);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    source: Source,
}

/// What a program's reloadable inputs did: the serving certificate and the association
/// source. Every program owns one and renders it on its own `/metrics`.
#[derive(Debug, Default)]
pub struct InputMetrics {
    associations: Gauge,
    reloads: Family<SourceLabel, Counter>,
    reload_failures: Family<SourceLabel, Counter>,
    source_disconnected: Gauge,
    source_errors: Counter,
    /// `notAfter` of the serving certificate, unix seconds; no row while none is served (a
    /// program without TLS must not look like one whose certificate expired in 1970).
    tls_not_after: Family<Unlabelled, Gauge>,
}

/// The one row of a series that may have none.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl InputMetrics {
    pub(crate) fn set_tls_not_after(&self, unix_seconds: i64) {
        self.tls_not_after.get_or_create(&Unlabelled).set(unix_seconds);
    }

    /// `notAfter` of the serving certificate (unix seconds), when one is served.
    pub fn tls_not_after(&self) -> Option<i64> {
        self.tls_not_after.get(&Unlabelled).map(|g| g.get())
    }

    pub(crate) fn set_associations(&self, n: usize) {
        self.associations.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn reload(&self, source: Source, ok: bool) {
        let family = if ok { &self.reloads } else { &self.reload_failures };
        family.get_or_create(&SourceLabel { source }).inc();
    }

    /// Reloads of `source` that succeeded (`ok`) or were refused.
    pub fn reloads(&self, source: Source, ok: bool) -> u64 {
        let family = if ok { &self.reloads } else { &self.reload_failures };
        family.get_or_create(&SourceLabel { source }).get()
    }

    /// Whether the association source is in sync (a watch that lost the API server is not).
    pub(crate) fn source_connected(&self, connected: bool) {
        self.source_disconnected.set(i64::from(!connected));
    }

    pub fn is_source_connected(&self) -> bool {
        self.source_disconnected.get() == 0
    }

    pub(crate) fn source_error(&self) {
        self.source_errors.inc();
    }

    pub fn source_errors(&self) -> u64 {
        self.source_errors.get()
    }

    pub(crate) fn add_to(&self, page: &mut Page) {
        page.add(
            "podidentity_associations",
            "Associations in the live index.",
            self.associations.clone(),
        );
        for source in Source::ALL {
            self.reloads(source, true);
            self.reloads(source, false);
        }
        page.add(
            "podidentity_reloads_total",
            "Successful reloads by source.",
            self.reloads.clone(),
        );
        page.add(
            "podidentity_reload_failures_total",
            "Reloads refused (the last good state kept serving) by source.",
            self.reload_failures.clone(),
        );
        let connected = Gauge::<i64>::default();
        connected.set(i64::from(self.is_source_connected()));
        page.add(
            "podidentity_source_connected",
            "1 while the association source is in sync; 0 while a watch retries (the last index keeps serving).",
            connected,
        );
        page.add(
            "podidentity_source_errors_total",
            "Errors of the association watch.",
            self.source_errors.clone(),
        );
        page.add(
            "podidentity_tls_not_after_seconds",
            "notAfter of the serving certificate, as unix seconds: alert well before it.",
            self.tls_not_after.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_cumulative_buckets() {
        let h = Latency::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let statuses = ByStatus::default();
        statuses.record(403);
        statuses.record(418);
        let results = ByResult::default();
        results.record(false);
        let inputs = InputMetrics::default();
        inputs.reload(Source::Tls, false);
        inputs.set_associations(7);
        let mut page = Page::default();
        h.add_to(&mut page, "lat_seconds", "Latency.");
        statuses.add_to(&mut page, "r_total", "By status.");
        results.add_to(&mut page, "c_total", "A counter.");
        inputs.add_to(&mut page);
        let text = page.finish();
        assert!(
            text.contains("# HELP c_total A counter.\n# TYPE c_total counter\n"),
            "{text}"
        );
        assert!(text.contains("c_total{result=\"error\"} 1\n"), "{text}");
        assert!(text.contains("c_total{result=\"ok\"} 0\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"5e-05\"} 1\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("lat_seconds_count 3\n"), "{text}");
        assert!(text.contains("podidentity_associations 7\n"), "{text}");
        assert!(text.contains("r_total{code=\"403\"} 1\n"), "{text}");
        assert!(text.contains("r_total{code=\"404\"} 0\n"), "{text}");
        assert!(text.contains("r_total{code=\"other\"} 1\n"), "{text}");
        assert!(text.contains("podidentity_reload_failures_total{source=\"tls\"} 1\n"));
        assert!(text.contains("podidentity_source_connected 1\n"));
        // No certificate served: no row, so no alert on a notAfter of 0.
        assert!(!text.contains("podidentity_tls_not_after_seconds "), "{text}");
        inputs.set_tls_not_after(1_900_000_000);
        let mut page = Page::default();
        inputs.add_to(&mut page);
        assert!(
            page.finish()
                .contains("podidentity_tls_not_after_seconds 1900000000\n")
        );
    }
}
