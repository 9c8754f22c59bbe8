//! One way to serve, for all three programs: a bound listener (plain HTTP or TLS with a
//! reloading certificate), hyper's HTTP/1.1 and HTTP/2 with timers, health and readiness, the
//! metrics endpoint, JSON error bodies, and a graceful shutdown with a deadline.
//!
//! Every listener is bounded ([`Limits`]): a deadline for the TLS handshake, the request
//! headers, the whole request (body and handler) and an idle connection; a cap on connections
//! and on HTTP/2 streams per connection; a body limit; and a budget for the request bytes
//! buffered at once across all connections. A client that breaks one gets a clear status and
//! message where HTTP still allows one, and is cut off where it does not.

mod args;
mod guard;
pub(crate) mod health;
pub(crate) mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub(crate) use args::LimitArgs;
pub use guard::ServeMetrics;
use guard::{Activity, Budget, Guarded};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The bounds of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the TLS handshake (and the first byte of a plain connection).
    pub handshake: Duration,
    /// For the request headers (HTTP/1.1; HTTP/2 headers arrive within the request deadline).
    pub header_read: Duration,
    /// For the whole request: its body and the handler's answer. Beyond it: 408.
    pub request: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
    /// For in-flight requests once shutdown starts; then the server returns anyway.
    pub shutdown: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one client address (a pod, a node, an API server), so
    /// that one client holds at most its share of `max_connections`; more from that address
    /// are closed as they arrive, others are still accepted.
    pub max_connections_per_client: usize,
    /// HTTP/2 streams in flight per connection.
    pub max_streams: u32,
    /// Largest request body. Beyond it: 413.
    pub max_body: usize,
    /// Request body bytes buffered at once across all connections (a request is charged its
    /// declared length, or `max_body` when it declares none). Beyond it: 503.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            shutdown: Duration::from_secs(25),
            max_connections: 1024,
            max_connections_per_client: 256,
            max_streams: 128,
            max_body: 64 * 1024,
            body_budget: 16 * 1024 * 1024,
        }
    }
}

/// A bound listener: plain HTTP, or HTTPS when it has an acceptor.
pub(crate) struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Listener {
    pub(crate) async fn bind(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Result<Self, BindError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        Ok(Listener { tcp, tls })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        // A bound socket always has an address; the fallback is never taken.
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Serves `router` on `listener` (h2 and http/1.1) within `limits` until `shutdown`
/// completes; then calls `on_drain`, stops accepting, asks every connection to finish its
/// requests, and returns when they have or the shutdown deadline has passed.
pub(crate) async fn serve(
    listener: Listener,
    router: Router,
    limits: Limits,
    metrics: Arc<ServeMetrics>,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let Listener { tcp, tls } = listener;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(limits.max_streams);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = PerClient::default();
    let budget = Budget::new(limits.body_budget);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: at the connection cap");
            drop(stream);
            continue;
        };
        let Some(client_slot) = clients.take(peer.ip(), limits.max_connections_per_client) else {
            metrics.client_refused();
            tracing::debug!(%peer, max = limits.max_connections_per_client, "connection refused: this client address holds its share of connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: builder.clone(),
            service: Guarded::new(router.clone(), limits, budget.clone(), metrics.clone(), peer),
            limits,
            stopping: stopping.clone(),
            metrics: metrics.clone(),
        };
        let tls = tls.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _slot = (slot, client_slot);
            let _open = metrics.open();
            match tls {
                Some(acceptor) => {
                    if let Some(tls) = accept_tls(stream, peer, &acceptor, limits.handshake).await {
                        conn.run(tls).await;
                    }
                }
                None => conn.run(stream).await,
            }
        });
    }
    on_drain();
    drop(tcp);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout(limits.shutdown, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!(timeout = ?limits.shutdown, open = connections.len(), "shutdown deadline reached; closing the connections still open");
            connections.abort_all();
        }
    }
}

/// Connections open by client address.
#[derive(Clone, Default)]
struct PerClient(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One connection of a client address, given back when dropped.
struct ClientSlot(PerClient, IpAddr);

impl PerClient {
    /// A slot for one more connection from `ip`, unless it holds `max` already. An IPv4
    /// address mapped into IPv6 counts as itself.
    fn take(&self, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// One accepted connection and what bounds it.
struct Conn {
    builder: auto::Builder<TokioExecutor>,
    service: Guarded,
    limits: Limits,
    stopping: watch::Receiver<bool>,
    metrics: Arc<ServeMetrics>,
}

impl Conn {
    /// Serves requests until the client leaves, the connection idles past its limit, or the
    /// server shuts down. A connection asked to close that does not (an HTTP/2 client that
    /// never sent its preface, say) is dropped after a short grace.
    async fn run<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut self, io: IO) {
        let activity: Arc<Activity> = self.service.activity();
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), self.service)
            .into_owned();
        tokio::pin!(conn);
        // A connection that sends no request (h1 headers, or an h2 preface and its first
        // stream) within the header deadline is closed: otherwise it holds a connection slot
        // for the idle deadline, and enough of them shut every other client out.
        let opened = tokio::time::Instant::now();
        let tick = self
            .limits
            .idle
            .min(self.limits.header_read)
            .min(Duration::from_secs(1));
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = self.stopping.changed(), if closing.is_none() => {
                    // An error means the server is gone: stop as well.
                    let _ = changed;
                    conn.as_mut().graceful_shutdown();
                    // The serve loop's own deadline bounds a drain on shutdown.
                    closing = Some(tokio::time::Instant::now() + self.limits.shutdown);
                }
                () = tokio::time::sleep(tick) => match closing {
                    Some(deadline) if tokio::time::Instant::now() >= deadline => {
                        self.metrics.idle_closed();
                        return;
                    }
                    Some(_) => {}
                    None if !activity.requested() && opened.elapsed() >= self.limits.header_read => {
                        // Nothing to finish: no request was ever made.
                        tracing::debug!(timeout = ?self.limits.header_read, "no request within the header deadline; closing");
                        self.metrics.silent_closed();
                        return;
                    }
                    None if activity.idle_for() >= self.limits.idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + GRACE);
                    }
                    None => {}
                },
            }
        }
    }
}

/// How long a connection asked to close may take before it is dropped.
const GRACE: Duration = Duration::from_secs(1);

/// Completes the TLS handshake, answering a plain-HTTP request on the TLS port with a
/// readable error instead of a TLS alert the client cannot show.
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        _ => return None,
    }
    // Every TLS connection starts with a handshake record (content type 22).
    if first[0] != 0x16 {
        tracing::debug!(%peer, "plain-text request on the TLS port");
        let mut stream = stream;
        let _ = tokio::time::timeout_at(
            deadline,
            stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 62\r\n\r\nThis port speaks HTTPS only: client sent a plain HTTP request\n",
            ),
        )
        .await;
        let _ = stream.shutdown().await;
        return None;
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A shutdown signal several listeners wait on.
#[derive(Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal that fires when `trigger` completes.
    pub(crate) fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    pub(crate) async fn wait(mut self) {
        // An error means the sender is gone, which only happens after it fired.
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// A JSON body with `status`: every error a program answers goes through here.
pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Completes on SIGTERM or SIGINT: what stops every program.
pub(crate) async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
