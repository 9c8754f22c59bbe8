//! The agent's Prometheus metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::metrics::Histogram;

/// Status codes the agent answers with, in the order they are counted.
const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 429, 500, 502, 503, 504, 0];

#[derive(Debug, Default)]
pub struct AgentMetrics {
    hits: AtomicU64,
    misses: AtomicU64,
    upstream_ok: AtomicU64,
    upstream_err: AtomicU64,
    upstream_latency: Histogram,
    refresh_ok: AtomicU64,
    refresh_err: AtomicU64,
    responses: [AtomicU64; STATUSES.len()],
}

impl AgentMetrics {
    pub fn cache_hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    pub fn cache_miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    pub fn upstream(&self, ok: bool, took: Duration) {
        if ok { &self.upstream_ok } else { &self.upstream_err }.fetch_add(1, Relaxed);
        self.upstream_latency.observe(took);
    }

    pub fn refresh(&self, ok: bool) {
        if ok { &self.refresh_ok } else { &self.refresh_err }.fetch_add(1, Relaxed);
    }

    pub fn response(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.responses[i].fetch_add(1, Relaxed);
    }

    /// Upstream calls made (successful and failed).
    pub fn upstream_calls(&self) -> u64 {
        self.upstream_ok.load(Relaxed) + self.upstream_err.load(Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    pub fn render(&self, cached: usize) -> String {
        let mut s = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        counter(
            "podidentity_agent_cache_hits_total",
            "Requests answered from the cache.",
            &[("", self.hits.load(Relaxed))],
        );
        counter(
            "podidentity_agent_cache_misses_total",
            "Requests that needed the upstream.",
            &[("", self.misses.load(Relaxed))],
        );
        counter(
            "podidentity_agent_upstream_calls_total",
            "Calls to the credential upstream by result.",
            &[
                ("{result=\"ok\"}", self.upstream_ok.load(Relaxed)),
                ("{result=\"error\"}", self.upstream_err.load(Relaxed)),
            ],
        );
        counter(
            "podidentity_agent_refreshes_total",
            "Background refreshes by result.",
            &[
                ("{result=\"ok\"}", self.refresh_ok.load(Relaxed)),
                ("{result=\"error\"}", self.refresh_err.load(Relaxed)),
            ],
        );
        let rows: Vec<(String, u64)> = STATUSES
            .iter()
            .zip(&self.responses)
            .map(|(code, n)| {
                let label = if *code == 0 {
                    "other".to_owned()
                } else {
                    code.to_string()
                };
                (format!("{{code=\"{label}\"}}"), n.load(Relaxed))
            })
            .collect();
        let rows: Vec<(&str, u64)> = rows.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            "podidentity_agent_responses_total",
            "Credential responses by HTTP status.",
            &rows,
        );
        self.upstream_latency.render(
            &mut s,
            "podidentity_agent_upstream_duration_seconds",
            "Latency of upstream calls.",
        );
        let _ = writeln!(
            s,
            "# HELP podidentity_agent_cached_credentials Tokens with cached credentials.\n# TYPE podidentity_agent_cached_credentials gauge\npodidentity_agent_cached_credentials {cached}"
        );
        s
    }
}
