//! The SMTP client's TLS: which certificates it trusts (Mozilla's roots and
//! `$SSL_CERT_FILE`'s, or any with an `*Insecure` `enable_tls`) and which
//! cipher suites it offers (`rustls_cipher_suites`).

use super::client::ClientError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::{Arc, LazyLock};

/// The roots a verified session trusts: Mozilla's (webpki-roots), plus the
/// PEM certificates in `$SSL_CERT_FILE` when it is set — OpenSSL's
/// convention, for a private CA (a cluster's, or a test's). Read once.
static ROOTS: LazyLock<Arc<rustls::RootCertStore>> = LazyLock::new(|| {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        let certs =
            CertificateDer::pem_file_iter(&file).and_then(|it| it.collect::<Result<Vec<_>, _>>());
        match certs {
            Ok(certs) => {
                let (added, _) = roots.add_parsable_certificates(certs);
                tracing::info!(file = ?file, added, "trusting SSL_CERT_FILE's certificates");
            }
            Err(e) => tracing::warn!(file = ?file, "SSL_CERT_FILE unreadable, ignored: {e}"),
        }
    }
    Arc::new(roots)
});

/// The client's TLS config: webpki roots, or any certificate when
/// `insecure`; only the named cipher suites when `suites` is not empty.
pub fn client_config(
    insecure: bool,
    suites: &[String],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&format!("{:?}", s.suite())));
        if provider.cipher_suites.is_empty() {
            return Err(ClientError::Tls(format!(
                "none of rustls_cipher_suites {suites:?} is known; known: {}",
                crate::smtp::cipher_suite_names().join(", ")
            )));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("rustls_cipher_suites: {e}")))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAnyCert))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(ROOTS.clone())
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

mod insecure {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// For `*Insecure` TLS modes: encrypt, but accept any certificate.
    #[derive(Debug)]
    pub struct AcceptAnyCert;

    impl ServerCertVerifier for AcceptAnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
