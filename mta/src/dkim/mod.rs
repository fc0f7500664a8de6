//! DKIM signing (RFC 6376; `ed25519-sha256` by RFC 8463) with KumoMTA's
//! API: `kumo.dkim.rsa_sha256_signer{...}`, `kumo.dkim.ed25519_signer{...}`
//! and `msg:dkim_sign(signer)`.
//!
//! mail-auth canonicalizes the message and builds the `DKIM-Signature`;
//! ring, our TLS provider already, does the private-key operation. A
//! signer is cached by its parameters for its `ttl` (300 s by default, as
//! KumoMTA): the policy builds one per message, and reading and parsing the
//! key each time would cost more than an Ed25519 signature. A changed key
//! file is picked up when the entry expires.

mod key;

pub use key::{KeyError, KeySource};

use key::SharedKey;
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use parking_lot::Mutex;
use serde::Deserialize;
use sluice_common::duration;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;

/// The signature algorithm, from the constructor that was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `kumo.dkim.rsa_sha256_signer`
    RsaSha256,
    /// `kumo.dkim.ed25519_signer`
    Ed25519Sha256,
}

impl Algorithm {
    /// The Lua constructor's name, for errors.
    pub fn constructor(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "kumo.dkim.rsa_sha256_signer",
            Algorithm::Ed25519Sha256 => "kumo.dkim.ed25519_signer",
        }
    }
}

/// `Relaxed` (the default) or `Simple`, as KumoMTA spells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Canon {
    /// RFC 6376 §3.4.2 / §3.4.4
    #[default]
    #[serde(alias = "relaxed")]
    Relaxed,
    /// RFC 6376 §3.4.1 / §3.4.3
    #[serde(alias = "simple")]
    Simple,
}

impl From<Canon> for Canonicalization {
    fn from(c: Canon) -> Self {
        match c {
            Canon::Relaxed => Canonicalization::Relaxed,
            Canon::Simple => Canonicalization::Simple,
        }
    }
}

/// A signer's parameters: every key of KumoMTA's signer constructors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerParams {
    /// `d=`
    pub domain: String,
    /// `s=`
    pub selector: String,
    /// The header names to sign (`h=`).
    pub headers: Vec<String>,
    /// RFC 6541 `atps=`
    pub atps: Option<String>,
    /// RFC 6541 `atpsh=`: `sha256` or `sha1`
    pub atpsh: Option<String>,
    /// `i=`
    pub agent_user_identifier: Option<String>,
    /// Seconds from signing to `x=`.
    pub expiration: Option<u64>,
    /// Sign the body length (`l=`).
    #[serde(default)]
    pub body_length: bool,
    /// Ask verifiers for reports (`r=y`).
    #[serde(default)]
    pub reporting: bool,
    /// `c=` header part
    #[serde(default)]
    pub header_canonicalization: Canon,
    /// `c=` body part
    #[serde(default)]
    pub body_canonicalization: Canon,
    /// Where the private key is.
    pub key: KeySource,
    /// How long the signer (and its parsed key) is reused.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub ttl: Option<Duration>,
    /// List each header once more than the message has it, so no instance
    /// can be added after signing.
    #[serde(default)]
    pub over_sign: bool,
}

/// Why a signer could not be made or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key could not be read or parsed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A parameter is out of range.
    #[error("{0}")]
    Param(String),
    /// mail-auth or ring failed to sign.
    #[error("signing for {domain} (selector {selector}): {message}")]
    Sign {
        /// `d=`
        domain: String,
        /// `s=`
        selector: String,
        /// what failed
        message: String,
    },
}

/// A ready signer: parameters checked and key parsed.
#[derive(Debug)]
pub struct Signer {
    params: SignerParams,
    atpsh: Option<HashAlgorithm>,
    key: SharedKey,
}

/// The default `ttl` of a cached signer, as KumoMTA's.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most (KumoMTA's `dkim_signer_cache` default).
const CACHE_CAPACITY: usize = 1024;

