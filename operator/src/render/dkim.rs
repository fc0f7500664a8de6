//! DkimSigner objects: each spec checked and turned into the signer
//! parameters the generated policy hands `kumo.dkim.*_signer`, and the key
//! in its Secret (when the operator could read it) checked against the
//! algorithm and turned into the DNS record to publish.
//!
//! A key problem does not leave the signer out of the config: mail from
//! its domains would then go out unsigned. The MTA refuses that mail with
//! a 4xx naming the key file until the key is usable, and the status says
//! why.

use super::{ObjectKey, Rejection};
use crate::crd::{DOMAIN_PATTERN, DkimAlgorithm, DkimSigner, SELECTOR_PATTERN};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use sluice_common::duration::parse_duration;
use std::collections::BTreeMap;

/// KumoMTA's `dkim_sign` helper signs these when none are listed.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "MIME-Version",
    "Content-Type",
    "Sender",
];

/// A Secret as the controller found it.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretState {
    /// Its data, key => bytes.
    Data(BTreeMap<String, Vec<u8>>),
    /// There is no such Secret.
    NotFound,
    /// It is not mounted into the MTA pods (not in the chart's `mta.secrets`).
    NotMounted,
    /// Reading it failed (e.g. RBAC).
    Unreadable(String),
}

/// What the status says of a signer besides its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct SignerStatus {
    /// Algorithm and domains, e.g. `rsa-sha256 for example.com`.
    pub signing: String,
    /// `<selector>._domainkey.<domain>` for each domain signed as.
    pub dns_names: Vec<String>,
    /// The key check: `Ok(Some(record))` when the key was read and fits,
    /// `Ok(None)` when it was not read (no Secret access, as in `render`).
    pub key: Result<Option<String>, Rejection>,
}

fn rejection(reason: &'static str, field: &str, message: impl std::fmt::Display) -> Rejection {
    Rejection {
        reason,
        message: format!("{field}: {message}"),
    }
}

fn full_match(pattern: &str, value: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|re| re.is_match(value))
}

/// The signer's entry in the generated policy, or why the spec is rejected.
pub fn signer_entry(
    object: &DkimSigner,
    key: &ObjectKey,
    secrets_dir: &str,
) -> Result<Value, Rejection> {
    let spec = &object.spec;
    if spec.domains.is_empty() {
        return Err(rejection(
            "InvalidDomain",
            "spec.domains",
            "needs at least one domain",
        ));
    }
    for (i, d) in spec.domains.iter().enumerate() {
        if !full_match(DOMAIN_PATTERN, d) {
            return Err(rejection(
                "InvalidDomain",
                &format!("spec.domains[{i}]"),
                format!("{d:?} is not a domain name, or *. and one"),
            ));
        }
    }
    if !full_match(SELECTOR_PATTERN, &spec.selector) {
        return Err(rejection(
            "InvalidSelector",
            "spec.selector",
            format!("{:?} is not DNS labels separated by dots", spec.selector),
        ));
    }
    if let Some(d) = &spec.signing_domain
        && (d.starts_with('*') || !full_match(DOMAIN_PATTERN, d))
    {
        return Err(rejection(
            "InvalidDomain",
            "spec.signingDomain",
            format!("{d:?} is not a domain name"),
        ));
    }
    let headers: Vec<String> = if spec.headers.is_empty() {
        DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
    } else {
        spec.headers.clone()
    };
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err(rejection(
            "InvalidHeaders",
            "spec.headers",
            "must include From (RFC 6376 §5.4)",
        ));
    }
    let r = &spec.key_secret_ref;
    if r.name.is_empty() || r.key.is_empty() {
        return Err(rejection(
            "InvalidSecretRef",
            "spec.keySecretRef",
            "name and key must not be empty",
        ));
    }
    let mut params = json!({
        "selector": spec.selector,
        "headers": headers,
        "key": format!("{secrets_dir}/{}/{}", r.name, r.key),
        "header_canonicalization": spec.header_canonicalization.map_or("Relaxed", |c| c.name()),
        "body_canonicalization": spec.body_canonicalization.map_or("Relaxed", |c| c.name()),
    });
    if let Some(d) = &spec.signing_domain {
        params["domain"] = json!(d.to_lowercase());
    }
    if let Some(e) = &spec.expiration {
        let secs = parse_duration(e)
            .map_err(|err| rejection("InvalidDuration", "spec.expiration", err))?
            .as_secs();
        if secs == 0 {
            return Err(rejection(
                "InvalidDuration",
                "spec.expiration",
                "must be at least a second",
            ));
        }
        params["expiration"] = json!(secs);
    }
    if spec.over_sign {
        params["over_sign"] = json!(true);
    }
    Ok(json!({
        "name": format!("{}/{}", key.namespace, key.name),
        "domains": normalised_domains(object),
        "algorithm": spec.algorithm.name(),
        "params": params,
    }))
}

