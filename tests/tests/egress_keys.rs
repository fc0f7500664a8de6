//! KumoMTA egress path keys beyond the first round's: `use_lmtp` against
//! Postfix's smtp-sink in LMTP mode, `rustls_cipher_suites` and
//! `opportunistic_tls_reconnect_on_failed_handshake` against a TLS
//! receiver (a sluice-mta with an RSA certificate).

use sluice_tests::*;
use std::time::Duration;

/// Relay to `port` with extra egress path keys, one message per recipient
/// domain (so a message may carry several recipients).
fn relay(port: u16, path_extra: &str) -> String {
    policy(
        "batch_handling = 'BatchByDomain'",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
    retry_interval = '1 hour',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, {path_extra} }}
end)
"#
        ),
    )
}

#[test]
fn use_lmtp_speaks_lmtp_and_takes_a_reply_per_recipient() {
    let sink = Sink::start(&["-L"]);
    let mta = Mta::start(&relay(sink.port, "use_lmtp = true"));
    for i in 0..3 {
        let to = format!("a{i}@example.com,b{i}@example.com");
        let o = swaks(mta.port, &["--to", &to]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // a record covers the recipients of one message that had the same outcome
    let delivered = |r: &[serde_json::Value]| -> usize {
        r.iter()
            .filter(|r| r["type"] == "Delivery")
            .map(|r| r["recipient"].as_array().map_or(1, |a| a.len()))
            .sum()
    };
    let recs = mta.wait_for_records(Duration::from_secs(20), "six recipients delivered", |r| {
        delivered(r) == 6
    });
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert_eq!(d["delivery_protocol"], "LMTP", "{d}");
        assert_eq!(d["response"]["code"], 250, "{d}");
    }
    // three messages of two recipients each reached the sink
    assert_eq!(sink.messages().len(), 3);

    // the same sink refuses an ESMTP client's EHLO and its HELO fallback:
    // the key is what made it work
    let esmtp = Mta::start(&relay(sink.port, ""));
    let o = swaks(esmtp.port, &["--to", "c@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let tf = esmtp.the_record("TransientFailure", Duration::from_secs(20));
    assert!(
        tf["response"]["content"]
            .as_str()
            .unwrap()
            .contains("HELO: 500 5.5.1"),
        "{tf}"
    );
}

/// A receiver with an RSA certificate, on `port`.
fn tls_receiver(dir: &std::path::Path) -> Mta {
    let (cert, key) = make_certificate(dir);
    Mta::start(&maildir_policy(
        &format!(
            "hostname = 'localhost', tls_certificate = '{}', tls_private_key = '{}'",
            cert.display(),
            key.display()
        ),
        "",
    ))
}

#[test]
fn rustls_cipher_suites_choose_what_the_client_offers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = tls_receiver(dir.path());
    let sender = Mta::start(&relay(
        receiver.port,
        "enable_tls = 'RequiredInsecure', rustls_cipher_suites = { 'TLS13_CHACHA20_POLY1305_SHA256' }",
    ));
    let o = swaks(sender.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let d = sender.the_record("Delivery", Duration::from_secs(20));
    assert_eq!(d["tls_cipher"], "TLS13_CHACHA20_POLY1305_SHA256", "{d}");
    let got = receiver.wait_for_records(Duration::from_secs(10), "the reception", |r| {
        count(r, "Reception") == 1
    });
    let r = got.iter().find(|r| r["type"] == "Reception").unwrap();
    assert_eq!(r["tls_cipher"], "TLS13_CHACHA20_POLY1305_SHA256", "{r}");

    // a name rustls does not have is refused where the policy sets it
    let err = validate_fails(
        dir.path(),
        "local kumo = require 'kumo'\nkumo.on('init', function()\n  kumo.make_egress_path { rustls_cipher_suites = { 'TLS_RSA_WITH_RC4_128_MD5' } }\nend)\n",
    );
    assert!(
        err.contains("policy.lua:3: make_egress_path: key 'rustls_cipher_suites': unknown [\"TLS_RSA_WITH_RC4_128_MD5\"]"),
        "{err}"
    );
}

/// Offering only an ECDSA suite to a receiver with an RSA certificate makes
/// the handshake fail for real; with the key, the client reconnects in clear.
#[test]
fn a_failed_opportunistic_handshake_reconnects_in_clear_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = tls_receiver(dir.path());
    let ecdsa_only = "rustls_cipher_suites = { 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384' }";
    let without = Mta::start(&relay(
        receiver.port,
        &format!("enable_tls = 'OpportunisticInsecure', {ecdsa_only}"),
    ));
    let o = swaks(without.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let tf = without.the_record("TransientFailure", Duration::from_secs(20));
    assert!(
        tf["response"]["content"]
            .as_str()
            .unwrap()
            .contains("TLS handshake failed"),
        "{tf}"
    );

    let with = Mta::start(&relay(
        receiver.port,
        &format!(
            "enable_tls = 'OpportunisticInsecure', {ecdsa_only}, \
             opportunistic_tls_reconnect_on_failed_handshake = true"
        ),
    ));
    let o = swaks(with.port, &["--to", "v@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let d = with.the_record("Delivery", Duration::from_secs(20));
    assert!(d["tls_cipher"].is_null(), "delivered in clear: {d}");
    let got = receiver.wait_for_records(Duration::from_secs(10), "the reception", |r| {
        r.iter()
            .any(|x| x["type"] == "Reception" && x["recipient"] == "v@example.com")
    });
    let r = got
        .iter()
        .find(|x| x["type"] == "Reception" && x["recipient"] == "v@example.com")
        .unwrap();
    assert!(r["tls_cipher"].is_null(), "{r}");

    // a Required mode never falls back to clear
    let required = Mta::start(&relay(
        receiver.port,
        &format!(
            "enable_tls = 'RequiredInsecure', {ecdsa_only}, \
             opportunistic_tls_reconnect_on_failed_handshake = true"
        ),
    ));
    let o = swaks(required.port, &["--to", "w@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    required.wait_for_records(Duration::from_secs(20), "a transient failure", |r| {
        count(r, "TransientFailure") == 1
    });
    assert_eq!(count(&required.records(), "Delivery"), 0);
}

/// An 8-bit body to a next hop without 8BITMIME (smtp-sink -8) fails as
/// KumoMTA fails it, unless `ignore_8bit_checks`; with 8BITMIME offered it
/// goes out as BODY=8BITMIME.
#[test]
fn eight_bit_mail_needs_8bitmime_unless_ignore_8bit_checks() {
    let body = "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n";
    let send = |mta: &Mta, to: &str| {
        let o = swaks(mta.port, &["--to", to, "--data", body]);
        assert!(o.status.success(), "{}", text(&o));
    };
    let no8bit = Sink::start(&["-8"]);
    let strict = Mta::start(&relay(no8bit.port, ""));
    send(&strict, "a@example.com");
    let b = strict.the_record("Bounce", Duration::from_secs(20));
    assert_eq!(b["response"]["code"], 554, "{b}");
    assert!(
        b["response"]["content"]
            .as_str()
            .unwrap()
            .contains("destination does not support 8BITMIME"),
        "{b}"
    );
    assert_eq!(no8bit.messages().len(), 0);

    let lax = Mta::start(&relay(no8bit.port, "ignore_8bit_checks = true"));
    send(&lax, "b@example.com");
    lax.wait_for_records(Duration::from_secs(20), "a delivery", |r| {
        count(r, "Delivery") == 1
    });
    assert_eq!(no8bit.messages().len(), 1);

    let with8bit = Sink::start(&[]);
    let normal = Mta::start(&relay(with8bit.port, ""));
    send(&normal, "c@example.com");
    normal.wait_for_records(Duration::from_secs(20), "a delivery", |r| {
        count(r, "Delivery") == 1
    });
    let got = with8bit.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Grüße aus Köln"), "{}", got[0]);
}
