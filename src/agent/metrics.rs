//! The agent's Prometheus metrics, plus its association source's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::http::ServeMetrics;
use crate::issuer::IssuerMetrics;
use crate::metrics::{ByStatus, Histogram, InputMetrics, Text};

/// Why a request was refused without asking the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Default)]
pub struct AgentMetrics {
    hits: AtomicU64,
    refusals_repeated: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    misses: AtomicU64,
    upstream_ok: AtomicU64,
    upstream_err: AtomicU64,
    upstream_latency: Histogram,
    refresh_ok: AtomicU64,
    refresh_err: AtomicU64,
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
        self.hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn refusal_repeated(&self) {
        self.refusals_repeated.fetch_add(1, Relaxed);
    }

    /// A request refused before any upstream call, by `reason`.
    pub(crate) fn refused_locally(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Relaxed)
    }

    pub(crate) fn cache_miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    pub(crate) fn upstream(&self, ok: bool, took: Duration) {
        if ok { &self.upstream_ok } else { &self.upstream_err }.fetch_add(1, Relaxed);
        self.upstream_latency.observe(took);
    }

    pub(crate) fn refresh(&self, ok: bool) {
        if ok { &self.refresh_ok } else { &self.refresh_err }.fetch_add(1, Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        self.responses.record(status);
    }

    /// Upstream calls made (successful and failed).
    pub fn upstream_calls(&self) -> u64 {
        self.upstream_ok.load(Relaxed) + self.upstream_err.load(Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    pub(crate) fn render(&self, cached: usize) -> String {
        let mut t = Text::default();
        t.counter(
            "podidentity_agent_cache_hits_total",
            "Requests answered from the cache.",
            &[("", self.hits.load(Relaxed))],
        );
        let refused = Refusal::ALL.map(|r| (format!("{{reason=\"{}\"}}", r.as_str()), self.refused(r)));
        t.counter(
            "podidentity_agent_refused_total",
            "Requests refused without an upstream call, by reason.",
            &refused,
        );
        t.counter(
            "podidentity_agent_refusals_repeated_total",
            "Requests answered with the upstream's recent refusal of the same token.",
            &[("", self.refusals_repeated.load(Relaxed))],
        );
        t.counter(
            "podidentity_agent_cache_misses_total",
            "Requests that needed the upstream.",
            &[("", self.misses.load(Relaxed))],
        );
        let by_result = |ok: &AtomicU64, err: &AtomicU64| {
            [
                ("{result=\"ok\"}", ok.load(Relaxed)),
                ("{result=\"error\"}", err.load(Relaxed)),
            ]
        };
        t.counter(
            "podidentity_agent_upstream_calls_total",
            "Calls to the credential upstream by result.",
            &by_result(&self.upstream_ok, &self.upstream_err),
        );
        t.counter(
            "podidentity_agent_refreshes_total",
            "Background refreshes by result.",
            &by_result(&self.refresh_ok, &self.refresh_err),
        );
        self.responses.render(
            &mut t,
            "podidentity_agent_responses_total",
            "Credential responses by HTTP status.",
        );
        t.histogram(
            "podidentity_agent_upstream_duration_seconds",
            "Latency of upstream calls.",
            &self.upstream_latency,
        );
        t.gauge(
            "podidentity_agent_cached_credentials",
            "Tokens with cached credentials.",
            &[("", cached as u64)],
        );
        self.inputs.render(&mut t);
        self.serve.render(&mut t);
        self.issuer.render(&mut t);
        t.finish()
    }
}