/// The domains, lower-cased, sorted, without repeats.
pub fn normalised_domains(object: &DkimSigner) -> Vec<String> {
    let mut d: Vec<String> = object
        .spec
        .domains
        .iter()
        .map(|d| d.to_lowercase())
        .collect();
    d.sort();
    d.dedup();
    d
}

/// What the status reports: the domains signed, where the record goes,
/// and the key check against `secrets` (None: not read).
pub fn signer_status(
    object: &DkimSigner,
    secrets: Option<&BTreeMap<String, SecretState>>,
) -> SignerStatus {
    let spec = &object.spec;
    let domains = normalised_domains(object);
    let signed_as: Vec<String> = match &spec.signing_domain {
        Some(d) => vec![d.to_lowercase()],
        None => domains.clone(),
    };
    let r = &spec.key_secret_ref;
    let key = match secrets.map(|s| s.get(&r.name)) {
        None => Ok(None),
        Some(None) | Some(Some(SecretState::NotMounted)) => Err(rejection(
            "SecretNotMounted",
            "spec.keySecretRef",
            format!(
                "Secret {:?} is not mounted into the MTA pods: add it to the chart's mta.secrets",
                r.name
            ),
        )),
        Some(Some(SecretState::NotFound)) => Err(rejection(
            "SecretNotFound",
            "spec.keySecretRef",
            format!("Secret {:?} does not exist in this namespace", r.name),
        )),
        Some(Some(SecretState::Unreadable(e))) => Err(rejection(
            "SecretUnreadable",
            "spec.keySecretRef",
            format!("cannot read Secret {:?}: {e}", r.name),
        )),
        Some(Some(SecretState::Data(data))) => match data.get(&r.key) {
            None => Err(rejection(
                "SecretKeyNotFound",
                "spec.keySecretRef",
                format!("Secret {:?} has no key {:?}", r.name, r.key),
            )),
            Some(pem) => dns_record(spec.algorithm, pem)
                .map(Some)
                .map_err(|e| rejection("InvalidKey", "spec.keySecretRef", e)),
        },
    };
    SignerStatus {
        signing: format!(
            "{} for {}{}",
            spec.algorithm.name(),
            domains.join(", "),
            spec.signing_domain
                .as_ref()
                .map(|d| format!(" as {}", d.to_lowercase()))
                .unwrap_or_default()
        ),
        dns_names: signed_as
            .iter()
            .map(|d| format!("{}._domainkey.{d}", spec.selector))
            .collect(),
        key,
    }
}

/// The DNS TXT record (`v=DKIM1; k=…; p=…`) of the private key in `pem`,
/// which must be a key for `alg`: RSA's public key as SubjectPublicKeyInfo
/// (what `openssl rsa -pubout` gives and verifiers read), Ed25519's as its
/// 32 bytes (RFC 8463 §4).
pub fn dns_record(alg: DkimAlgorithm, pem: &[u8]) -> Result<String, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key ({e})"))?;
    match alg {
        DkimAlgorithm::RsaSha256 => {
            let pair = match &der {
                PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                _ => return Err("an EC key, not RSA".into()),
            }
            .map_err(|e| {
                format!("not a usable RSA private key ({e}; 2048 to 8192 bits are signed with)")
            })?;
            Ok(format!(
                "v=DKIM1; k=rsa; p={}",
                b64(&rsa_spki(pair.public().as_ref())?)
            ))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(k) = &der else {
                return Err("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into());
            };
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                .map_err(|e| format!("not an Ed25519 private key ({e})"))?;
            Ok(format!(
                "v=DKIM1; k=ed25519; p={}",
                b64(pair.public_key().as_ref())
            ))
        }
    }
}

/// An RSAPublicKey (PKCS#1 DER) inside a SubjectPublicKeyInfo.
fn rsa_spki(pkcs1: &[u8]) -> Result<Vec<u8>, String> {
    use spki::der::{Encode, asn1::BitStringRef};
    let info = spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifierRef {
            // rsaEncryption, with NULL parameters (RFC 8017 A.1)
            oid: spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
            parameters: Some(spki::der::AnyRef::NULL),
        },
        subject_public_key: BitStringRef::from_bytes(pkcs1).map_err(|e| e.to_string())?,
    };
    info.to_der().map_err(|e| e.to_string())
}

/// Later signers with the same domains and selector as an earlier one (by
/// namespace/name) conflict: verifiers could fetch only one key.
pub fn conflicts(entries: &[(ObjectKey, Vec<String>, String)]) -> BTreeMap<ObjectKey, Rejection> {
    let mut taken: BTreeMap<(Vec<String>, String), &ObjectKey> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (key, domains, selector) in entries {
        match taken.get(&(domains.clone(), selector.clone())) {
            Some(first) => {
                out.insert(
                    key.clone(),
                    rejection(
                        "ConflictingSelector",
                        "spec.selector",
                        format!(
                            "DkimSigner {}/{} already signs these domains with selector {selector:?}; use another selector",
                            first.namespace, first.name
                        ),
                    ),
                );
            }
            None => {
                taken.insert((domains.clone(), selector.clone()), key);
            }
        }
    }
    out
}
