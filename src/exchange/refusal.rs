//! Why the exchange gives no credentials: the answer the caller gets (what it can act on), the
//! log line operators get (who, which token by hash, and the internal cause), sampled so a
//! flood of refusals cannot flood the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::budget::TokenHash;

/// Why a request was refused, as counted in `podidentity_exchange_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    UnknownCluster,
    BadRequest,
    NoCallerToken,
    CallerInvalid,
    CallerNotAgent,
    PodTokenInvalid,
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
    pub(crate) const ALL: [Reason; 14] = [
        Reason::UnknownCluster,
        Reason::BadRequest,
        Reason::NoCallerToken,
        Reason::CallerInvalid,
        Reason::CallerNotAgent,
        Reason::PodTokenInvalid,
        Reason::NotPodBound,
        Reason::NoNodeBinding,
        Reason::OtherNode,
        Reason::NoAssociation,
        Reason::NoAgency,
        Reason::RateLimited,
        Reason::ReviewUnavailable,
        Reason::Iam,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::UnknownCluster => "unknown_cluster",
            Reason::BadRequest => "bad_request",
            Reason::NoCallerToken => "no_caller_token",
            Reason::CallerInvalid => "caller_invalid",
            Reason::CallerNotAgent => "caller_not_agent",
            Reason::PodTokenInvalid => "pod_token_invalid",
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

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A refusal: the caller's answer, and what only the log gets.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// The cloud API's `error_code`.
    pub(crate) code: &'static str,
    pub(crate) reason: Reason,
    /// What the caller reads: what is wrong and what to do, nothing internal.
    pub(crate) message: String,
    /// The internal cause (the API server's or IAM's wording, a transport error): log only.
    pub(crate) detail: Option<String>,
    /// For 429: when to come back.
    pub(crate) retry_after: Option<Duration>,
}

impl Refusal {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            status,
            code,
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

/// Logs the first `per_window` refusals of each window; the rest are counted and the count is
/// logged when the next window starts.
#[derive(Debug)]
pub(crate) struct SampledLog {
    window: Duration,
    per_window: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl SampledLog {
    pub(crate) fn new(window: Duration, per_window: u32) -> Self {
        SampledLog {
            window,
            per_window,
            state: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this refusal is logged at `now`; also how many went unlogged in the window that
    /// just ended, if any did.
    fn admit(&self, now: Instant) -> (bool, Option<u64>) {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = None;
        if now.saturating_duration_since(w.start) >= self.window {
            ended = Some(w.suppressed).filter(|n| *n > 0);
            *w = Window {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < self.per_window {
            w.logged += 1;
            (true, ended)
        } else {
            w.suppressed += 1;
            (false, ended)
        }
    }

    /// Logs `refusal` with what was `seen`, unless this window's share is spent.
    pub(crate) fn log(&self, refusal: &Refusal, seen: &Seen) {
        let (log, ended) = self.admit(Instant::now());
        if let Some(n) = ended {
            tracing::warn!(unlogged = n, window = ?self.window, "refusals not logged in the last window");
        }
        if !log {
            return;
        }
        let hash = |h: &Option<TokenHash>| h.map(|h| h.to_string());
        tracing::warn!(
            status = refusal.status.as_u16(),
            reason = refusal.reason.label(),
            caller = seen.caller.as_deref(),
            caller_node = seen.caller_node.as_deref(),
            caller_token = hash(&seen.caller_token).as_deref(),
            subject = seen.subject.as_deref(),
            pod_token = hash(&seen.pod_token).as_deref(),
            detail = refusal.detail.as_deref(),
            message = %refusal.message,
            "exchange refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_the_first_n_per_window_and_reports_the_rest() {
        let log = SampledLog::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), (true, None));
        assert_eq!(log.admit(t0), (true, None));
        assert_eq!(log.admit(t0), (false, None));
        assert_eq!(log.admit(t0 + Duration::from_secs(59)), (false, None));
        // The next window logs again and reports what the last one left out.
        assert_eq!(log.admit(t0 + Duration::from_secs(60)), (true, Some(2)));
        assert_eq!(log.admit(t0 + Duration::from_secs(200)), (true, None));
    }

    #[test]
    fn every_reason_has_its_own_label_and_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
