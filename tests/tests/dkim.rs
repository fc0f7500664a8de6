//! DKIM signing, end to end: messages signed by `msg:dkim_sign` in the
//! reception event, relayed over SMTP to Postfix's smtp-sink, and verified
//! there by OpenDKIM and by dkimpy against keys served by dnsmasq.

use sluice_tests::dkim::{DkimDns, DkimKey, wire_form};
use sluice_tests::{Mta, RawSmtp, Sink, relay_policy, validate_fails};
use std::time::Duration;

/// Signs per the message's `X-Case`: `rsa`, `ed` or `both`, then
/// `-relaxed` or `-simple`. `both` adds a second signature for another
/// domain (an ESP's), over-signed.
const SIGNING: &str = r#"
kumo.on('smtp_server_message_received', function(msg)
  local case = msg:get_first_named_header_value('X-Case')
  local alg, canon = case:match('^(%a+)-(%a+)$')
  canon = canon == 'simple' and 'Simple' or 'Relaxed'
  if alg == 'rsa' or alg == 'both' then
    msg:dkim_sign(kumo.dkim.rsa_sha256_signer {
      domain = msg:from_header().domain,
      selector = 'rsa',
      headers = { 'From', 'To', 'Subject', 'X-Long', 'Date' },
      key = '{KEYS}/rsa.pem',
      header_canonicalization = canon,
      body_canonicalization = canon,
    })
  end
  if alg == 'ed' then
    msg:dkim_sign(kumo.dkim.ed25519_signer {
      domain = msg:from_header().domain,
      selector = 'ed',
      headers = { 'From', 'To', 'Subject', 'X-Long' },
      key = { key_data = ED_KEY },
      header_canonicalization = canon,
      body_canonicalization = canon,
    })
  end
  if alg == 'both' then
    msg:dkim_sign(kumo.dkim.ed25519_signer {
      domain = 'esp.test',
      selector = 'ed',
      headers = { 'From', 'Subject', 'Reply-To' },
      key = '{KEYS}/esp-ed.pem',
      over_sign = true,
      header_canonicalization = canon,
      body_canonicalization = canon,
    })
  end
end)
"#;

/// A message with what breaks naive signers: a long header folded over
/// several lines with tabs and runs of spaces, an 8-bit (UTF-8) body,
/// lines that start with a dot (stuffed on the wire), trailing spaces and
/// trailing blank lines.
fn message(case: &str) -> String {
    format!(
        "From: Sender Name <news@sluice.test>\r\n\
         To: someone@dest.test\r\n\
         Subject:  Grüße  from\t the test\r\n\
         Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\
         X-Case: {case}\r\n\
         X-Long: a header long enough to be folded, which it is, over\r\n\
         \tseveral continuation lines, some with tabs\r\n   and some with spaces   \r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Hällo wörld, ünïcödé body — 8-bit.\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         .\tdot and tab\r\n\
         trailing spaces   \r\n\
         \r\n\
         \r\n"
    )
}

struct Setup {
    dns: DkimDns,
    sink: Sink,
    mta: Mta,
    _keys: tempfile::TempDir,
}

fn setup() -> Setup {
    let keys = tempfile::tempdir().unwrap();
    let rsa = DkimKey::rsa(keys.path(), "rsa", 2048);
    let ed = DkimKey::ed25519(keys.path(), "ed");
    let esp = DkimKey::ed25519(keys.path(), "esp-ed");
    let dns = DkimDns::start(&[
        ("rsa._domainkey.sluice.test", &rsa.record),
        ("ed._domainkey.sluice.test", &ed.record),
        ("ed._domainkey.esp.test", &esp.record),
    ]);
    let sink = Sink::start(&[]);
    let ed_pem = std::fs::read_to_string(&ed.private).unwrap();
    let policy = format!(
        "local ED_KEY = [[{ed_pem}]]\n{}{}",
        relay_policy(sink.port, "", ""),
        SIGNING.replace("{KEYS}", &keys.path().display().to_string())
    );
    let mta = Mta::start(&policy);
    Setup {
        dns,
        sink,
        mta,
        _keys: keys,
    }
}

