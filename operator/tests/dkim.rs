//! DkimSigner: the spec checked and rendered into the generated policy (the
//! key path, never the key), the key in its Secret checked against the
//! algorithm, and the DNS record the status gives, compared with what
//! openssl derives from the same key.

mod common;

use common::*;
use sluice_operator::crd::DkimAlgorithm;
use sluice_operator::render::{self, SecretState, dkim::dns_record};
use std::collections::BTreeMap;
use std::process::Command;

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A new key: (PEM, the record openssl's public key gives).
fn key(dir: &std::path::Path, kind: &str) -> (Vec<u8>, String) {
    let path = dir.join(format!("{kind}.pem"));
    let p = path.to_str().unwrap();
    let record = match kind {
        "rsa-pkcs1" => {
            openssl(&["genrsa", "-traditional", "-out", p, "2048"]);
            let spki = openssl(&["rsa", "-in", p, "-pubout", "-outform", "DER"]);
            format!("v=DKIM1; k=rsa; p={}", b64(&spki))
        }
        "rsa-pkcs8" => {
            openssl(&[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:3072",
                "-out",
                p,
            ]);
            let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
            format!("v=DKIM1; k=rsa; p={}", b64(&spki))
        }
        "ed25519" => {
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
            let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
            format!("v=DKIM1; k=ed25519; p={}", b64(&spki[spki.len() - 32..]))
        }
        other => panic!("{other}"),
    };
    (std::fs::read(&path).unwrap(), record)
}

#[test]
fn the_dns_record_is_the_one_openssl_derives_from_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, alg) in [
        ("rsa-pkcs1", DkimAlgorithm::RsaSha256),
        ("rsa-pkcs8", DkimAlgorithm::RsaSha256),
        ("ed25519", DkimAlgorithm::Ed25519Sha256),
    ] {
        let (pem, record) = key(dir.path(), kind);
        assert_eq!(dns_record(alg, &pem).unwrap(), record, "{kind}");
    }
    let (rsa, _) = key(dir.path(), "rsa-pkcs1");
    let (ed, _) = key(dir.path(), "ed25519");
    let wrong = dns_record(DkimAlgorithm::Ed25519Sha256, &rsa).unwrap_err();
    assert!(wrong.contains("PKCS#8"), "{wrong}");
    let wrong = dns_record(DkimAlgorithm::RsaSha256, &ed).unwrap_err();
    assert!(wrong.contains("not a usable RSA private key"), "{wrong}");
    let small = dir.path().join("small.pem");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        small.to_str().unwrap(),
        "1024",
    ]);
    let wrong = dns_record(DkimAlgorithm::RsaSha256, &std::fs::read(&small).unwrap()).unwrap_err();
    assert!(wrong.contains("2048 to 8192"), "{wrong}");
    let wrong = dns_record(DkimAlgorithm::RsaSha256, b"not a key").unwrap_err();
    assert!(wrong.contains("not a PEM private key"), "{wrong}");
}

fn signers_example() -> render::Inputs {
    let (inputs, errors) =
        sluice_operator::manifests::read_dir(&root().join("examples/operator/dkim"), "default");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inputs.dkim_signers.len(), 2);
    inputs
}

fn key_of(name: &str) -> render::ObjectKey {
    render::ObjectKey {
        kind: "DkimSigner".into(),
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn signers_render_with_the_key_path_and_the_status_gives_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_record) = key(dir.path(), "rsa-pkcs1");
    let (ed, ed_record) = key(dir.path(), "ed25519");
    let mut inputs = signers_example();
    inputs.secrets = Some(BTreeMap::from([(
        "dkim-example".to_string(),
        SecretState::Data(BTreeMap::from([
            ("rsa.pem".to_string(), rsa.clone()),
            ("ed25519.pem".to_string(), ed),
        ])),
    )]));
    let rendered = render::render(&inputs, &render::Options::default());
    assert_eq!(rendered.rejected().count(), 0);
    let lua = &rendered.files[render::POLICY_FILE];
    insta::assert_snapshot!("dkim-signers.lua", lua);
    assert!(
        lua.contains("key = '/etc/sluice/secrets/dkim-example/rsa.pem'"),
        "{lua}"
    );
    let pem_body = String::from_utf8_lossy(&rsa);
    let line = pem_body.lines().nth(1).unwrap();
    assert!(
        !lua.contains(line),
        "no key material in the generated policy"
    );

    let status = &rendered.signers[&key_of("example-rsa")];
    assert_eq!(
        status.signing,
        "rsa-sha256 for *.example.com, example.com as example.com"
    );
    assert_eq!(status.dns_names, vec!["s2026._domainkey.example.com"]);
    assert_eq!(status.key, Ok(Some(rsa_record)));
    let status = &rendered.signers[&key_of("example-ed25519")];
    assert_eq!(status.dns_names, vec!["e2026._domainkey.example.com"]);
    assert_eq!(status.key, Ok(Some(ed_record)));

    // the key's Secret changes: the policy stays the same bytes
    inputs.secrets = Some(BTreeMap::from([(
        "dkim-example".to_string(),
        SecretState::Data(BTreeMap::new()),
    )]));
    let again = render::render(&inputs, &render::Options::default());
    assert_eq!(again.hash, rendered.hash);
    let key = again.signers[&key_of("example-rsa")]
        .key
        .clone()
        .unwrap_err();
    assert_eq!(key.reason, "SecretKeyNotFound");
    assert!(
        key.message.contains("no key \"rsa.pem\""),
        "{}",
        key.message
    );
}

