//! The floor for the load test (`scripts/bench.sh`): the webhook's own TLS and HTTP stack with
//! the admission work taken out.
//!
//! The same accept loop, rustls config (ring, TLS 1.2/1.3, ALPN h2 + http/1.1), hyper-util auto
//! builder settings and axum body extraction as the webhook (`src/http/`, `src/webhook/`); `POST /mutate` reads the
//! body and answers a fixed AdmissionReview. That answer is computed once at start from the
//! typical fixture, so it has exactly the size (and content) of the webhook's real response and
//! the two servers move the same bytes. What the webhook costs above this server is the price
//! of admission itself: JSON decode, lookup, patch, encode, metrics.
//!
//! ```sh
//! cargo run --release --example floor -- --listen 127.0.0.1:9443 --cert-dir /tmp/certs
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use pod_identity_webhook::certs;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{Index, Reader, file, install_crypto_provider, serve_like_the_webhook};
use pod_identity_webhook::webhook::MAX_BODY;
use pod_identity_webhook::webhook::mutation::{DEFAULT_TOKEN_EXPIRATION, Injection, Settings};
use pod_identity_webhook::webhook::wire::Admission;

#[derive(Parser)]
#[command(about = "TLS + HTTP floor for the webhook load test: answers /mutate without admission work")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Directory with tls.crt and tls.key (a localhost pair is generated when both are absent).
    #[arg(long, default_value = "certs")]
    cert_dir: PathBuf,
    /// The AdmissionReview whose webhook answer is served to every request.
    #[arg(
        long,
        default_value = "tests/fixtures/admission/01-pod-single-container-sa-app-apply-dryrun.json"
    )]
    fixture: PathBuf,
    /// Associations used to compute that answer once.
    #[arg(long, default_value = "tests/fixtures/associations.yaml")]
    associations: PathBuf,
}

struct Floor {
    answer: Bytes,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    install_crypto_provider();
    certs::ensure_local(&args.cert_dir)?;

    let text = std::fs::read_to_string(&args.associations)?;
    let profile = Provider::Cce.profile();
    let admission = Admission {
        associations: Reader::fixed(Index::build(file::parse(&args.associations, &text)?)?),
        injection: Injection::new(profile, Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION)),
    };
    let answer = admission.review(&std::fs::read(&args.fixture)?);
    if answer.status != 200 {
        return Err(format!("{}: webhook answered {}", args.fixture.display(), answer.status).into());
    }
    eprintln!(
        "floor: answering every POST /mutate with the {}-byte response to {}",
        answer.body.len(),
        args.fixture.display()
    );
    let state = Arc::new(Floor {
        answer: Bytes::from(answer.body),
    });
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/readyz", get(|| async { "ready\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    // The webhook's runtime (tokio's default multi-thread runtime), TLS stack and accept loop.
    tokio::runtime::Runtime::new()?.block_on(serve_like_the_webhook(args.listen, &args.cert_dir, router))
}

async fn mutate(State(state): State<Arc<Floor>>, body: Bytes) -> Response {
    // The body is read in full (as the webhook does) and then ignored.
    let _ = body.len();
    let mut resp = (StatusCode::OK, state.answer.clone()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
