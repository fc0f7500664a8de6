//! KumoMTA's KeySource: where a secret (a DKIM key, an SMTP AUTH password,
//! a certificate) comes from. Shared by the MTA's signers and egress paths.

use serde::{Deserialize, Serialize, Serializer};
use std::path::PathBuf;

/// A string is a file to read (a mounted Secret, in Kubernetes),
/// `{ key_data = '...' }` the secret itself.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum KeySource {
    /// A file holding the secret.
    File(PathBuf),
    /// The secret given by the policy.
    Data {
        /// The secret's bytes (PEM, a password, ...)
        key_data: String,
    },
    /// HashiCorp Vault, which Sluice does not reach: refused by name.
    Vault {
        /// Vault's secrets engine mount
        vault_mount: String,
        /// the secret's path
        vault_path: String,
    },
}

/// Why a KeySource gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    /// The file cannot be read.
    #[error("key file {}: {source}", path.display())]
    Read {
        /// The file named.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// A Vault source.
    #[error(
        "vault key {0}: HashiCorp Vault is not supported: mount the secret from a Secret and give its path"
    )]
    Vault(String),
}

/// Shown and serialised without the secret: a config dump or an admin API
/// answer must not carry `key_data`.
impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_string().serialize(s)
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySource({self})")
    }
}

/// A secret from a file (a mounted Secret): its text, the trailing newline
/// (of `echo` or `--from-file`) dropped.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

impl KeySource {
    /// A password's text, read now: a file's as [`read_secret_file`] reads
    /// it, `key_data` as given.
    pub fn read_secret(&self) -> Result<String, KeySourceError> {
        match self {
            KeySource::File(path) => {
                read_secret_file(path).map_err(|source| KeySourceError::Read {
                    path: path.clone(),
                    source,
                })
            }
            KeySource::Data { key_data } => Ok(key_data.clone()),
            KeySource::Vault { vault_path, .. } => Err(KeySourceError::Vault(vault_path.clone())),
        }
    }

    /// The secret's bytes, read now.
    pub fn read(&self) -> Result<Vec<u8>, KeySourceError> {
        match self {
            KeySource::File(path) => std::fs::read(path).map_err(|source| KeySourceError::Read {
                path: path.clone(),
                source,
            }),
            KeySource::Data { key_data } => Ok(key_data.as_bytes().to_vec()),
            KeySource::Vault { vault_path, .. } => Err(KeySourceError::Vault(vault_path.clone())),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Data { .. } => f.write_str("key_data"),
            KeySource::Vault { vault_path, .. } => write!(f, "vault key {vault_path}"),
        }
    }
}
