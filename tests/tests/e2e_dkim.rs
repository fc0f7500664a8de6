//! DKIM signing declared with DkimSigner objects on the fleet harness (the
//! stand-in API server, the real operator, two real MTA pods running the
//! chart's policy): the operator reads the key from the Secret the chart
//! mounts and puts the DNS record in the status; both pods sign mail from
//! the domain; OpenDKIM and dkimpy verify both signatures against the
//! records the status gives, served by dnsmasq. A signer whose Secret is not
//! mounted is not Ready, saying why, and its domain's mail is refused with
//! a 4xx rather than sent unsigned.

use serde_json::Value;
use sluice_tests::dkim::{DkimDns, DkimKey, wire_form};
use sluice_tests::fleet::Fleet;
use sluice_tests::*;
use std::time::Duration;

fn condition<'a>(o: &'a Value, type_: &str) -> &'a Value {
    o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {o}"))
}

/// One message through `port` from `from` for the sink; the reply code and
/// text to the final dot.
fn send(port: u16, from: &str, subject: &str) -> (u16, String) {
    let mut c = RawSmtp::connect(port);
    c.reply();
    c.command("EHLO client.test");
    let body = format!(
        "From: News <{from}>\r\nTo: <u@sink.test>\r\nSubject: {subject}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sluice.test>\r\n\
         X-Long: a folded header that goes on and on,\r\n\tacross a second line\r\n\
         \r\nBonjour, caf\u{e9}.\r\n..a dot-stuffed line\r\n"
    );
    let reply = c.transaction(from, "u@sink.test", &body);
    if reply.0 == 250 {
        c.command("QUIT");
    }
    reply
}

#[test]
fn dkim_signers_sign_on_every_pod_and_their_status_gives_the_dns_record() {
    let keys = tempfile::tempdir().unwrap();
    let rsa = DkimKey::rsa(keys.path(), "rsa", 2048);
    let ed = DkimKey::ed25519(keys.path(), "ed25519");
    let rsa_pem = std::fs::read_to_string(&rsa.private).unwrap();
    let ed_pem = std::fs::read_to_string(&ed.private).unwrap();
    // no module of the user's: the chart's policy registers the signing
    let fleet = Fleet::start_with(
        2,
        &["mta.secrets={dkim-test}", "json:mta.userPolicy.modules=[]"],
        &[
            ("dkim-test", "rsa.pem", &rsa_pem),
            ("dkim-test", "ed25519.pem", &ed_pem),
        ],
    );
    fleet.kubectl(&[
        "create",
        "secret",
        "generic",
        "dkim-test",
        &format!("--from-file=rsa.pem={}", rsa.private.display()),
        &format!("--from-file=ed25519.pem={}", ed.private.display()),
    ]);
    let sink = Sink::start(&[]);
    let before = fleet.config_hash();
    fleet.apply_fixture("sink.yaml", &[("SINK_PORT", sink.port.to_string())]);
    fleet.apply_fixture("dkim.yaml", &[]);
    let hash = fleet.wait_rollout(Some(&before));
    fleet.wait_ready();

    // the status: what signs, where to publish, the record from the Secret
    let signer = fleet.get(&["get", "dkimsigner", "sluice-rsa"]);
    let status = &signer["status"];
    assert_eq!(status["signing"], "rsa-sha256 for sluice.test", "{signer}");
    assert_eq!(
        status["dnsNames"],
        serde_json::json!(["rsa1._domainkey.sluice.test"])
    );
    assert_eq!(status["dnsRecord"], rsa.record.as_str(), "{signer}");
    assert_eq!(status["configHash"], hash.as_str());
    assert_eq!(condition(&signer, "KeyReady")["status"], "True");
    assert_eq!(condition(&signer, "Ready")["reason"], "RolloutComplete");
    let ed_signer = fleet.get(&["get", "dkimsigner", "sluice-ed25519"]);
    assert_eq!(
        ed_signer["status"]["dnsRecord"],
        ed.record.as_str(),
        "{ed_signer}"
    );
    let table = fleet.kubectl(&["get", "dkimsigners"]);
    assert!(
        table.contains("ed25519-sha256") && table.contains("rsa1"),
        "{table}"
    );

    // both pods sign; mail from another domain is not signed
    for pod in &fleet.pods {
        let (code, text) = send(
            pod.smtp,
            "news@sluice.test",
            &format!("signed-{}", pod.name),
        );
        assert_eq!(code, 250, "{text}");
        let (code, text) = send(pod.smtp, "news@other.test", &format!("plain-{}", pod.name));
        assert_eq!(code, 250, "{text}");
    }
    let messages = wait_for_messages(&sink, 4);
    // the verifiers get the records the status named, as a DNS admin
    // would publish them
    let dns = DkimDns::start(&[
        (
            status["dnsNames"][0].as_str().unwrap(),
            status["dnsRecord"].as_str().unwrap(),
        ),
        (
            ed_signer["status"]["dnsNames"][0].as_str().unwrap(),
            ed_signer["status"]["dnsRecord"].as_str().unwrap(),
        ),
    ]);
    for pod in &fleet.pods {
        let signed = messages
            .iter()
            .find(|m| m.contains(&format!("Subject: signed-{}", pod.name)))
            .unwrap_or_else(|| panic!("{}'s signed message: {messages:?}", pod.name));
        assert_eq!(signed.matches("DKIM-Signature:").count(), 2, "{signed}");
        let wire = wire_form(signed);
        assert_eq!(dns.opendkim_verify(&wire), Ok(()), "{signed}");
        let verdicts = dns.dkimpy_verify(&wire);
        assert_eq!(
            verdicts,
            vec![
                ("sluice.test".to_string(), None),
                ("sluice.test".to_string(), None)
            ],
            "{signed}"
        );
        let plain = messages
            .iter()
            .find(|m| m.contains(&format!("Subject: plain-{}", pod.name)))
            .unwrap();
        assert!(!plain.contains("DKIM-Signature"), "{plain}");
    }

    // a signer whose Secret is not mounted: not Ready, saying why; its
    // domain's mail is refused for now, never sent unsigned
    let hash2 = fleet.config_hash();
    fleet.apply_fixture("dkim-broken.yaml", &[]);
    fleet.wait_rollout(Some(&hash2));
    let broken = fleet.get(&["get", "dkimsigner", "broken"]);
    let ready = condition(&broken, "Ready");
    assert_eq!(ready["status"], "False", "{broken}");
    assert_eq!(ready["reason"], "SecretNotMounted", "{broken}");
    assert!(
        ready["message"].as_str().unwrap().contains("mta.secrets"),
        "{broken}"
    );
    let (code, text) = send(fleet.pods[0].smtp, "news@broken.test", "broken");
    assert!((400..500).contains(&code), "{code} {text}");
    // the pod's log names the key file (the client is not told)
    let log = fleet.pods[0].stderr();
    assert!(log.contains("/not-mounted/rsa.pem"), "{log}");
    assert_eq!(sink.messages().len(), 4);
}

/// The sink's messages once it has `n`.
fn wait_for_messages(sink: &Sink, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let messages = sink.messages();
        if messages.len() >= n {
            return messages;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink has {} of {n} messages",
            messages.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
