//! Signing keys: where they come from (KumoMTA's KeySource) and how they
//! are parsed.

use super::Algorithm;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, HashOutput, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

pub use sluice_common::key_source::KeySource;

/// A key that could not be had, naming where it was looked for.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source_name}: {message}")]
pub struct KeyError {
    what: &'static str,
    source_name: String,
    message: String,
}

/// A parsed key, shared by every signature the signer makes.
#[derive(Clone)]
pub struct SharedKey(Arc<DkimKey>);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey")
    }
}

impl SharedKey {
    /// Read and parse the key `source` names for `alg`.
    pub fn load(alg: Algorithm, source: &KeySource) -> Result<SharedKey, KeyError> {
        let fail = |message: String| KeyError {
            what: alg.constructor(),
            source_name: source.to_string(),
            message,
        };
        let data = match source {
            KeySource::File(path) => std::fs::read(path).map_err(|e| fail(e.to_string()))?,
            KeySource::Data { key_data } => key_data.as_bytes().to_vec(),
            KeySource::Vault { .. } => {
                return Err(fail(
                    "HashiCorp Vault is not supported: mount the key from a Secret and give its path"
                        .into(),
                ));
            }
        };
        let key = match alg {
            Algorithm::RsaSha256 => {
                let der = PrivateKeyDer::from_pem_slice(&data)
                    .map_err(|e| fail(format!("not an RSA PEM private key ({e})")))?;
                DkimKey::Rsa(RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
                    fail(format!(
                        "not a usable RSA key ({e}; ring signs with 2048 to 8192-bit keys)"
                    ))
                })?)
            }
            Algorithm::Ed25519Sha256 => {
                // PKCS#8, PEM or DER; v1 (private key only, as `openssl
                // genpkey` writes) or v2 (with the public key)
                let der = if data.starts_with(b"-----BEGIN") {
                    PrivatePkcs8KeyDer::from_pem_slice(&data)
                        .map_err(|e| fail(format!("not a PKCS#8 PEM private key ({e})")))?
                        .secret_pkcs8_der()
                        .to_vec()
                } else {
                    data
                };
                DkimKey::Ed25519(
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(&der)
                        .map_err(|e| fail(format!("not a PKCS#8 Ed25519 key ({e})")))?,
                )
            }
        };
        Ok(SharedKey(Arc::new(key)))
    }
}

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn hash(&self, data: impl Writable) -> HashOutput {
        self.0.hash(data)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}
