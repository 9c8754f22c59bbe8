//! `/healthz`, `/readyz` and `/metrics`, the same on every program.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;

use crate::metrics::CONTENT_TYPE;

type Condition = Box<dyn Fn() -> bool + Send + Sync>;

/// What `/readyz` reports: ready when every condition holds and the server is not draining.
#[derive(Default)]
pub(crate) struct Readiness {
    /// Each condition with the problem `/readyz` names while it is false.
    conditions: Vec<(Condition, &'static str)>,
    draining: AtomicBool,
}

impl Readiness {
    /// Adds a condition; `problem` is what `/readyz` says while `holds` returns false.
    pub(crate) fn require(
        mut self,
        holds: impl Fn() -> bool + Send + Sync + 'static,
        problem: &'static str,
    ) -> Self {
        self.conditions.push((Box::new(holds), problem));
        self
    }

    /// Adds a condition that holds once `flag` is set.
    pub(crate) fn require_flag(self, flag: Arc<AtomicBool>, problem: &'static str) -> Self {
        self.require(move || flag.load(Ordering::Relaxed), problem)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn problems(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self
            .conditions
            .iter()
            .filter(|(holds, _)| !holds())
            .map(|(_, problem)| *problem)
            .collect();
        if self.draining.load(Ordering::Relaxed) {
            out.push("shutting down");
        }
        out
    }
}

/// The health routes; `/metrics` answers what `render` returns at the time of the request.
pub(crate) fn routes(
    readiness: Arc<Readiness>,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let problems = readiness.problems();
                async move {
                    if problems.is_empty() {
                        (StatusCode::OK, "ready\n".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", problems.join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = render();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_names_every_unmet_condition_and_draining() {
        let tls = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicBool::new(false));
        let readiness = Arc::new(
            Readiness::default()
                .require_flag(tls.clone(), "TLS material not loaded")
                .require_flag(synced.clone(), "associations not synced"),
        );
        let router = routes(readiness.clone(), || "m 1\n".to_owned());
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: TLS material not loaded, associations not synced\n"
        );
        tls.store(true, Ordering::Relaxed);
        synced.store(true, Ordering::Relaxed);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
        readiness.start_draining();
        assert_eq!(get(&router, "/readyz").await.2, "not ready: shutting down\n");
        assert_eq!(get(&router, "/healthz").await.2, "ok\n");
        let (status, ct, body) = get(&router, "/metrics").await;
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (StatusCode::OK, CONTENT_TYPE, "m 1\n")
        );
    }
}
