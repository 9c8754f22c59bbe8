//! Pod identity for Kubernetes: three programs over one shared base, in one binary.
//!
//! - [`webhook`] (`serve`, `mutate`): the mutating admission webhook that gives pods a projected
//!   service-account token and the env vars pointing cloud SDKs at a credential endpoint.
//! - [`agent`] (`agent`): that credential endpoint on every node.
//! - [`exchange`] (`exchange`): the cloud's pod identity API served by the cluster itself.
//!
//! They stand on a shared base (serving, the cloud contracts, profiles, associations) and never
//! import each other; `docs/design.md` has the module map, and `tests/it/layout.rs` holds the
//! import rules.
#![warn(unreachable_pub)]

pub mod agent;
pub(crate) mod args;
pub(crate) mod association;
pub mod certs;
pub mod cli;
pub(crate) mod cloud;
pub mod error;
pub mod exchange;
pub(crate) mod expiring;
pub(crate) mod file_watch;
pub(crate) mod http;
pub(crate) mod issuer;
pub(crate) mod kube_client;
pub(crate) mod log_throttle;
pub(crate) mod metrics;
pub mod profile;
pub(crate) mod rate_limit;
pub mod webhook;

/// The arguments of `migrate-associations`, a tool over the associations.
pub use association::migrate::Args as MigrateArgs;

/// The `PodIdentityAssociation` CustomResourceDefinition as YAML (`crd`).
pub fn crd_yaml() -> String {
    association::crd::yaml()
}

/// What the integration tests, benchmarks and fuzz targets reach into. Not an API.
#[doc(hidden)]
pub mod testing {
    pub use crate::association::crd::{
        PodIdentityAssociation, PodIdentityAssociationSpec, legacy, to_association,
    };
    pub use crate::association::file::{self, FileError};
    pub use crate::association::source::AssociationSource;
    pub use crate::association::{Association, AssociationSpec, Index, Reader, Writer, crd, store};
    pub use crate::cloud::auth::{CloudAuth, TokenFile};
    pub use crate::cloud::client::http_client;
    pub use crate::cloud::signer::{self, AccessKey};
    pub use crate::cloud::{Credentials, UpstreamError};
    pub use crate::http::tls::install_crypto_provider;
    pub use crate::http::{Limits, ServeMetrics};
    pub use crate::issuer::{IssuerKeys, IssuerMetrics, KEY_READ_INTERVAL, Unverified, Verdict};
    pub use crate::metrics::{InputMetrics, Source};

    /// The `PodIdentityAssociation`s `client` reaches, followed into a [`Reader`] as the
    /// programs follow them, until the returned guard is dropped.
    pub fn watch_associations(client: kube::Client) -> (Reader, Box<dyn std::any::Any + Send>) {
        let (reader, writer) = store();
        let source =
            crate::association::kubernetes::KubeSource::start(client, writer, Default::default(), None);
        (reader, Box::new(source))
    }

    /// Serves `router` exactly as the webhook serves `/mutate`: its reloading certificate from
    /// `cert_dir`, its accept loop and limits. The load test's floor runs on this.
    pub async fn serve_like_the_webhook(
        listen: std::net::SocketAddr,
        cert_dir: &std::path::Path,
        router: axum::Router,
    ) -> Result<(), Box<dyn std::error::Error>> {
        use crate::http::{Limits, Listener, serve, tls::ReloadingCert};
        let cert = ReloadingCert::in_dir(cert_dir, Default::default(), std::time::Duration::from_secs(2))?;
        let listener = Listener::bind(listen, Some(cert.acceptor())).await?;
        eprintln!("listening on https://{}", listener.local_addr());
        let limits = Limits {
            max_body: crate::webhook::MAX_BODY,
            ..Limits::default()
        };
        serve(
            listener,
            router,
            limits,
            Default::default(),
            std::future::pending(),
            || {},
        )
        .await;
        Ok(())
    }
}