#[test]
fn an_unusable_key_keeps_the_signer_in_the_config_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, _) = key(dir.path(), "rsa-pkcs1");
    let mut inputs = signers_example();
    for (state, reason, text) in [
        (
            None,
            "SecretNotMounted",
            "add it to the chart's mta.secrets",
        ),
        (
            Some(SecretState::NotFound),
            "SecretNotFound",
            "does not exist",
        ),
        (
            Some(SecretState::Unreadable("forbidden".into())),
            "SecretUnreadable",
            "forbidden",
        ),
        (
            // the Ed25519 signer's key is RSA
            Some(SecretState::Data(BTreeMap::from([
                ("rsa.pem".to_string(), rsa.clone()),
                ("ed25519.pem".to_string(), rsa.clone()),
            ]))),
            "InvalidKey",
            "PKCS#8",
        ),
    ] {
        let mut secrets = BTreeMap::new();
        if let Some(s) = state {
            secrets.insert("dkim-example".to_string(), s);
        }
        inputs.secrets = Some(secrets);
        let rendered = render::render(&inputs, &render::Options::default());
        // still signed for: mail is refused until the key is usable, never
        // sent unsigned
        assert_eq!(rendered.rejected().count(), 0);
        assert!(rendered.files[render::POLICY_FILE].contains("e2026"));
        let problem = rendered.signers[&key_of("example-ed25519")]
            .key
            .clone()
            .unwrap_err();
        assert_eq!(problem.reason, reason);
        assert!(problem.message.contains(text), "{}", problem.message);
    }
}

#[test]
fn a_second_signer_with_the_same_domains_and_selector_conflicts() {
    let mut inputs = signers_example();
    let mut twin = inputs.dkim_signers[0].clone();
    twin.metadata.name = Some("zz-twin".into());
    twin.spec.domains.reverse();
    twin.spec.domains[0] = twin.spec.domains[0].to_uppercase();
    inputs.dkim_signers.push(twin);
    let rendered = render::render(&inputs, &render::Options::default());
    let rejected: Vec<_> = rendered.rejected().collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0.name, "zz-twin");
    assert_eq!(rejected[0].1.reason, "ConflictingSelector");
    assert!(
        rejected[0]
            .1
            .message
            .contains("DkimSigner default/example-rsa"),
        "{}",
        rejected[0].1.message
    );
}

#[test]
fn spec_errors_name_the_field() {
    let base = signers_example().dkim_signers[0].clone();
    type Edit = fn(&mut sluice_operator::crd::DkimSignerSpec);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (|s| s.domains = vec![], "InvalidDomain", "spec.domains"),
        (
            |s| s.domains[1] = "exa mple.com".into(),
            "InvalidDomain",
            "spec.domains[1]",
        ),
        (
            |s| s.signing_domain = Some("*.example.com".into()),
            "InvalidDomain",
            "spec.signingDomain",
        ),
        (
            |s| s.selector = "s_".into(),
            "InvalidSelector",
            "spec.selector",
        ),
        (
            |s| s.expiration = Some("soon".into()),
            "InvalidDuration",
            "spec.expiration",
        ),
        (
            |s| s.key_secret_ref.key = String::new(),
            "InvalidSecretRef",
            "spec.keySecretRef",
        ),
    ];
    for (edit, reason, field) in cases {
        let mut signer = base.clone();
        edit(&mut signer.spec);
        let inputs = render::Inputs {
            dkim_signers: vec![signer],
            ..Default::default()
        };
        let rendered = render::render(&inputs, &render::Options::default());
        let (_, r) = rendered.rejected().next().expect("rejected");
        assert_eq!(r.reason, reason, "{}", r.message);
        assert!(
            r.message.starts_with(&format!("{field}: ")),
            "{}",
            r.message
        );
    }
}
