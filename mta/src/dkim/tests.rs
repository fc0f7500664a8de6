//! Signer parameters, keys, over-signing and the cache. That the
//! signatures verify is shown by independent verifiers (dkimpy and
//! OpenDKIM) in `tests/tests/dkim.rs`.

use super::*;
use std::path::{Path, PathBuf};

/// Test-only keys, made with `openssl genrsa -traditional` and `openssl
/// genpkey -algorithm ed25519`.
fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/dkim/testdata")
        .join(name)
}

fn params(key: KeySource) -> SignerParams {
    SignerParams {
        domain: "example.com".into(),
        selector: "s1".into(),
        headers: vec!["From".into(), "To".into(), "Subject".into()],
        atps: None,
        atpsh: None,
        agent_user_identifier: None,
        expiration: None,
        body_length: false,
        reporting: false,
        header_canonicalization: Canon::Relaxed,
        body_canonicalization: Canon::Relaxed,
        key,
        ttl: None,
        over_sign: false,
    }
}

const MESSAGE: &[u8] = b"From: a@example.com\r\nTo: b@example.net\r\n\r\nHello\r\n";

/// The tags of a `DKIM-Signature` header, unfolded.
fn tags(header: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8(header.to_vec()).unwrap();
    let value = text.strip_prefix("DKIM-Signature:").expect("header name");
    let unfolded: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    unfolded
        .split(';')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (k, v) = t.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn an_rsa_signature_carries_the_parameters() {
    let mut p = params(KeySource::File(testdata("rsa2048.pem")));
    p.header_canonicalization = Canon::Simple;
    p.expiration = Some(3600);
    p.agent_user_identifier = Some("@example.com".into());
    let header = Signer::new(Algorithm::RsaSha256, p)
        .unwrap()
        .sign(MESSAGE)
        .unwrap();
    assert!(header.ends_with(b"\r\n"));
    let t = tags(&header);
    assert_eq!(t["a"], "rsa-sha256");
    assert_eq!(t["d"], "example.com");
    assert_eq!(t["s"], "s1");
    assert_eq!(t["c"], "simple/relaxed");
    assert_eq!(t["i"], "@example.com");
    let (ts, xs): (u64, u64) = (t["t"].parse().unwrap(), t["x"].parse().unwrap());
    assert_eq!(xs - ts, 3600);
    // a 2048-bit RSA signature is 256 bytes, 344 in base64
    assert_eq!(t["b"].len(), 344);
    // Subject is absent but listed: signed as empty, so it cannot be added
    let h: Vec<&str> = t["h"].split(':').collect();
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(h.iter().any(|n| n.eq_ignore_ascii_case("subject")));
}

#[test]
fn an_ed25519_key_loads_from_pem_or_der_data() {
    let pem = std::fs::read_to_string(testdata("ed25519.pem")).unwrap();
    let header = Signer::new(
        Algorithm::Ed25519Sha256,
        params(KeySource::Data {
            key_data: pem.clone(),
        }),
    )
    .unwrap()
    .sign(MESSAGE)
    .unwrap();
    let t = tags(&header);
    assert_eq!(t["a"], "ed25519-sha256");
    // 64 bytes of signature
    assert_eq!(t["b"].len(), 88);
    // the same key as DER (binary), from a file
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ed.der");
    std::fs::write(&path, der.secret_pkcs8_der()).unwrap();
    Signer::new(Algorithm::Ed25519Sha256, params(KeySource::File(path))).unwrap();
}

#[test]
fn key_errors_name_the_key_and_the_constructor() {
    let missing = testdata("no-such-key.pem");
    let e = Signer::new(
        Algorithm::RsaSha256,
        params(KeySource::File(missing.clone())),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kumo.dkim.rsa_sha256_signer"), "{e}");
    assert!(e.contains(&missing.display().to_string()), "{e}");
    // an Ed25519 key is not an RSA key
    let e = Signer::new(
        Algorithm::RsaSha256,
        params(KeySource::File(testdata("ed25519.pem"))),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ed25519.pem") && e.contains("RSA"), "{e}");
    // ring refuses RSA keys under 2048 bits (RFC 8301 asks for 1024 at
    // least and recommends 2048)
    let e = Signer::new(
        Algorithm::RsaSha256,
        params(KeySource::File(testdata("rsa1024.pem"))),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("2048"), "{e}");
    let e = Signer::new(
        Algorithm::Ed25519Sha256,
        params(KeySource::Data {
            key_data: "junk".into(),
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("key_data") && e.contains("Ed25519"), "{e}");
}

#[test]
fn parameters_a_verifier_would_refuse_are_errors() {
    let key = KeySource::File(testdata("rsa2048.pem"));
    let mut p = params(key.clone());
    p.headers = vec!["Subject".into()];
    let e = Signer::new(Algorithm::RsaSha256, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("From"), "{e}");
    let mut p = params(key);
    p.atpsh = Some("md5".into());
    let e = Signer::new(Algorithm::RsaSha256, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("atpsh"), "{e}");
}

#[test]
fn over_signing_lists_present_headers_once_more() {
    let names: Vec<String> = ["From", "To", "Subject"].map(String::from).into();
    let msg = b"From: a@x\r\nto: b@y\r\nTo: c@y\r\nX-Subject: no\r\n\r\nSubject: body\r\n";
    assert_eq!(
        over_signed(&names, msg),
        ["From", "From", "To", "To", "Subject"].map(String::from)
    );
    let mut p = params(KeySource::File(testdata("rsa2048.pem")));
    p.over_sign = true;
    let header = Signer::new(Algorithm::RsaSha256, p)
        .unwrap()
        .sign(msg)
        .unwrap();
    let h = tags(&header)["h"].to_ascii_lowercase();
    // both To instances and one more, From and one more, Subject once
    assert_eq!(h.matches("to").count(), 3, "{h}");
    assert_eq!(h.matches("from").count(), 2, "{h}");
    assert_eq!(h.matches("subject").count(), 1, "{h}");
}

#[tokio::test(start_paused = true)]
async fn a_signer_is_reused_until_its_ttl_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::copy(testdata("rsa2048.pem"), &path).unwrap();
    let mut p = params(KeySource::File(path.clone()));
    p.ttl = Some(Duration::from_secs(60));
    let first = Signer::get(Algorithm::RsaSha256, p.clone()).unwrap();
    // the key file goes away: the cached signer still signs
    std::fs::remove_file(&path).unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    let again = Signer::get(Algorithm::RsaSha256, p.clone()).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    // other parameters are another signer
    let mut other = p.clone();
    other.selector = "s2".into();
    assert!(Signer::get(Algorithm::RsaSha256, other).is_err());
    // past the ttl the key is read again, and now it is missing
    tokio::time::advance(Duration::from_secs(2)).await;
    let e = Signer::get(Algorithm::RsaSha256, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k.pem"), "{e}");
}
