//! What stands between a connection and the router: the body limit and budget, the request
//! deadline, the connection's activity for its idle deadline, and the peer's address for the
//! handlers (`axum::extract::ConnectInfo`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use hyper::body::{Body as _, Incoming};
use tower::ServiceExt;

use super::Limits;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Page;

/// What the listeners of a program refused or cut off.
#[derive(Debug, Default)]
pub struct ServeMetrics {
    open: Gauge,
    /// Connections closed at once, by reason (`cap`, `per_client`).
    connections_refused: Family<ReasonLabel, Counter>,
    idle_closed: Counter,
    silent_closed: Counter,
    /// Requests answered with an error by the listener, by reason (`timeout`, `too_large`,
    /// `over_budget`).
    requests_refused: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

const CONNECTION_REASONS: [&str; 2] = ["cap", "per_client"];
const REQUEST_REASONS: [&str; 3] = ["timeout", "too_large", "over_budget"];

/// Counts an open connection until dropped.
pub(super) struct Open<'a>(&'a ServeMetrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

impl ServeMetrics {
    pub(super) fn open(&self) -> Open<'_> {
        self.open.inc();
        Open(self)
    }

    fn connection(&self, reason: &'static str) -> Counter {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    fn request(&self, reason: &'static str) -> Counter {
        self.requests_refused
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    pub(super) fn connection_refused(&self) {
        self.connection("cap").inc();
    }

    pub(super) fn client_refused(&self) {
        self.connection("per_client").inc();
    }

    pub(super) fn idle_closed(&self) {
        self.idle_closed.inc();
    }

    pub(super) fn silent_closed(&self) {
        self.silent_closed.inc();
    }

    /// Connections closed for sending no request within the header deadline.
    pub fn silent_connections_closed(&self) -> u64 {
        self.silent_closed.get()
    }

    /// Requests refused or cut off, by reason: `timeout`, `too_large`, `over_budget`; and
    /// connections: `connection` (the cap), `client_connections` (a client's share).
    pub fn refused(&self, reason: &str) -> u64 {
        match reason {
            "connection" => self.connection("cap").get(),
            "client_connections" => self.connection("per_client").get(),
            r => REQUEST_REASONS
                .into_iter()
                .find(|known| *known == r)
                .map_or(0, |known| self.request(known).get()),
        }
    }

    pub(crate) fn add_to(&self, page: &mut Page) {
        page.add(
            "podidentity_http_connections",
            "Connections open.",
            self.open.clone(),
        );
        for r in CONNECTION_REASONS {
            self.connection(r);
        }
        page.add(
            "podidentity_http_connections_refused_total",
            "Connections closed at once, by reason: the listener's cap (`cap`) or the client address's share (`per_client`).",
            self.connections_refused.clone(),
        );
        page.add(
            "podidentity_http_connections_closed_total",
            "Connections closed for idling past the idle deadline, or not closing when asked.",
            self.idle_closed.clone(),
        );
        page.add(
            "podidentity_http_silent_connections_closed_total",
            "Connections closed for sending no request within the header deadline of their opening.",
            self.silent_closed.clone(),
        );
        for r in REQUEST_REASONS {
            self.request(r);
        }
        page.add(
            "podidentity_http_requests_refused_total",
            "Requests answered with an error by the listener itself, by reason.",
            self.requests_refused.clone(),
        );
    }
}

/// A connection's requests in flight and when it last had one.
#[derive(Debug)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request has begun on the connection.
    requested: std::sync::atomic::AtomicBool,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            requested: std::sync::atomic::AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether a request has begun on the connection.
    pub(super) fn requested(&self) -> bool {
        self.requested.load(Relaxed)
    }

