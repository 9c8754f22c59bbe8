//! Why the exchange gives no credentials, in no API's terms: the reason (counted), what the
//! caller reads (what it can act on) and what only the log gets (who, which token by hash, and
//! the internal cause), sampled so a flood of refusals cannot flood the log. Each front puts a
//! refusal in its own API's error shape.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;

use crate::cloud::error::CloudError;
use crate::http;
use crate::log_throttle::Sampled;
use crate::rate_limit::TokenHash;

/// An answer in the cloud API's error body `{"error_code","error_msg"}`.
pub(super) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = CloudError {
        error_code: code.to_owned(),
        error_msg: message.to_owned(),
    };
    http::json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// Why a request was refused, as counted in `podidentity_exchange_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    UnknownCluster,
    BadRequest,
    NoCallerToken,
    CallerInvalid,
    CallerNotAgent,
    CallerNotAgentPod,
    PodTokenInvalid,
    NotServiceAccount,
    NotPodBound,
    NoNodeBinding,
    OtherNode,
    NoAssociation,
    NoAgency,
    RateLimited,
    ReviewUnavailable,
    Iam,
}

impl Reason {
    pub(crate) const ALL: [Reason; 16] = [
        Reason::UnknownCluster,
        Reason::BadRequest,
        Reason::NoCallerToken,
        Reason::CallerInvalid,
        Reason::CallerNotAgent,
        Reason::CallerNotAgentPod,
        Reason::PodTokenInvalid,
        Reason::NotServiceAccount,
        Reason::NotPodBound,
        Reason::NoNodeBinding,
        Reason::OtherNode,
        Reason::NoAssociation,
        Reason::NoAgency,
        Reason::RateLimited,
        Reason::ReviewUnavailable,
        Reason::Iam,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownCluster => "unknown_cluster",
            Reason::BadRequest => "bad_request",
            Reason::NoCallerToken => "no_caller_token",
            Reason::CallerInvalid => "caller_invalid",
            Reason::CallerNotAgent => "caller_not_agent",
            Reason::CallerNotAgentPod => "caller_not_agent_pod",
            Reason::PodTokenInvalid => "pod_token_invalid",
            Reason::NotServiceAccount => "not_service_account",
            Reason::NotPodBound => "not_pod_bound",
            Reason::NoNodeBinding => "no_node_binding",
            Reason::OtherNode => "other_node",
            Reason::NoAssociation => "no_association",
            Reason::NoAgency => "no_agency",
            Reason::RateLimited => "rate_limited",
            Reason::ReviewUnavailable => "review_unavailable",
            Reason::Iam => "iam",
        }
    }
}

/// A refusal: why, what the caller reads, and what only the log gets.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    /// What the caller reads: what is wrong and what to do, nothing internal.
    pub(crate) message: String,
    /// The internal cause (the API server's or IAM's wording, a transport error): log only.
    pub(crate) detail: Option<String>,
    /// For a rate limit or an unavailable dependency: when to come back.
    pub(crate) retry_after: Option<Duration>,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    pub(crate) fn detail(mut self, detail: impl ToString) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

/// A front's refusal: the refusal, and its answer in the front's API shape.
pub(crate) trait Refused {
    fn refusal(&self) -> &Refusal;
    fn response(&self) -> Response;
}

/// What the exchange learned about a request before refusing it: who called and for whom,
/// tokens by hash only.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) caller: Option<String>,
    pub(crate) caller_node: Option<String>,
    pub(crate) caller_token: Option<TokenHash>,
    pub(crate) subject: Option<String>,
    pub(crate) pod_token: Option<TokenHash>,
}

/// Logs the first `per_window` refusals of each window; the rest are counted, and the count
/// goes with the next line logged.
pub(crate) struct SampledLog(Sampled);

impl SampledLog {
    pub(crate) fn new(window: Duration, per_window: u32) -> Self {
        SampledLog(Sampled::new(per_window, window))
    }

    /// Logs `refusal`, answered with `status`, with what was `seen`, unless this window's
    /// share is spent.
    pub(crate) fn log(&self, refusal: &Refusal, status: StatusCode, seen: &Seen) {
        let Some(unlogged) = self.0.admit() else {
            return;
        };
        let hash = |h: &Option<TokenHash>| h.map(|h| h.to_string());
        tracing::warn!(
            status = status.as_u16(),
            reason = refusal.reason.as_str(),
            caller = seen.caller.as_deref(),
            caller_node = seen.caller_node.as_deref(),
            caller_token = hash(&seen.caller_token).as_deref(),
            subject = seen.subject.as_deref(),
            pod_token = hash(&seen.pod_token).as_deref(),
            detail = refusal.detail.as_deref(),
            message = %refusal.message,
            unlogged_before = unlogged,
            "exchange refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label_and_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL lists every reason, in order");
        }
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
