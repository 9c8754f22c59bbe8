//! rustls configuration with a certificate that is reloaded when its files change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs;
use crate::file_watch::{Fingerprint, Watcher};
use crate::metrics::{InputMetrics, Source};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("private key {path} does not match certificate {cert}: {message}")]
    Mismatch {
        path: PathBuf,
        cert: PathBuf,
        message: String,
    },
    #[error("cannot read the validity of certificate {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error(
        "certificate {path} is not valid now ({now}): it is valid from {not_before} to {not_after}; renew it (`pod-identity-webhook certs`, or the cert-manager Certificate)"
    )]
    OutsideValidity {
        path: PathBuf,
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
        now: jiff::Timestamp,
    },
    #[error("cannot start the certificate watcher: {0}")]
    Watch(std::io::Error),
}

/// A loaded pair and the validity window of its leaf certificate.
#[derive(Debug)]
pub(crate) struct Pair {
    key: CertifiedKey,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
}

impl Pair {
    fn check_valid(&self, path: &Path, now: jiff::Timestamp) -> Result<(), TlsError> {
        if now < self.not_before || now > self.not_after {
            return Err(TlsError::OutsideValidity {
                path: path.into(),
                not_before: self.not_before,
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }
}

/// The validity window of a DER certificate.
fn validity(der: &[u8], path: &Path) -> Result<(jiff::Timestamp, jiff::Timestamp), TlsError> {
    let unreadable = |message: String| TlsError::Unreadable {
        path: path.into(),
        message,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| unreadable(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        jiff::Timestamp::from_second(t.timestamp()).map_err(|e| unreadable(e.to_string()))
    };
    Ok((at(cert.validity().not_before)?, at(cert.validity().not_after)?))
}

/// Installs ring as the process's one crypto provider (idempotent): called once in `main`,
/// and by tests inside a `Once`.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM certificate chain and key, checks that they belong together, and reads the
/// leaf's validity window.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.into(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert.into() });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.into(),
        message: e.to_string(),
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| TlsError::Key {
        path: key.into(),
        message: e.to_string(),
    })?;
    let (not_before, not_after) = validity(&chain[0], cert)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        path: key.into(),
        cert: cert.into(),
        message: e.to_string(),
    })?;
    Ok(Pair {
        key: certified,
        not_before,
        not_after,
    })
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub(crate) struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The serving certificate, kept in sync with its files until dropped.
pub(crate) struct ReloadingCert {
    resolver: Arc<CertResolver>,
    /// `notAfter` of the certificate being served (unix seconds).
    not_after: Arc<AtomicI64>,
    _watcher: Watcher,
}

impl ReloadingCert {
    /// Loads `cert` and `key`, then reloads them on every change. A new pair that does not
    /// load, or whose certificate is not valid now, is logged and counted, and the previous
    /// one keeps serving. A first pair outside its validity is served (there is no other) with
    /// an error in the log, and [`valid_now`](Self::valid_now) says so to readiness.
    pub(crate) fn start(
        cert: PathBuf,
        key: PathBuf,
        metrics: Arc<InputMetrics>,
        interval: Duration,
    ) -> Result<Self, TlsError> {
        let paths = vec![cert.clone(), key.clone()];
        let initial = Fingerprint::of(&paths);
        let first = load_pair(&cert, &key)?;
        if let Err(e) = first.check_valid(&cert, jiff::Timestamp::now()) {
            tracing::error!(error = %e, "SERVING A CERTIFICATE OUTSIDE ITS VALIDITY: clients will refuse every connection until it is replaced");
        }
        let not_after = Arc::new(AtomicI64::new(first.not_after.as_second()));
        metrics.set_tls_not_after(first.not_after.as_second());
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::from_pointee(first.key),
        });
        let (r, n) = (resolver.clone(), not_after.clone());
        let reload = move || {
            let loaded = load_pair(&cert, &key).and_then(|pair| {
                pair.check_valid(&cert, jiff::Timestamp::now())?;
                Ok(pair)
            });
            match loaded {
                Ok(pair) => {
                    r.current.store(Arc::new(pair.key));
                    n.store(pair.not_after.as_second(), Ordering::Relaxed);
                    metrics.set_tls_not_after(pair.not_after.as_second());
                    metrics.reload(Source::Tls, true);
                    tracing::info!(cert = %cert.display(), not_after = %pair.not_after, "serving certificate reloaded");
                }
                Err(e) => {
                    metrics.reload(Source::Tls, false);
                    tracing::error!(error = %e, "new serving certificate refused; the previous one keeps serving");
                }
            }
        };
        let watcher = Watcher::spawn("tls", paths, initial, interval, reload).map_err(TlsError::Watch)?;
        Ok(ReloadingCert {
            resolver,
            not_after,
            _watcher: watcher,
        })
    }

    /// Whether the certificate being served has not expired: for readiness.
    pub(crate) fn valid_now(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let not_after = self.not_after.clone();
        move || jiff::Timestamp::now().as_second() <= not_after.load(Ordering::Relaxed)
    }

    /// [`start`](Self::start) on `dir`'s `tls.crt` and `tls.key`.
    pub(crate) fn in_dir(
        dir: &Path,
        metrics: Arc<InputMetrics>,
        interval: Duration,
    ) -> Result<Self, TlsError> {
        Self::start(
            dir.join(certs::CERT_FILE),
            dir.join(certs::KEY_FILE),
            metrics,
            interval,
        )
    }

    /// An acceptor serving this certificate with [`server_config`].
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(server_config(self.resolver.clone()))
    }
}

/// TLS 1.2 and 1.3, ALPN h2 then http/1.1 (the API server speaks HTTP/2).
pub(crate) fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn loads_a_generated_pair_and_refuses_a_mismatched_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        certs::ensure_local(a.path()).unwrap();
        certs::ensure_local(b.path()).unwrap();
        let cert = a.path().join(certs::CERT_FILE);
        let pair = load_pair(&cert, &a.path().join(certs::KEY_FILE)).unwrap();
        let now = jiff::Timestamp::now();
        assert!(pair.not_before < now && now < pair.not_after);
        pair.check_valid(&cert, now).unwrap();
        let later = pair.not_after + jiff::SignedDuration::from_secs(1);
        let err = pair.check_valid(&cert, later).unwrap_err();
        assert!(err.to_string().contains("is not valid now"), "{err}");
        let err = load_pair(&cert, &b.path().join(certs::KEY_FILE)).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        let err = load_pair(&a.path().join("missing"), &a.path().join(certs::KEY_FILE)).unwrap_err();
        assert!(err.to_string().contains("cannot read certificate"), "{err}");
        std::fs::write(b.path().join("empty.crt"), "").unwrap();
        let err = load_pair(&b.path().join("empty.crt"), &b.path().join(certs::KEY_FILE)).unwrap_err();
        assert!(matches!(err, TlsError::NoCert { .. }), "{err}");
    }
}
