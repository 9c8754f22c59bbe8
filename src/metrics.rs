//! Prometheus metrics, kept in atomics so recording costs a few nanoseconds on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What an admission ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A pod got a non-empty patch.
    Mutated,
    /// A pod was evaluated and needed nothing (no association, or already injected).
    Unchanged,
    /// Not ours to look at: another kind, another operation, or the pod opted out.
    Skipped,
    /// The request or its object could not be read.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Mutated,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::Invalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
        }
    }
}

/// A reloadable input.
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

/// A latency histogram in atomics (seconds, fixed buckets from 25 µs to 1 s).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends the histogram `name` in the text format (HELP and TYPE lines included).
    pub fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "{name}_sum {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(s, "{name}_count {count}");
    }
}

const BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// The process's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    admissions: [AtomicU64; 4],
    latency: Histogram,
    associations: AtomicU64,
    reloads: [AtomicU64; 2],
    reload_failures: [AtomicU64; 2],
    source_disconnected: AtomicU64,
    source_errors: AtomicU64,
}

impl Metrics {
    pub fn admission(&self, outcome: Outcome, took: Duration) {
        self.admissions[outcome as usize].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }

    pub fn admissions(&self, outcome: Outcome) -> u64 {
        self.admissions[outcome as usize].load(Relaxed)
    }

    pub fn set_associations(&self, n: usize) {
        self.associations.store(n as u64, Relaxed);
    }

    pub fn reload(&self, source: Source, ok: bool) {
        let slot = if ok { &self.reloads } else { &self.reload_failures };
        slot[source as usize].fetch_add(1, Relaxed);
    }

    pub fn reloads(&self, source: Source, ok: bool) -> u64 {
        let slot = if ok { &self.reloads } else { &self.reload_failures };
        slot[source as usize].load(Relaxed)
    }

    /// Whether the association source is in sync (a watch that lost the API server is not).
    pub fn source_connected(&self, connected: bool) {
        self.source_disconnected.store(u64::from(!connected), Relaxed);
    }

    pub fn is_source_connected(&self) -> bool {
        self.source_disconnected.load(Relaxed) == 0
    }

    pub fn source_error(&self) {
        self.source_errors.fetch_add(1, Relaxed);
    }

    pub fn source_errors(&self) -> u64 {
        self.source_errors.load(Relaxed)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        s.push_str("# HELP podidentity_admissions_total Admission requests by outcome.\n");
        s.push_str("# TYPE podidentity_admissions_total counter\n");
        for o in Outcome::ALL {
            let _ = writeln!(
                s,
                "podidentity_admissions_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                self.admissions(o)
            );
        }
        self.latency.render(
            &mut s,
            "podidentity_admission_duration_seconds",
            "Time to answer an admission request, body read to response built.",
        );
        s.push_str("# HELP podidentity_associations Associations in the live index.\n");
        s.push_str("# TYPE podidentity_associations gauge\n");
        let _ = writeln!(s, "podidentity_associations {}", self.associations.load(Relaxed));
        s.push_str("# HELP podidentity_reloads_total Successful reloads by source.\n");
        s.push_str("# TYPE podidentity_reloads_total counter\n");
        for src in Source::ALL {
            let _ = writeln!(
                s,
                "podidentity_reloads_total{{source=\"{}\"}} {}",
                src.as_str(),
                self.reloads(src, true)
            );
        }
        s.push_str("# HELP podidentity_reload_failures_total Reloads refused (the last good state kept serving) by source.\n");
        s.push_str("# TYPE podidentity_reload_failures_total counter\n");
        for src in Source::ALL {
            let _ = writeln!(
                s,
                "podidentity_reload_failures_total{{source=\"{}\"}} {}",
                src.as_str(),
                self.reloads(src, false)
            );
        }
        s.push_str("# HELP podidentity_source_connected 1 while the association source is in sync; 0 while a watch retries (the last index keeps serving).\n");
        s.push_str("# TYPE podidentity_source_connected gauge\n");
        let _ = writeln!(
            s,
            "podidentity_source_connected {}",
            u64::from(self.is_source_connected())
        );
        s.push_str("# HELP podidentity_source_errors_total Errors of the association watch.\n");
        s.push_str("# TYPE podidentity_source_errors_total counter\n");
        let _ = writeln!(s, "podidentity_source_errors_total {}", self.source_errors());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.admission(Outcome::Mutated, Duration::from_micros(30));
        m.admission(Outcome::Mutated, Duration::from_millis(3));
        m.admission(Outcome::Invalid, Duration::from_secs(5));
        m.reload(Source::Tls, false);
        m.set_associations(7);
        let text = m.render();
        assert!(text.contains("podidentity_admissions_total{outcome=\"mutated\"} 2\n"));
        assert!(text.contains("podidentity_admissions_total{outcome=\"invalid\"} 1\n"));
        assert!(text.contains("podidentity_admission_duration_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("podidentity_admission_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("podidentity_admission_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("podidentity_associations 7\n"));
        assert!(text.contains("podidentity_reload_failures_total{source=\"tls\"} 1\n"));
    }
}
