//! STARTTLS certificates. Configured files are followed: a certificate
//! rotated on disk (cert-manager renewing a mounted Secret, which the
//! kubelet swaps in atomically) is served to new sessions within
//! [`RECHECK`], without a restart; sessions already in TLS keep theirs. A
//! half-written or mismatched pair is not taken: the old one stays, and
//! the reason is logged once. Without files, a self-signed certificate for
//! the host name is made at start.

use crate::config::listener::EsmtpListenerConfig;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;

/// How often a handshake may look at the files again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Why a listener's TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls_certificate` cannot be read as PEM certificates.
    #[error("tls_certificate {}: {source}", path.display())]
    Certificate {
        /// The configured file.
        path: std::path::PathBuf,
        /// What the PEM reader said.
        source: rustls::pki_types::pem::Error,
    },
    /// `tls_private_key` cannot be read as a PEM private key.
    #[error("tls_private_key {}: {source}", path.display())]
    PrivateKey {
        /// The configured file.
        path: std::path::PathBuf,
        /// What the PEM reader said.
        source: rustls::pki_types::pem::Error,
    },
    /// Only one of the two files is configured.
    #[error("tls_certificate and tls_private_key must be set together")]
    HalfConfigured,
    /// The self-signed certificate cannot be made.
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.to_path_buf(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::PrivateKey {
        path: key.to_path_buf(),
        source,
    })?;
    Ok((certs, key))
}

fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider)?))
}

/// The certificate files' bytes, to tell a rotation from an unchanged
/// pair whatever their mtimes say.
fn contents(cert: &Path, key: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
}

/// A certificate that follows its files.
#[derive(Debug)]
struct Reloading {
    files: Option<(PathBuf, PathBuf)>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The file contents `current` (or the last refused pair) came from.
    seen: Option<(Vec<u8>, Vec<u8>)>,
    checked: Instant,
}

impl Reloading {
    /// Take the files' new pair if they changed and it is good.
    fn refresh(&self, state: &mut State) {
        let Some((cert, key)) = &self.files else {
            return;
        };
        state.checked = Instant::now();
        let now = contents(cert, key);
        if now.is_none() || now == state.seen {
            return;
        }
        state.seen = now;
        match read_pair(cert, key).and_then(|(c, k)| certified(c, k)) {
            Ok(new) => {
                state.current = new;
                tracing::info!(certificate = %cert.display(), "STARTTLS certificate reloaded");
            }
            Err(e) => tracing::warn!(
                certificate = %cert.display(),
                "changed STARTTLS certificate not taken, the previous one stays: {e}"
            ),
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK {
            self.refresh(&mut state);
        }
        Some(state.current.clone())
    }
}

/// The acceptor for a listener config: its files (followed), or a
/// self-signed certificate for `hostname`.
pub fn load_tls(config: &EsmtpListenerConfig, hostname: &str) -> Result<TlsAcceptor, TlsError> {
    let (files, current, seen) = match (&config.tls_certificate, &config.tls_private_key) {
        (Some(cert), Some(key)) => {
            let seen = contents(cert, key);
            let (certs, k) = read_pair(cert, key)?;
            (
                Some((cert.clone(), key.clone())),
                certified(certs, k)?,
                seen,
            )
        }
        (None, None) => {
            let cert = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
            let key = PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
                cert.signing_key.serialize_der(),
            ));
            (None, certified(vec![cert.cert.der().clone()], key)?, None)
        }
        _ => return Err(TlsError::HalfConfigured),
    };
    let resolver = Reloading {
        files,
        state: Mutex::new(State {
            current,
            seen,
            checked: Instant::now(),
        }),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(server)))
}
