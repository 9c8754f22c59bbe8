//! Prometheus metrics shared by the three programs: the text exposition format, a histogram
//! in atomics, and the metrics of the inputs every program reloads (serving certificate,
//! association source). Recording costs a few atomic adds on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The content type of [`Text`].
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A page in the Prometheus text exposition format (version 0.0.4).
#[derive(Default)]
pub(crate) struct Text(String);

impl Text {
    /// A counter family: one line per `(labels, value)` row; labels as `{k="v"}` or empty.
    pub(crate) fn counter<L: AsRef<str>>(&mut self, name: &str, help: &str, rows: &[(L, u64)]) {
        self.family(name, help, "counter", rows);
    }

    pub(crate) fn gauge<L: AsRef<str>>(&mut self, name: &str, help: &str, rows: &[(L, u64)]) {
        self.family(name, help, "gauge", rows);
    }

    fn family<L: AsRef<str>>(&mut self, name: &str, help: &str, kind: &str, rows: &[(L, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(self.0, "{name}{} {v}", labels.as_ref());
        }
    }

    pub(crate) fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let s = &mut self.0;
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&h.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = h.count();
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "{name}_sum {}", h.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(s, "{name}_count {count}");
    }

    pub(crate) fn finish(self) -> String {
        self.0
    }
}

/// A latency histogram in atomics (seconds, fixed buckets from 25 µs to 1 s).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

const BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Answers counted by HTTP status: the statuses the programs answer with, and "other".
#[derive(Debug, Default)]
pub(crate) struct ByStatus([AtomicU64; STATUSES.len()]);

/// Counted statuses in label order; 0 stands for any other.
const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 429, 500, 502, 503, 504, 0];

impl ByStatus {
    pub(crate) fn record(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.0[i].fetch_add(1, Relaxed);
    }

    /// Appends the counter family `name` with a `code` label per status.
    pub(crate) fn render(&self, t: &mut Text, name: &str, help: &str) {
        let rows: Vec<(String, u64)> = STATUSES
            .iter()
            .zip(&self.0)
            .map(|(code, n)| {
                let label = match code {
                    0 => "other".to_owned(),
                    c => c.to_string(),
                };
                (format!("{{code=\"{label}\"}}"), n.load(Relaxed))
            })
            .collect();
        t.counter(name, help, &rows);
    }
}

/// A reloadable input of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a program's reloadable inputs did: the serving certificate and the association
/// source. Every program owns one and renders it on its own `/metrics`.
#[derive(Debug, Default)]
pub struct InputMetrics {
    associations: AtomicU64,
    reloads: [AtomicU64; 2],
    reload_failures: [AtomicU64; 2],
    source_disconnected: AtomicU64,
    source_errors: AtomicU64,
    /// `notAfter` of the serving certificate, unix seconds (0: none served).
    tls_not_after: AtomicI64,
}

impl InputMetrics {
    pub(crate) fn set_tls_not_after(&self, unix_seconds: i64) {
        self.tls_not_after.store(unix_seconds, Relaxed);
    }

    /// `notAfter` of the serving certificate (unix seconds), when one is served.
    pub fn tls_not_after(&self) -> Option<i64> {
        Some(self.tls_not_after.load(Relaxed)).filter(|t| *t != 0)
    }

    pub(crate) fn set_associations(&self, n: usize) {
        self.associations.store(n as u64, Relaxed);
    }

    pub(crate) fn reload(&self, source: Source, ok: bool) {
        let slot = if ok { &self.reloads } else { &self.reload_failures };
        slot[source as usize].fetch_add(1, Relaxed);
    }

    /// Reloads of `source` that succeeded (`ok`) or were refused.
    pub fn reloads(&self, source: Source, ok: bool) -> u64 {
        let slot = if ok { &self.reloads } else { &self.reload_failures };
        slot[source as usize].load(Relaxed)
    }

    /// Whether the association source is in sync (a watch that lost the API server is not).
    pub(crate) fn source_connected(&self, connected: bool) {
        self.source_disconnected.store(u64::from(!connected), Relaxed);
    }

    pub fn is_source_connected(&self) -> bool {
        self.source_disconnected.load(Relaxed) == 0
    }

    pub(crate) fn source_error(&self) {
        self.source_errors.fetch_add(1, Relaxed);
    }

    pub fn source_errors(&self) -> u64 {
        self.source_errors.load(Relaxed)
    }

    pub(crate) fn render(&self, t: &mut Text) {
        t.gauge(
            "podidentity_associations",
            "Associations in the live index.",
            &[("", self.associations.load(Relaxed))],
        );
        let by_source =
            |ok| Source::ALL.map(|src| (format!("{{source=\"{}\"}}", src.as_str()), self.reloads(src, ok)));
        t.counter(
            "podidentity_reloads_total",
            "Successful reloads by source.",
            &by_source(true),
        );
        t.counter(
            "podidentity_reload_failures_total",
            "Reloads refused (the last good state kept serving) by source.",
            &by_source(false),
        );
        t.gauge(
            "podidentity_source_connected",
            "1 while the association source is in sync; 0 while a watch retries (the last index keeps serving).",
            &[("", u64::from(self.is_source_connected()))],
        );
        t.counter(
            "podidentity_source_errors_total",
            "Errors of the association watch.",
            &[("", self.source_errors())],
        );
        if let Some(not_after) = self.tls_not_after() {
            t.gauge(
                "podidentity_tls_not_after_seconds",
                "notAfter of the serving certificate, as unix seconds: alert well before it.",
                &[("", u64::try_from(not_after).unwrap_or(0))],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let statuses = ByStatus::default();
        statuses.record(403);
        statuses.record(418);
        let inputs = InputMetrics::default();
        inputs.reload(Source::Tls, false);
        inputs.set_associations(7);
        let mut t = Text::default();
        t.counter("c_total", "A counter.", &[("{a=\"b\"}", 2)]);
        t.histogram("lat_seconds", "Latency.", &h);
        statuses.render(&mut t, "r_total", "By status.");
        inputs.render(&mut t);
        let text = t.finish();
        assert!(
            text.contains("# TYPE c_total counter\nc_total{a=\"b\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("podidentity_associations 7\n"));
        assert!(
            text.contains("r_total{code=\"403\"} 1\nr_total{code=\"404\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("r_total{code=\"other\"} 1\n"), "{text}");
        assert!(text.contains("podidentity_reload_failures_total{source=\"tls\"} 1\n"));
        assert!(text.contains("podidentity_source_connected 1\n"));
    }
}