type CacheKey = (Algorithm, SignerParams);
/// Each signer with the instant its entry expires.
type Cache = HashMap<CacheKey, (Instant, Arc<Signer>)>;
static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Default::default);

impl Signer {
    /// The cached signer for these parameters, or a new one.
    pub fn get(alg: Algorithm, params: SignerParams) -> Result<Arc<Signer>, DkimError> {
        let now = Instant::now();
        let cache_key = (alg, params);
        if let Some((expires, signer)) = CACHE.lock().get(&cache_key)
            && *expires > now
        {
            return Ok(signer.clone());
        }
        let (alg, params) = cache_key;
        let ttl = params.ttl.unwrap_or(DEFAULT_TTL);
        let signer = Arc::new(Signer::new(alg, params.clone())?);
        let mut cache = CACHE.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() >= CACHE_CAPACITY
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (e, _))| *e)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert((alg, params), (now + ttl, signer.clone()));
        Ok(signer)
    }

    /// Check the parameters and load the key.
    pub fn new(alg: Algorithm, params: SignerParams) -> Result<Signer, DkimError> {
        let what = alg.constructor();
        if params.headers.is_empty() {
            return Err(DkimError::Param(format!("{what}: headers is empty")));
        }
        if !params
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("from"))
        {
            // RFC 6376 §5.4: "The From header field MUST be signed"
            return Err(DkimError::Param(format!(
                "{what}: headers must include From (RFC 6376 §5.4)"
            )));
        }
        if params.domain.is_empty() || params.selector.is_empty() {
            return Err(DkimError::Param(format!(
                "{what}: domain and selector must not be empty"
            )));
        }
        let atpsh = match params.atpsh.as_deref() {
            None => None,
            Some(name) => Some(HashAlgorithm::parse(name).ok_or_else(|| {
                DkimError::Param(format!("{what}: atpsh {name:?} is not sha256 or sha1"))
            })?),
        };
        let key = SharedKey::load(alg, &params.key)?;
        Ok(Signer { params, atpsh, key })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.params.domain
    }

    /// The `DKIM-Signature` header field for `message` (its whole header
    /// block and body, as it will be sent), ending in CRLF.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let p = &self.params;
        let headers = if p.over_sign {
            over_signed(&p.headers, message)
        } else {
            p.headers.clone()
        };
        let mut signer = DkimSigner::from_key(self.key.clone())
            .domain(p.domain.as_str())
            .selector(p.selector.as_str())
            .headers(headers)
            .header_canonicalization(p.header_canonicalization.into())
            .body_canonicalization(p.body_canonicalization.into())
            .body_length(p.body_length)
            .reporting(p.reporting);
        if let Some(atps) = &p.atps {
            signer = signer.atps(atps.as_str());
        }
        if let Some(atpsh) = self.atpsh {
            signer = signer.atpsh(atpsh);
        }
        if let Some(auid) = &p.agent_user_identifier {
            signer = signer.agent_user_identifier(auid.as_str());
        }
        if let Some(secs) = p.expiration {
            signer = signer.expiration(secs);
        }
        let signature = signer.sign(message).map_err(|e| DkimError::Sign {
            domain: p.domain.clone(),
            selector: p.selector.clone(),
            message: e.to_string(),
        })?;
        Ok(signature.to_header().into_bytes())
    }
}

/// KumoMTA's `over_sign`: each listed header as many times as the message
/// has it, plus one. mail-auth signs every instance of a name it is given
/// and appends a name it cannot find as an empty instance, so a name the
/// message has is given twice (all instances, then one empty) and a name
/// it lacks once.
fn over_signed(names: &[String], message: &[u8]) -> Vec<String> {
    let block = &message[..crate::message::headers::header_block_len(message)];
    let present = |name: &str| {
        block.split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()..].trim_ascii_start().starts_with(b":")
        })
    };
    let mut out = Vec::with_capacity(names.len() * 2);
    for name in names {
        out.push(name.clone());
        if present(name) {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
