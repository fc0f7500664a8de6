//! SMTP AUTH on the listener (RFC 4954), driven by swaks and Python's
//! smtplib: offered only after STARTTLS, checked by the policy's
//! `smtp_server_auth_plain` event, and the only way to relay through a
//! listener whose `relay_hosts` is empty.

use serde_json::Value;
use sluice_tests::*;
use std::time::Duration;

/// No address may relay; `daniel`/`tiger` may, acting as himself or `sales`.
/// The log records carry who authenticated (KumoMTA's meta selection).
fn auth_policy() -> String {
    maildir_policy("relay_hosts = {}", "")
        .replace(
            "log_dir = '{DIR}/logs' }",
            "log_dir = '{DIR}/logs', meta = { 'authn_id', 'authz_id' } }",
        )
        .replace(
        "kumo.on('get_queue_config'",
        "kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)\n  \
           return authc == 'daniel' and password == 'tiger' and (authz == 'daniel' or authz == 'sales')\n\
         end)\n\
         kumo.on('get_queue_config'",
    )
}

fn session(mta: &Mta, args: &[&str]) -> Value {
    let port = mta.port.to_string();
    let mut all = vec![port.as_str()];
    all.extend_from_slice(args);
    let o = python_client("smtp_auth.py", &all);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn code(v: &Value) -> u64 {
    v[0].as_u64()
        .unwrap_or_else(|| panic!("no reply code in {v}"))
}

#[test]
fn auth_is_offered_after_starttls_and_an_authenticated_client_relays() {
    let mta = Mta::start(&auth_policy());

    // without AUTH nobody relays here
    let anon = session(&mta, &[]);
    assert!(
        !anon["features_plain"].to_string().contains("auth"),
        "{anon}"
    );
    assert!(anon["features_tls"].to_string().contains("auth"), "{anon}");
    assert_eq!(code(&anon["rcpt"]), 550, "{anon}");
    assert!(
        anon["rcpt"][1].as_str().unwrap().contains("5.7.1"),
        "{anon}"
    );

    // AUTH over plaintext is refused, credentials unread
    let plain = session(
        &mta,
        &["--no-tls", "--user", "daniel", "--password", "tiger"],
    );
    assert_eq!(code(&plain["auth"][0]), 530, "{plain}");
    assert_eq!(code(&plain["rcpt"]), 550, "{plain}");

    // PLAIN, then LOGIN, after STARTTLS: 235 and the message relays
    for mechanism in ["PLAIN", "LOGIN"] {
        let r = session(
            &mta,
            &[
                "--mechanism",
                mechanism,
                "--user",
                "daniel",
                "--password",
                "tiger",
            ],
        );
        assert_eq!(code(&r["auth"][0]), 235, "{mechanism}: {r}");
        assert_eq!(code(&r["rcpt"]), 250, "{mechanism}: {r}");
        assert_eq!(code(&r["data"]), 250, "{mechanism}: {r}");
    }
    // an authorization identity the policy allows is who the message is from
    let r = session(
        &mta,
        &[
            "--user",
            "daniel",
            "--password",
            "tiger",
            "--authz",
            "sales",
        ],
    );
    assert_eq!(code(&r["data"]), 250, "{r}");

    let recs = mta.wait_for_records(Duration::from_secs(10), "deliveries", |r| {
        count(r, "Delivery") == 3
    });
    let ids: Vec<(&str, &str)> = recs
        .iter()
        .filter(|r| r["type"] == "Reception")
        .map(|r| {
            (
                r["meta"]["authn_id"].as_str().unwrap(),
                r["meta"]["authz_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("daniel", "daniel"),
            ("daniel", "daniel"),
            ("daniel", "sales")
        ]
    );
    assert_eq!(mta.maildir_files("maildir").len(), 3);
}

#[test]
fn swaks_authenticates_with_plain_and_login_over_starttls() {
    let mta = Mta::start(&auth_policy());
    for mechanism in ["PLAIN", "LOGIN"] {
        let o = swaks(
            mta.port,
            &[
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "daniel",
                "--auth-password",
                "tiger",
                "--to",
                "friend@elsewhere.example",
            ],
        );
        assert!(o.status.success(), "{mechanism}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("235 2.7.0"),
            "{}",
            text(&o)
        );
    }
    let wrong = swaks(
        mta.port,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "daniel",
            "--auth-password",
            "lion",
            "--to",
            "friend@elsewhere.example",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stdout).contains("535 5.7.8"),
        "{}",
        text(&wrong)
    );
    mta.wait_for_records(Duration::from_secs(10), "deliveries", |r| {
        count(r, "Delivery") == 2
    });
}

#[test]
fn failures_close_the_session_lock_out_the_address_and_never_log_the_password() {
    let mta = Mta::start(&auth_policy());
    // three failures in one session: 535 each, then 421 and the close
    let r = session(
        &mta,
        &[
            "--user",
            "daniel",
            "--password",
            "guess-1",
            "--attempts",
            "3",
        ],
    );
    let codes: Vec<u64> = r["auth"].as_array().unwrap().iter().map(code).collect();
    assert_eq!(codes, [535, 535, 535], "{r}");
    assert!(
        r["closed"] == true || code(&r["mail"]) == 421,
        "closed after three failures: {r}"
    );

    // ten failures from one address lock it out, good password or not;
    // another address is unaffected
    for _ in 0..3 {
        session(
            &mta,
            &[
                "--user",
                "daniel",
                "--password",
                "guess-2",
                "--attempts",
                "3",
            ],
        );
    }
    let locked = session(&mta, &["--user", "daniel", "--password", "tiger"]);
    assert_eq!(code(&locked["auth"][0]), 454, "{locked}");
    assert_eq!(code(&locked["rcpt"]), 550, "{locked}");
    let other = session(
        &mta,
        &[
            "--user",
            "daniel",
            "--password",
            "tiger",
            "--source",
            "127.0.0.2",
        ],
    );
    assert_eq!(code(&other["auth"][0]), 235, "{other}");
    assert_eq!(code(&other["data"]), 250, "{other}");

    // the failures are logged as Rejections, without the credentials
    let recs = mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let rejected = |code: u64| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["type"] == "Rejection" && r["response"]["code"] == code)
            .collect()
    };
    // ten checked and refused; the eleventh and twelfth guesses and the
    // good password met the lockout
    assert_eq!(rejected(535).len(), 10);
    assert_eq!(rejected(454).len(), 3);
    assert_eq!(rejected(535)[0]["response"]["command"], "AUTH PLAIN ****");
    let logs = std::fs::read_dir(mta.path("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode("\0daniel\0guess-1");
    assert!(!logs.contains("guess-1") && !logs.contains(&secret));
}
