//! `DkimSigner`: DKIM signing for sender domains, declared without Lua.
//! The private key stays in a Secret mounted into the MTA pods; the
//! generated policy names only its path.

use super::{PolicyStatus, SecretKeyRef};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A domain name, or `*.` and one: what `domains` holds.
pub const DOMAIN_PATTERN: &str = r"^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$";
/// DNS labels separated by dots: what a selector is (RFC 6376 §3.1).
pub const SELECTOR_PATTERN: &str = r"^[a-zA-Z0-9]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)*$";

/// Signs the mail whose `From:` header is in one of `domains` (KumoMTA's
/// `kumo.dkim.*_signer` with `msg:dkim_sign`, called for every message the
/// pods receive over SMTP or HTTP). Several DkimSigners matching one domain
/// each add a signature (an RSA and an Ed25519 key side by side, or a key
/// rotation); two with the same domains and selector conflict.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "DkimSigner",
    doc = "DKIM signing for the sender domains it lists, with a private key held in a Secret mounted into the MTA pods. Its status gives the DNS record to publish.",
    namespaced,
    shortname = "dkim",
    category = "sluice",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Domains","type":"string","jsonPath":".spec.domains"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DkimSignerSpec {
    /// Sender domains (of the `From:` header) to sign for: exact names or
    /// globs (`*.example.com` matches any subdomain), case-insensitive.
    #[schemars(
        length(min = 1, max = 100),
        inner(length(max = 253), pattern(DOMAIN_PATTERN))
    )]
    pub domains: Vec<String>,
    /// The selector (`s=`): verifiers find the public key at
    /// `<selector>._domainkey.<signing domain>`.
    #[schemars(length(max = 253), pattern(SELECTOR_PATTERN))]
    pub selector: String,
    /// The signing algorithm; the key must be of its kind.
    pub algorithm: DkimAlgorithm,
    /// The Secret key holding the PEM private key (PKCS#1 or PKCS#8 for
    /// RSA, at least 2048 bits; PKCS#8 for Ed25519). The Secret must be
    /// mounted into the MTA pods (the chart's `mta.secrets`).
    pub key_secret_ref: SecretKeyRef,
    /// The signing domain (`d=`); the `From:` domain when unset. Set it to
    /// the organisational domain to sign many subdomains with one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_domain: Option<String>,
    /// Header fields to sign; From must be one of them. Unset: From, To,
    /// Subject, Date, MIME-Version, Content-Type and Sender (KumoMTA's
    /// `dkim_sign` helper's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header canonicalization (default Relaxed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_canonicalization: Option<Canonicalization>,
    /// Body canonicalization (default Relaxed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_canonicalization: Option<Canonicalization>,
    /// How long a signature stays valid (`x=`), e.g. `7 days`; no expiry
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Sign each listed header once more than the message has it, so that
    /// none can be added after signing without breaking the signature.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_sign: bool,
}

// The DKIM signing algorithm. Documented with `//`, as TlsMode is.
#[allow(missing_docs)]
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DkimAlgorithm {
    // rsa-sha256 (RFC 6376), the one every verifier knows.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    // ed25519-sha256 (RFC 8463): short keys, fast; sign with RSA as well,
    // since not every verifier knows it.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `a=` tag's name.
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

// DKIM canonicalization (RFC 6376 §3.4). Documented with `//`, as TlsMode is.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Canonicalization {
    // Tolerates whitespace and header case changes on the way.
    Relaxed,
    // Byte for byte.
    Simple,
}

impl Canonicalization {
    /// KumoMTA's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Canonicalization::Relaxed => "Relaxed",
            Canonicalization::Simple => "Simple",
        }
    }
}
