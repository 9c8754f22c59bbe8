//! The webhook's metrics: admissions by outcome and their latency, plus its inputs'.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::ServeMetrics;
use crate::metrics::{Histogram, InputMetrics, Text};

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

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Default)]
pub struct WebhookMetrics {
    admissions: [AtomicU64; 4],
    latency: Histogram,
    /// The serving certificate and the association source.
    pub inputs: Arc<InputMetrics>,
    /// What the listener refused or cut off.
    pub serve: Arc<ServeMetrics>,
    /// The missed-injection report.
    pub report: Arc<ReportMetrics>,
}

/// The missed-injection report's figures; only the replica holding the Lease has counts.
#[derive(Debug, Default)]
pub struct ReportMetrics {
    leader: AtomicBool,
    /// Pods missed now, by namespace.
    missed: Mutex<BTreeMap<String, u64>>,
    events: AtomicU64,
}

impl ReportMetrics {
    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Relaxed);
        if !leader {
            self.set_missed(BTreeMap::new());
        }
    }

    pub(crate) fn set_missed(&self, by_namespace: BTreeMap<String, u64>) {
        *self.missed.lock().unwrap_or_else(|e| e.into_inner()) = by_namespace;
    }

    pub(crate) fn event_sent(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    fn render(&self, t: &mut Text) {
        t.gauge(
            "podidentity_report_leader",
            "1 on the replica that reports missed injections (it holds the Lease).",
            &[("", u64::from(self.leader.load(Relaxed)))],
        );
        let rows: Vec<(String, u64)> = self
            .missed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(ns, n)| (format!("{{namespace=\"{ns}\"}}"), *n))
            .collect();
        t.gauge(
            "podidentity_missed_injections",
            "Running pods in selected namespaces whose service account has an association but that were not injected (recreate them), by namespace.",
            &rows,
        );
        t.counter(
            "podidentity_missed_injection_events_total",
            "Kubernetes Events sent for pods that were not injected.",
            &[("", self.events.load(Relaxed))],
        );
    }
}

impl WebhookMetrics {
    pub(crate) fn admission(&self, outcome: Outcome, took: Duration) {
        self.admissions[outcome as usize].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }

    pub fn admissions(&self, outcome: Outcome) -> u64 {
        self.admissions[outcome as usize].load(Relaxed)
    }

    pub fn render(&self) -> String {
        let mut t = Text::default();
        let rows = Outcome::ALL.map(|o| (format!("{{outcome=\"{}\"}}", o.as_str()), self.admissions(o)));
        t.counter(
            "podidentity_admissions_total",
            "Admission requests by outcome.",
            &rows,
        );
        t.histogram(
            "podidentity_admission_duration_seconds",
            "Time to answer an admission request, body read to response built.",
            &self.latency,
        );
        self.inputs.render(&mut t);
        self.serve.render(&mut t);
        self.report.render(&mut t);
        t.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_admissions_and_inputs() {
        let m = WebhookMetrics::default();
        m.admission(Outcome::Mutated, Duration::from_micros(30));
        m.admission(Outcome::Mutated, Duration::from_millis(3));
        m.admission(Outcome::Invalid, Duration::from_secs(5));
        m.inputs.set_associations(7);
        let text = m.render();
        assert!(text.contains("podidentity_admissions_total{outcome=\"mutated\"} 2\n"));
        assert!(text.contains("podidentity_admissions_total{outcome=\"invalid\"} 1\n"));
        assert!(text.contains("podidentity_admission_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("podidentity_associations 7\n"));
        assert!(text.contains("podidentity_report_leader 0\n"));
        m.report.set_leader(true);
        m.report.set_missed(BTreeMap::from([
            ("team-a".to_owned(), 2),
            ("team-b".to_owned(), 1),
        ]));
        m.report.event_sent();
        let text = m.render();
        assert!(text.contains("podidentity_report_leader 1\n"), "{text}");
        assert!(text.contains("podidentity_missed_injections{namespace=\"team-a\"} 2\n"));
        assert!(text.contains("podidentity_missed_injection_events_total 1\n"));
        m.report.set_leader(false);
        assert!(!m.render().contains("podidentity_missed_injections{"));
    }
}
