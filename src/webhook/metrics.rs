//! The webhook's metrics: admissions by outcome and their latency, plus its inputs'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    }
}