/// Send each case's message and return what the sink received, by case.
fn relay(s: &Setup, cases: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut c = RawSmtp::connect(s.mta.port);
    c.reply();
    c.command("EHLO client.test");
    for case in cases {
        assert_eq!(
            c.command("MAIL FROM:<news@sluice.test> BODY=8BITMIME").0,
            250
        );
        assert_eq!(c.command("RCPT TO:<someone@dest.test>").0, 250);
        assert_eq!(c.command("DATA").0, 354);
        // dot-stuffing, as the client's side of RFC 5321 §4.5.2
        let stuffed = message(case).replace("\r\n.", "\r\n..");
        c.send(stuffed.as_bytes());
        let (code, text) = c.command(".");
        assert_eq!(code, 250, "{case}: {text}");
    }
    c.command("QUIT");
    let n = cases.len();
    s.mta
        .wait_for_records(Duration::from_secs(30), "the deliveries", |r| {
            sluice_tests::count(r, "Delivery") == n
        });
    let mut got: Vec<(String, Vec<u8>)> = s
        .sink
        .messages()
        .into_iter()
        .map(|m| {
            let case = m
                .lines()
                .find_map(|l| l.strip_prefix("X-Case: "))
                .expect("X-Case")
                .to_string();
            (case, wire_form(&m))
        })
        .collect();
    got.sort();
    got
}

#[test]
fn opendkim_and_dkimpy_verify_rsa_and_ed25519_signatures() {
    let s = setup();
    let cases = [
        "both-relaxed",
        "both-simple",
        "ed-relaxed",
        "ed-simple",
        "rsa-relaxed",
        "rsa-simple",
    ];
    let got = relay(&s, &cases);
    assert_eq!(
        got.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        cases
    );
    for (case, msg) in &got {
        let text = String::from_utf8_lossy(msg);
        let signatures = text.matches("DKIM-Signature:").count();
        let expect: Vec<(String, Option<String>)> = match case.split('-').next().unwrap() {
            "both" => vec![("esp.test".into(), None), ("sluice.test".into(), None)],
            _ => vec![("sluice.test".into(), None)],
        };
        assert_eq!(signatures, expect.len(), "{case}: {text}");
        // dkimpy checks each signature (the newest, topmost, first)
        assert_eq!(s.dns.dkimpy_verify(msg), expect, "{case}: {text}");
        // OpenDKIM checks them all and is silent when every one passes
        if let Err(e) = s.dns.opendkim_verify(msg) {
            panic!("{case}: OpenDKIM: {e}\n{text}");
        }
        // the body is the 8-bit one sent, dots unstuffed
        assert!(text.contains("Hällo wörld"), "{text}");
        assert!(
            text.contains("\r\n.a line that starts with a dot\r\n"),
            "{text}"
        );
        if case.starts_with("both") {
            // over-signed: the From, Subject and Reply-To it has not
            let esp = text.split("DKIM-Signature:").nth(1).unwrap();
            let h: String = esp
                .split(';')
                .find_map(|t| t.trim().strip_prefix("h="))
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            assert_eq!(h.to_ascii_lowercase().matches("from").count(), 2, "{h}");
            assert_eq!(h.to_ascii_lowercase().matches("reply-to").count(), 1, "{h}");
        }
    }
}

#[test]
fn a_changed_message_fails_both_verifiers() {
    // the verifiers are not agreeing with anything: a body changed after
    // signing fails in both
    let s = setup();
    let got = relay(&s, &["ed-simple", "rsa-relaxed"]);
    for (case, msg) in got {
        // as relayed it verifies...
        assert_eq!(
            s.dns.dkimpy_verify(&msg),
            vec![("sluice.test".to_string(), None)]
        );
        assert_eq!(s.dns.opendkim_verify(&msg), Ok(()), "{case}");
        // ...and with one word of the body changed, or of a signed
        // header, it does not
        let text = String::from_utf8(msg).unwrap();
        let body = text.replace("wörld", "world");
        let header = text.replacen("Subject:  Grüße", "Subject:  Grüsse", 1);
        for (what, tampered, reason) in [
            ("body", body, "body hash mismatch"),
            ("header", header, "verify returned false"),
        ] {
            let verdict = s.dns.dkimpy_verify(tampered.as_bytes());
            assert_eq!(verdict.len(), 1, "{case} {what}");
            let why = verdict[0].1.as_deref().unwrap_or_default();
            assert!(why.contains(reason), "{case} {what}: {why:?}");
            let e = s.dns.opendkim_verify(tampered.as_bytes()).unwrap_err();
            assert!(!e.trim().is_empty(), "{case} {what}");
        }
    }
}

