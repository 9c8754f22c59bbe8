//! The exchange's metrics: answers by status, upstream calls, and its inputs'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::http::ServeMetrics;
use crate::metrics::{ByStatus, InputMetrics, Text};

#[derive(Debug, Default)]
pub struct ExchangeMetrics {
    responses: ByStatus,
    reviews: AtomicU64,
    iam_ok: AtomicU64,
    iam_err: AtomicU64,
    /// The serving certificate and the association source.
    pub inputs: Arc<InputMetrics>,
    /// What the listener refused or cut off.
    pub serve: Arc<ServeMetrics>,
}

impl ExchangeMetrics {
    pub(crate) fn response(&self, status: u16) {
        self.responses.record(status);
    }

    pub(crate) fn review(&self) {
        self.reviews.fetch_add(1, Relaxed);
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
        self.serve.render(&mut t);
        t.finish()
    }
}
