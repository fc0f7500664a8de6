//! Outbound SMTP AUTH (`smtp_auth_plain_username`/`_password` on an egress
//! path) against a real Postfix submission service with Cyrus SASL: the
//! credential goes only over TLS with a verified certificate unless the path
//! allows less, a refused login is a transient failure naming it, and Postfix's
//! own log shows who authenticated.

use sluice_tests::submission::{REALM, Submission};
use sluice_tests::*;
use std::time::Duration;

fn relay(port: u16, path_extra: &str) -> String {
    relay_policy(port, "retry_interval = '1 hour'", path_extra)
}

fn user() -> String {
    format!("daniel@{REALM}")
}

fn send(mta: &Mta, to: &str) {
    let o = swaks(mta.port, &["--to", to]);
    assert!(o.status.success(), "{}", text(&o));
}

fn transient(mta: &Mta) -> String {
    let tf = mta.the_record("TransientFailure", Duration::from_secs(20));
    tf["response"]["content"].as_str().unwrap().to_string()
}

#[test]
fn auth_plain_over_verified_tls_reaches_postfix_as_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let postfix = Submission::start(&[("daniel", "tiger")], &ca.cert, &ca.key);
    // the password from a file, as a mounted Secret made with `echo` gives
    // it: the trailing newline is not part of it
    let secret = dir.path().join("password");
    std::fs::write(&secret, "tiger\n").unwrap();
    let mut mta = Mta::prepare(&relay(
        postfix.port,
        &format!(
            "enable_tls = 'Required', smtp_auth_plain_username = '{}', \
             smtp_auth_plain_password = '{}'",
            user(),
            secret.display()
        ),
    ));
    mta.env
        .push(("SSL_CERT_FILE".into(), ca.ca.display().to_string()));
    mta.spawn();
    for i in 0..3 {
        send(&mta, &format!("u{i}@elsewhere.example"));
    }
    let recs = mta.wait_for_records(Duration::from_secs(30), "three deliveries", |r| {
        count(r, "Delivery") == 3
    });
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert!(d["tls_cipher"].is_string(), "{d}");
    }
    postfix.wait_for_log(&["sasl_method=PLAIN", &format!("sasl_username={}", user())]);
    let log = postfix.log();
    assert_eq!(log.matches("status=sent (delivered)").count(), 3, "{log}");
}

#[test]
fn the_credential_is_withheld_from_unverified_or_clear_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let postfix = Submission::start(&[("daniel", "tiger")], &ca.cert, &ca.key);
    let auth = format!(
        "smtp_auth_plain_username = '{}', smtp_auth_plain_password = {{ key_data = 'tiger' }}",
        user()
    );

    // TLS without verification: not sent, unless the path allows it
    let insecure = Mta::start(&relay(
        postfix.port,
        &format!("enable_tls = 'RequiredInsecure', {auth}"),
    ));
    send(&insecure, "a@elsewhere.example");
    let why = transient(&insecure);
    assert!(
        why.contains(
            "TLS peer certificate was not validated and AUTH PLAIN requires a valid certificate"
        ),
        "{why}"
    );
    let allowed = Mta::start(&relay(
        postfix.port,
        &format!(
            "enable_tls = 'RequiredInsecure', allow_smtp_auth_plain_without_valid_certificate = true, {auth}"
        ),
    ));
    send(&allowed, "b@elsewhere.example");
    allowed.wait_for_records(Duration::from_secs(20), "a delivery", |r| {
        count(r, "Delivery") == 1
    });

    // no TLS: not sent; allowed, Postfix itself refuses AUTH before STARTTLS
    let clear = Mta::start(&relay(
        postfix.port,
        &format!("enable_tls = 'Disabled', {auth}"),
    ));
    send(&clear, "c@elsewhere.example");
    let why = transient(&clear);
    assert!(
        why.contains("TLS is not enabled and AUTH PLAIN is required"),
        "{why}"
    );
    let clear_allowed = Mta::start(&relay(
        postfix.port,
        &format!("enable_tls = 'Disabled', allow_smtp_auth_plain_without_tls = true, {auth}"),
    ));
    send(&clear_allowed, "d@elsewhere.example");
    let why = transient(&clear_allowed);
    assert!(
        why.contains("via SMTP AUTH PLAIN") && why.contains("503"),
        "{why}"
    );

    // only the one allowed session authenticated
    let log = postfix.log();
    assert_eq!(log.matches("sasl_method=PLAIN").count(), 1, "{log}");
}

#[test]
fn a_refused_password_is_a_transient_failure_naming_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let postfix = Submission::start(&[("daniel", "tiger")], &ca.cert, &ca.key);
    let mut mta = Mta::prepare(&relay(
        postfix.port,
        &format!(
            "enable_tls = 'Required', smtp_auth_plain_username = '{}', \
             smtp_auth_plain_password = {{ key_data = 'lion' }}",
            user()
        ),
    ));
    mta.env
        .push(("SSL_CERT_FILE".into(), ca.ca.display().to_string()));
    mta.spawn();
    send(&mta, "a@elsewhere.example");
    let why = transient(&mta);
    assert!(
        why.contains(&format!("authenticating as {} via SMTP AUTH PLAIN", user()))
            && why.contains("535"),
        "{why}"
    );
    postfix.wait_for_log(&[
        "authentication failed",
        &format!("sasl_username={}", user()),
    ]);
    // a missing password file is named in the failure
    let missing = Mta::start(&relay(
        postfix.port,
        &format!(
            "enable_tls = 'RequiredInsecure', allow_smtp_auth_plain_without_valid_certificate = true, \
             smtp_auth_plain_username = '{}', smtp_auth_plain_password = '/nonexistent/password'",
            user()
        ),
    ));
    send(&missing, "b@elsewhere.example");
    let why = transient(&missing);
    assert!(
        why.contains("smtp_auth_plain_password: key file /nonexistent/password"),
        "{why}"
    );
}