#[test]
fn a_wrong_key_path_fails_validate_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("keys/missing.pem");
    let policy = format!(
        r#"
local signer = kumo.dkim.rsa_sha256_signer {{
  domain = 'sluice.test', selector = 's1', headers = {{ 'From' }},
  key = '{}',
}}
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{dir}/spool' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0' }}
end)
kumo.on('smtp_server_message_received', function(msg) msg:dkim_sign(signer) end)
"#,
        missing.display(),
        dir = dir.path().display()
    );
    let err = validate_fails(dir.path(), &policy);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("policy.lua:2"), "{err}");
}

#[test]
fn a_key_that_fails_at_reception_is_refused_with_a_4xx_never_sent_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(&[]);
    let policy = format!(
        "{}{}",
        relay_policy(sink.port, "", ""),
        format_args!(
            r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:dkim_sign(kumo.dkim.rsa_sha256_signer {{
    domain = 'sluice.test', selector = 's1', headers = {{ 'From' }},
    key = '{}/gone.pem',
  }})
end)
"#,
            dir.path().display()
        )
    );
    let mta = Mta::start(&policy);
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    c.command("EHLO client.test");
    let (code, text) = c.transaction(
        "news@sluice.test",
        "someone@dest.test",
        "From: news@sluice.test\r\n\r\nbody",
    );
    assert!((400..500).contains(&code), "{code} {text}");
    // refused, so never spooled: nothing to send, signed or not
    assert!(sink.messages().is_empty());
    assert_eq!(sluice_tests::count(&mta.records(), "Reception"), 0);
}

/// The chart's policy with the operator's rendering of the DkimSigner
/// example and a user's module, as `--validate` loads it: the chart signs
/// in smtp_server_message_received itself unless a module handles that
/// event, which then must call `dkim_sign` and say so
/// (`mta.userPolicy.signsDkim`); otherwise loading fails, naming the
/// module's line and the value to set.
#[test]
fn the_charts_policy_signs_with_dkim_signers_or_leaves_it_to_a_users_handler() {
    use sluice_tests::chart;
    let setup = |module: Option<&str>, sets: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        // rules files are read from the pod's paths at init: not here
        let mut all = vec![
            "mta.bounceClassifier.enabled=false",
            "mta.shaping.enabled=false",
        ];
        all.extend(sets);
        let docs = chart::documents(&chart::template(None, &all).unwrap());
        let cm = chart::find(&docs, "ConfigMap", "rel-sluice-mta");
        for (name, text) in cm["data"].as_object().unwrap() {
            std::fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
        }
        let examples = sluice_tests::fleet::root_path("examples/operator/dkim");
        let out = std::process::Command::new(sluice_tests::binary("sluice-operator"))
            .args(["render", "-f", &examples, "-o"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", sluice_tests::text(&out));
        if let Some(m) = module {
            std::fs::write(dir.path().join("mine.lua"), m).unwrap();
        }
        dir
    };
    let init = |dir: &tempfile::TempDir| dir.path().join("init.lua");

    // no module of the user's: the chart registers the signing
    let dir = setup(None, &[]);
    let o = sluice_tests::validate_policy(&init(&dir));
    assert!(o.status.success(), "{}", sluice_tests::text(&o));

    // a module that handles the event itself, without saying so
    let handler = "local kumo = require 'kumo'\n\
                   kumo.on('smtp_server_message_received', function(msg) end)\n";
    let dir = setup(Some(handler), &["mta.userPolicy.modules={mine}"]);
    let o = sluice_tests::validate_policy(&init(&dir));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("mine.lua:2"), "{err}");
    assert!(err.contains("mta.userPolicy.signsDkim=true"), "{err}");
    assert!(err.contains("dkim_sign(msg)"), "{err}");

    // ... and one that signs as the chart says
    let composed = "local kumo = require 'kumo'\n\
                    kumo.on('smtp_server_message_received', function(msg)\n\
                      msg:set_meta('tenant', 'mine')\n\
                      require('sluice-generated').dkim_sign(msg)\n\
                    end)\n";
    let dir = setup(
        Some(composed),
        &[
            "mta.userPolicy.modules={mine}",
            "mta.userPolicy.signsDkim=true",
        ],
    );
    let o = sluice_tests::validate_policy(&init(&dir));
    assert!(o.status.success(), "{}", sluice_tests::text(&o));
}
