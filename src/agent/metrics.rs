//! The agent's Prometheus metrics, plus its association source's.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::http::ServeMetrics;
use crate::issuer::IssuerMetrics;
use crate::metrics::{ByResult, ByStatus, InputMetrics, Latency, Page, label_value};

/// Why a request was refused without asking the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The Host header is not one of the agent's addresses.
    Host,
    /// No token, or not a service-account JWT.
    Malformed,
    /// Longer than any service-account token.
    TooLong,
    Expired,
    /// The token's audience lacks the profile's.
    Audience,
    /// Over the client's share of the upstream budget.
    ClientRate,
    /// Over the node's upstream budget.
    Rate,
    /// Not signed by the cluster's service-account keys (or not for them: issuer, lifetime).
    Unverified,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Host,
        Refusal::Malformed,
        Refusal::TooLong,
        Refusal::Expired,
        Refusal::Audience,
        Refusal::ClientRate,
        Refusal::Rate,
        Refusal::Unverified,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Malformed => "malformed",
            Refusal::TooLong => "too_long",
            Refusal::Expired => "expired",
            Refusal::Audience => "audience",
            Refusal::ClientRate => "client_rate",
            Refusal::Rate => "rate",
            Refusal::Unverified => "unverified",
        }
    }
}

label_value!(Refusal);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Refusal,
}

#[derive(Debug, Default)]
pub struct AgentMetrics {
    hits: Counter,
    refusals_repeated: Counter,
    refused: Family<ReasonLabel, Counter>,
    misses: Counter,
    upstream: ByResult,
    upstream_latency: Latency,
    refreshes: ByResult,
    responses: ByStatus,
    /// The association source (`local` backend).
    pub inputs: Arc<InputMetrics>,
    /// What the two listeners refused or cut off.
    pub serve: Arc<ServeMetrics>,
    /// What the local check of tokens against the cluster's signing keys did.
    pub issuer: Arc<IssuerMetrics>,
}

impl AgentMetrics {
    pub(crate) fn cache_hit(&self) {
        self.hits.inc();
    }

    pub(crate) fn refusal_repeated(&self) {
        self.refusals_repeated.inc();
    }

    /// A request refused before any upstream call, by `reason`.
    pub(crate) fn refused_locally(&self, reason: Refusal) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused.get_or_create(&ReasonLabel { reason }).get()
    }

    pub(crate) fn cache_miss(&self) {
        self.misses.inc();
    }

    pub(crate) fn upstream(&self, ok: bool, took: Duration) {
        self.upstream.record(ok);
        self.upstream_latency.observe(took);
    }

    pub(crate) fn refresh(&self, ok: bool) {
        self.refreshes.record(ok);
    }

    pub(crate) fn response(&self, status: u16) {
        self.responses.record(status);
    }

    /// Upstream calls made (successful and failed).
    pub fn upstream_calls(&self) -> u64 {
        self.upstream.total()
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub(crate) fn render(&self, cached: usize) -> String {
        let mut page = Page::default();
        page.add(
            "podidentity_agent_cache_hits_total",
            "Requests answered from the cache.",
            self.hits.clone(),
        );
        for r in Refusal::ALL {
            self.refused(r);
        }
        page.add(
            "podidentity_agent_refused_total",
            "Requests refused without an upstream call, by reason.",
            self.refused.clone(),
        );
        page.add(
            "podidentity_agent_refusals_repeated_total",
            "Requests answered with the upstream's recent refusal of the same token.",
            self.refusals_repeated.clone(),
        );
        page.add(
            "podidentity_agent_cache_misses_total",
            "Requests that needed the upstream.",
            self.misses.clone(),
        );
        self.upstream.add_to(
            &mut page,
            "podidentity_agent_upstream_calls_total",
            "Calls to the credential upstream by result.",
        );
        self.refreshes.add_to(
            &mut page,
            "podidentity_agent_refreshes_total",
            "Background refreshes by result.",
        );
        self.responses.add_to(
            &mut page,
            "podidentity_agent_responses_total",
            "Credential responses by HTTP status.",
        );
        self.upstream_latency.add_to(
            &mut page,
            "podidentity_agent_upstream_duration_seconds",
            "Latency of upstream calls.",
        );
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(cached).unwrap_or(i64::MAX));
        page.add(
            "podidentity_agent_cached_credentials",
            "Tokens with cached credentials.",
            gauge,
        );
        self.inputs.add_to(&mut page);
        self.serve.add_to(&mut page);
        self.issuer.add_to(&mut page);
        page.finish()
    }
}
