//! The webhook's metrics: admissions by outcome and their latency, plus its inputs'.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::http::ServeMetrics;
use crate::metrics::{InputMetrics, Latency, Page, label_value};

/// What an admission ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

label_value!(Outcome);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Debug)]
pub struct WebhookMetrics {
    admissions: Family<OutcomeLabel, Counter>,
    /// Each outcome's row of `admissions`, kept so that counting an admission is one atomic
    /// add, no lookup.
    by_outcome: [Counter; 4],
    latency: Latency,
    /// The serving certificate and the association source.
    pub inputs: Arc<InputMetrics>,
    /// What the listener refused or cut off.
    pub serve: Arc<ServeMetrics>,
    /// The missed-injection report.
    pub report: Arc<ReportMetrics>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        let admissions = Family::<OutcomeLabel, Counter>::default();
        let by_outcome =
            Outcome::ALL.map(|outcome| admissions.get_or_create(&OutcomeLabel { outcome }).clone());
        WebhookMetrics {
            admissions,
            by_outcome,
            latency: Latency::default(),
            inputs: Arc::default(),
            serve: Arc::default(),
            report: Arc::default(),
        }
    }
}

/// The missed-injection report's figures; only the replica holding the Lease has counts.
#[derive(Debug, Default)]
pub struct ReportMetrics {
    leader: Gauge,
    /// Pods missed now, by namespace.
    missed: Family<NamespaceLabel, Gauge>,
    events: Counter,
}

impl ReportMetrics {
    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if !leader {
            self.set_missed(BTreeMap::new());
        }
    }

    /// The pods missed now: namespaces no longer listed have no row.
    pub(crate) fn set_missed(&self, by_namespace: BTreeMap<String, u64>) {
        self.missed.clear();
        for (namespace, n) in by_namespace {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.missed.get_or_create(&NamespaceLabel { namespace }).set(n);
        }
    }

    pub(crate) fn event_sent(&self) {
        self.events.inc();
    }

    fn add_to(&self, page: &mut Page) {
        page.add(
            "podidentity_report_leader",
            "1 on the replica that reports missed injections (it holds the Lease).",
            self.leader.clone(),
        );
        page.add(
            "podidentity_missed_injections",
            "Running pods in selected namespaces whose service account has an association but that were not injected (recreate them), by namespace.",
            self.missed.clone(),
        );
        page.add(
            "podidentity_missed_injection_events_total",
            "Kubernetes Events sent for pods that were not injected.",
            self.events.clone(),
        );
    }
}

impl WebhookMetrics {
    pub(crate) fn admission(&self, outcome: Outcome, took: Duration) {
        self.by_outcome[outcome as usize].inc();
        self.latency.observe(took);
    }

    pub fn admissions(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome as usize].get()
    }

    pub fn render(&self) -> String {
        let mut page = Page::default();
        page.add(
            "podidentity_admissions_total",
            "Admission requests by outcome.",
            self.admissions.clone(),
        );
        self.latency.add_to(
            &mut page,
            "podidentity_admission_duration_seconds",
            "Time to answer an admission request, body read to response built.",
        );
        self.inputs.add_to(&mut page);
        self.serve.add_to(&mut page);
        self.report.add_to(&mut page);
        page.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `by_outcome` is indexed by the outcome: `ALL` must list them in their order.
    #[test]
    fn every_outcome_has_its_row() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

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
