//! The exchange's metrics: answers by status, refusals by reason, TokenReviews and cache hits
//! by token, upstream calls, and its inputs'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::refusal::Reason;
use crate::http::ServeMetrics;
use crate::issuer::IssuerMetrics;
use crate::metrics::{ByStatus, InputMetrics, Text};

/// Which token a review or cache hit was for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Token {
    /// The agent's `X-Auth-Token`.
    Caller,
    /// The pod's token in the body.
    Pod,
}

#[derive(Debug, Default)]
pub struct ExchangeMetrics {
    responses: ByStatus,
    refusals: [AtomicU64; Reason::ALL.len()],
    reviews: [AtomicU64; 2],
    cache_hits: [AtomicU64; 2],
    iam_ok: AtomicU64,
    iam_err: AtomicU64,
    /// The serving certificate and the association source.
    pub inputs: Arc<InputMetrics>,
    /// What the listener refused or cut off.
    pub serve: Arc<ServeMetrics>,
    /// What the local check of tokens against the cluster's signing keys did.
    pub issuer: Arc<IssuerMetrics>,
}

impl ExchangeMetrics {
    pub(crate) fn response(&self, status: u16) {
        self.responses.record(status);
    }

    pub(crate) fn refusal(&self, reason: Reason) {
        self.refusals[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn review(&self, token: Token) {
        self.reviews[token as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_hit(&self, token: Token) {
        self.cache_hits[token as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn iam(&self, ok: bool) {
        if ok { &self.iam_ok } else { &self.iam_err }.fetch_add(1, Relaxed);
    }

    pub(crate) fn render(&self) -> String {
        let mut t = Text::default();
        self.responses.render(
            &mut t,
            "podidentity_exchange_responses_total",
            "Answers of the assume-agency API by HTTP status.",
        );
        let refusals: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.label()),
                    self.refusals[r.index()].load(Relaxed),
                )
            })
            .collect();
        t.counter(
            "podidentity_exchange_refusals_total",
            "Requests answered without credentials, by reason.",
            &refusals,
        );
        let by_token = |a: &[AtomicU64; 2]| {
            [
                ("{token=\"caller\"}", a[Token::Caller as usize].load(Relaxed)),
                ("{token=\"pod\"}", a[Token::Pod as usize].load(Relaxed)),
            ]
        };
        t.counter(
            "podidentity_exchange_token_reviews_total",
            "TokenReviews asked, by token (those the local check refused never reach the API server: podidentity_token_verifications_total).",
            &by_token(&self.reviews),
        );
        t.counter(
            "podidentity_exchange_cache_hits_total",
            "Requests answered from the short cache (caller: its review; pod: the credentials issued).",
            &by_token(&self.cache_hits),
        );
        t.counter(
            "podidentity_exchange_iam_calls_total",
            "IAM assume_role calls by result.",
            &[
                ("{result=\"ok\"}", self.iam_ok.load(Relaxed)),
                ("{result=\"error\"}", self.iam_err.load(Relaxed)),
            ],
        );
        self.inputs.render(&mut t);
        self.serve.render(&mut t);
        self.issuer.render(&mut t);
        t.finish()
    }
}
