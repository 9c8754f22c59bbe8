//! The exchange's metrics: answers by status, refusals by reason, TokenReviews and cache hits
//! by token, upstream calls, and its inputs'.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::refusal::Reason;
use crate::http::ServeMetrics;
use crate::issuer::IssuerMetrics;
use crate::metrics::{ByResult, ByStatus, InputMetrics, Page, label_value};

/// Which token a review or cache hit was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Token {
    /// The agent's `X-Auth-Token`.
    Caller,
    /// The pod's token in the body.
    Pod,
}

impl Token {
    fn as_str(self) -> &'static str {
        match self {
            Token::Caller => "caller",
            Token::Pod => "pod",
        }
    }
}

label_value!(Token, Reason);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    token: Token,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Reason,
}

#[derive(Debug, Default)]
pub struct ExchangeMetrics {
    responses: ByStatus,
    refusals: Family<ReasonLabel, Counter>,
    reviews: Family<TokenLabel, Counter>,
    cache_hits: Family<TokenLabel, Counter>,
    iam: ByResult,
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
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn review(&self, token: Token) {
        self.reviews.get_or_create(&TokenLabel { token }).inc();
    }

    pub(crate) fn cache_hit(&self, token: Token) {
        self.cache_hits.get_or_create(&TokenLabel { token }).inc();
    }

    pub(crate) fn iam(&self, ok: bool) {
        self.iam.record(ok);
    }

    pub(crate) fn render(&self) -> String {
        let mut page = Page::default();
        self.responses.add_to(
            &mut page,
            "podidentity_exchange_responses_total",
            "Answers of the assume-agency API by HTTP status.",
        );
        for reason in Reason::ALL {
            let _ = self.refusals.get_or_create(&ReasonLabel { reason });
        }
        page.add(
            "podidentity_exchange_refusals_total",
            "Requests answered without credentials, by reason.",
            self.refusals.clone(),
        );
        for token in [Token::Caller, Token::Pod] {
            let _ = self.reviews.get_or_create(&TokenLabel { token });
            let _ = self.cache_hits.get_or_create(&TokenLabel { token });
        }
        page.add(
            "podidentity_exchange_token_reviews_total",
            "TokenReviews asked, by token (those the local check refused never reach the API server: podidentity_token_verifications_total).",
            self.reviews.clone(),
        );
        page.add(
            "podidentity_exchange_cache_hits_total",
            "Requests answered from the short cache (caller: its review; pod: the credentials issued).",
            self.cache_hits.clone(),
        );
        self.iam.add_to(
            &mut page,
            "podidentity_exchange_iam_calls_total",
            "IAM assume_role calls by result.",
        );
        self.inputs.add_to(&mut page);
        self.serve.add_to(&mut page);
        self.issuer.add_to(&mut page);
        page.finish()
    }
}