    /// How long the connection has had no request in flight (zero while it has one).
    pub(super) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Relaxed);
        activity.requested.store(true, Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms.store(a.epoch.elapsed().as_millis() as u64, Relaxed);
        a.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The request bytes a listener may buffer at once, and what one client address may hold of
/// them: half, so that clients stalling their bodies from one address (a pod) cannot take
/// what the API server's requests need.
#[derive(Debug, Clone)]
pub(super) struct Budget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    total: usize,
    /// Bytes held in all, and by each address holding any.
    used: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Bytes held from the budget until dropped.
struct Reserved(Budget, IpAddr, usize);

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut used = self.0.0.used.lock().unwrap_or_else(|e| e.into_inner());
        used.0 -= self.2;
        if let Entry::Occupied(mut e) = used.1.entry(self.1) {
            *e.get_mut() -= self.2;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Budget {
    pub(super) fn new(total: usize) -> Self {
        Budget(Arc::new(BudgetInner {
            total,
            used: Mutex::new((0, HashMap::new())),
        }))
    }

    fn reserve(&self, client: IpAddr, n: usize) -> Option<Reserved> {
        let inner = &self.0;
        let mut used = inner.used.lock().unwrap_or_else(|e| e.into_inner());
        let by_client = used.1.get(&client).copied().unwrap_or(0);
        if used.0 + n > inner.total || by_client + n > inner.total / 2 {
            return None;
        }
        used.0 += n;
        *used.1.entry(client).or_default() += n;
        Some(Reserved(self.clone(), client, n))
    }
}

/// The router behind a connection's limits.
#[derive(Clone)]
pub(super) struct Guarded {
    router: Router,
    limits: Limits,
    budget: Budget,
    metrics: Arc<ServeMetrics>,
    activity: Arc<Activity>,
    peer: SocketAddr,
}

impl Guarded {
    pub(super) fn new(
        router: Router,
        limits: Limits,
        budget: Budget,
        metrics: Arc<ServeMetrics>,
        peer: SocketAddr,
    ) -> Self {
        Guarded {
            router,
            limits,
            budget,
            metrics,
            activity: Arc::new(Activity::new()),
            peer,
        }
    }

    pub(super) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

/// A plain-text refusal; `retry` adds `Retry-After` (seconds).
fn refuse(status: StatusCode, message: String, retry: Option<u64>) -> Response {
    let mut resp = (status, message).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(s) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

impl hyper::service::Service<Request<Incoming>> for Guarded {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(self.activity.clone());
        let limits = self.limits;
        // The declared length, when there is one; a body that declares none is charged the
        // limit, the most it can grow to.
        let declared = req.body().size_hint().exact();
        if let Some(n) = declared
            && n > limits.max_body as u64
        {
            self.metrics.request("too_large").inc();
            let message = format!(
                "request body of {n} bytes exceeds the {} limit\n",
                size(limits.max_body)
            );
            return refuse_unread(
                req,
                limits,
                in_flight,
                refuse(StatusCode::PAYLOAD_TOO_LARGE, message, None),
            );
        }
        let charge = declared.map_or(limits.max_body, |n| n as usize);
        let Some(reserved) = self.budget.reserve(self.peer.ip(), charge) else {
            self.metrics.request("over_budget").inc();
            let message = format!(
                "server busy: {} of request bodies are being received; retry shortly\n",
                size(self.budget.0.total)
            );
            return refuse_unread(
                req,
                limits,
                in_flight,
                refuse(StatusCode::SERVICE_UNAVAILABLE, message, Some(1)),
            );
        };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let router = self.router.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(limits.request, router.oneshot(req.map(Body::new))).await;
            drop(reserved);
            drop(in_flight);
            Ok(match answer {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    metrics.request("timeout").inc();
                    refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "request not completed within {} s (body not received in time, or the answer took too long)\n",
                            limits.request.as_secs_f64()
                        ),
                        None,
                    )
                }
            })
        })
    }
}

/// Answers `resp` to a request whose body is not wanted. An HTTP/1.1 client still writing its
/// body would see the connection close instead of the answer, so what it sends is read and
/// discarded (never buffered) within the request deadline and up to a bound, then answered.
fn refuse_unread(
    req: Request<Incoming>,
    limits: Limits,
    in_flight: InFlight,
    resp: Response,
) -> BoxFuture<'static, Result<Response, Infallible>> {
    let http1 = req.version() < axum::http::Version::HTTP_2;
    Box::pin(async move {
        if http1 {
            let mut body = req.into_body();
            let mut left = 4 * limits.max_body as u64;
            let drain = async {
                while let Some(Ok(frame)) =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
                {
                    left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len() as u64));
                    if left == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(limits.request, drain).await;
        }
        drop(in_flight);
        Ok(resp)
    })
}

/// `n` bytes for a message: `3 MiB`, `64 KiB`.
fn size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_hands_out_more_than_it_has_nor_half_to_one_client() {
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let b = Budget::new(20);
        let a = b.reserve(ip(1), 6).unwrap();
        assert!(b.reserve(ip(1), 5).is_none(), "over half for one client");
        let c = b.reserve(ip(1), 4).unwrap();
        let d = b.reserve(ip(2), 10).unwrap();
        assert!(b.reserve(ip(3), 1).is_none(), "over the total");
        drop(a);
        assert!(b.reserve(ip(3), 6).is_some());
        drop((c, d));
        assert!(b.reserve(ip(1), 11).is_none());
        assert!(
            b.0.used.lock().unwrap().1.is_empty(),
            "released clients are forgotten"
        );
    }

    #[test]
    fn activity_is_idle_only_without_requests_in_flight() {
        let a = Arc::new(Activity::new());
        let r = InFlight::new(a.clone());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(a.idle_for(), Duration::ZERO);
        drop(r);
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.idle_for() >= Duration::from_millis(15));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(3 << 20), "3 MiB");
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
