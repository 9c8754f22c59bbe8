//! The exchange's metrics: answers by status, upstream calls, and its inputs'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::{InputMetrics, Text};

/// Statuses the exchange answers with, in the order they are counted (0: any other).
const STATUSES: [u16; 9] = [200, 400, 401, 403, 404, 502, 503, 504, 0];

#[derive(Debug, Default)]
pub struct ExchangeMetrics {
    responses: [AtomicU64; STATUSES.len()],
    reviews: AtomicU64,
    iam_ok: AtomicU64,
    iam_err: AtomicU64,
    /// The serving certificate and the association source.
    pub inputs: Arc<InputMetrics>,
}

impl ExchangeMetrics {
    pub(crate) fn response(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.responses[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn review(&self) {
        self.reviews.fetch_add(1, Relaxed);
    }

    pub(crate) fn iam(&self, ok: bool) {
        if ok { &self.iam_ok } else { &self.iam_err }.fetch_add(1, Relaxed);
    }

    pub(crate) fn render(&self) -> String {
        let mut t = Text::default();
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
        t.counter(
            "podidentity_exchange_responses_total",
            "Answers of the assume-agency API by HTTP status.",
            &rows,
        );
        t.counter(
            "podidentity_exchange_token_reviews_total",
            "TokenReviews asked of the API server.",
            &[("", self.reviews.load(Relaxed))],
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
        t.finish()
    }
}
