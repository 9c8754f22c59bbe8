//! One way to serve, for all three programs: a bound listener (plain HTTP or TLS with a
//! reloading certificate), hyper's HTTP/1.1 and HTTP/2 with timers, health and readiness, the
//! metrics endpoint, JSON error bodies, and a graceful shutdown with a deadline.

pub(crate) mod health;
pub(crate) mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Deadlines of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the TLS handshake and the request headers.
    pub header_read: Duration,
    /// For in-flight requests once shutdown starts; then the server returns anyway.
    pub shutdown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            shutdown: Duration::from_secs(25),
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

/// Serves `router` on `listener` (h2 and http/1.1) until `shutdown` completes; then calls
/// `on_drain`, stops accepting, and lets in-flight requests finish within the shutdown limit.
pub(crate) async fn serve(
    listener: Listener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let Listener { tcp, tls } = listener;
    let service = TowerToHyperService::new(router);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            async fn run<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
                io: IO,
                builder: &auto::Builder<TokioExecutor>,
                service: TowerToHyperService<Router>,
                watcher: hyper_util::server::graceful::Watcher,
                peer: SocketAddr,
            ) {
                let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            match tls {
                Some(acceptor) => {
                    if let Some(tls) = accept_tls(stream, peer, &acceptor, limits.header_read).await {
                        run(tls, &builder, service, watcher, peer).await;
                    }
                }
                None => run(stream, &builder, service, watcher, peer).await,
            }
        });
    }
    on_drain();
    drop(tcp);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.shutdown) => {
            tracing::warn!(timeout = ?limits.shutdown, "shutdown timeout reached with requests still in flight");
        }
    }
}

/// Completes the TLS handshake, answering a plain-HTTP request on the TLS port with a
/// readable error instead of a TLS alert the client cannot show.
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        _ => return None,
    }
    // Every TLS connection starts with a handshake record (content type 22).
    if first[0] != 0x16 {
        tracing::debug!(%peer, "plain-text request on the TLS port");
        let mut stream = stream;
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 62\r\n\r\nThis port speaks HTTPS only: client sent a plain HTTP request\n",
            )
            .await;
        let _ = stream.shutdown().await;
        return None;
    }
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
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
pub(crate) struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal that fires when `trigger` completes.
    pub(crate) fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
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
