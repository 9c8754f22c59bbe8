//! The webhook's HTTPS server: routes, TLS accept loop, readiness and graceful shutdown.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::association::Store;
use crate::association::file::FileError;
pub use crate::association::source::AssociationSource;
use crate::association::source::{self, RunningSource};
use crate::certs::{self, CertError};
use crate::metrics::Metrics;
use crate::mutation::Injection;
use tls::{ReloadingCert, TlsError};

/// Largest accepted request body: the API server never sends more (objects are capped by
/// etcd well below this), and it bounds what a misbehaving client can make us buffer.
pub const MAX_BODY: usize = 7 * 1024 * 1024;

/// How the webhook server is set up.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Holds `tls.crt` and `tls.key`; a localhost pair is generated there when both are absent.
    pub cert_dir: PathBuf,
    /// Where associations come from.
    pub source: AssociationSource,
    pub injection: Injection,
    /// How often certificate and association files are checked for changes.
    pub reload_interval: Duration,
    /// A client must send its request headers (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before the server exits anyway.
    pub shutdown_timeout: Duration,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, cert_dir: PathBuf, injection: Injection) -> Self {
        ServeConfig {
            listen,
            cert_dir,
            source: AssociationSource::None,
            injection,
            reload_interval: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Associations(#[from] FileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    pub tls_loaded: AtomicBool,
    pub associations_synced: Arc<AtomicBool>,
    pub draining: AtomicBool,
}

impl Readiness {
    fn problems(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.tls_loaded.load(Ordering::Relaxed) {
            out.push("TLS material not loaded");
        }
        if !self.associations_synced.load(Ordering::Relaxed) {
            out.push("associations not synced");
        }
        if self.draining.load(Ordering::Relaxed) {
            out.push("shutting down");
        }
        out
    }
}

/// Shared by every request.
pub struct AppState {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// A bound, loaded server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    config: ServeConfig,
    _cert: ReloadingCert,
    _source: RunningSource,
}

impl Server {
    /// Loads certificates and associations and binds the listener. Everything that can be
    /// wrong with the configuration fails here, before any request is accepted.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::default());
        let readiness = Arc::new(Readiness::default());
        if certs::ensure_local(&config.cert_dir)? {
            tracing::warn!(
                dir = %config.cert_dir.display(),
                "no tls.crt/tls.key found: generated a CA and a localhost serving certificate (ca.crt is the CA to trust)"
            );
        }
        let cert = ReloadingCert::in_dir(&config.cert_dir, metrics.clone(), config.reload_interval)?;
        readiness.tls_loaded.store(true, Ordering::Relaxed);
        let store = Arc::new(Store::default());
        let source = source::start(
            &config.source,
            store.clone(),
            metrics.clone(),
            readiness.associations_synced.clone(),
            config.reload_interval,
        )?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let state = Arc::new(AppState {
            admission: Admission {
                store,
                injection: config.injection.clone(),
            },
            metrics,
            readiness,
        });
        Ok(Server {
            listener,
            acceptor: cert.acceptor(),
            state,
            config,
            _cert: cert,
            _source: source,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, reports not-ready, lets
    /// in-flight requests finish (up to the shutdown timeout) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            acceptor,
            state,
            config,
            _cert,
            _source,
        } = self;
        tracing::info!(addr = %listener.local_addr().unwrap_or(config.listen), "webhook listening (https; h2, http/1.1)");
        let readiness = state.readiness.clone();
        let timeouts = Timeouts {
            header_read: config.header_read_timeout,
            shutdown: config.shutdown_timeout,
        };
        serve_https(listener, acceptor, router(state), timeouts, shutdown, move || {
            readiness.draining.store(true, Ordering::Relaxed);
        })
        .await;
    }
}

/// Connection timeouts of an HTTPS server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the TLS handshake and the request headers.
    pub header_read: Duration,
    /// For in-flight requests once shutdown starts.
    pub shutdown: Duration,
}

/// Serves `router` over TLS (h2 and http/1.1) until `shutdown` completes; then calls
/// `on_drain`, stops accepting, and lets in-flight requests finish within the timeout.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let service = TowerToHyperService::new(router);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
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
            accepted = listener.accept() => match accepted {
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
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(tls) = accept_tls(stream, peer, &acceptor, timeouts.header_read).await else {
                return;
            };
            let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    on_drain();
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(timeouts.shutdown) => {
            tracing::warn!(timeout = ?timeouts.shutdown, "shutdown timeout reached with requests still in flight");
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

/// The webhook's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the webhook serves POST /mutate, GET /healthz, /readyz and /metrics\n",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn mutate(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let start = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            state
                .metrics
                .admission(crate::metrics::Outcome::Invalid, start.elapsed());
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body exceeds the {} MiB limit\n", MAX_BODY >> 20)
            } else {
                format!("cannot read the request body: {}\n", rejection.body_text())
            };
            return (status, message).into_response();
        }
    };
    let answer = state.admission.review(&body);
    state.metrics.admission(answer.outcome, start.elapsed());
    let (status, content_type) = if answer.status == 200 {
        (StatusCode::OK, "application/json")
    } else {
        (StatusCode::BAD_REQUEST, "text/plain; charset=utf-8")
    };
    let mut resp = (status, answer.body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let problems = state.readiness.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
