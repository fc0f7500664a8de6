//! Feedback loops and out-of-band bounces end to end, KumoMTA's way: a
//! `get_listener_domain` handler makes `fbl.acme.test` take ARF reports
//! (LogThenDrop), `bounce.acme.test` take DSNs (LogThenDrop) and
//! `reports.acme.test` log both and relay them. A message is first sent
//! out through the MTA to smtp-sink, so that it carries Sluice's own
//! `X-KumoRef` (with tenant and campaign); reports built around what the
//! sink received, and the RFC 5965 and RFC 3464 examples as published,
//! are then sent to an inbound listener that relays for nobody.

use serde_json::Value;
use sluice_tests::{
    Mta, RawSmtp, Sink, free_port, http_request, log_records, policy_with_init, text,
    validate_fails, workspace_root,
};
use std::time::Duration;

fn rules(name: &str) -> String {
    let dir = workspace_root().join("charts/sluice/files/bounce_classifier");
    dir.join(name).display().to_string()
}

fn reports_policy(sink: u16, inbound: u16, admin: u16) -> String {
    let init = format!(
        "kumo.start_esmtp_listener {{ listen = '127.0.0.1:{inbound}', relay_hosts = {{}} }}\n  \
         kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n  \
         kumo.configure_local_logs {{ log_dir = '{{DIR}}/meta-logs', meta = {{ 'tenant', 'campaign' }} }}\n  \
         kumo.configure_bounce_classifier {{ files = {{ '{}', '{}' }} }}",
        rules("providers.toml"),
        rules("rfc3463.toml")
    );
    let rest = format!(
        r#"
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender == 'news@acme.test' then
    conn_meta:set_meta('tenant', 'acme')
    conn_meta:set_meta('campaign', 'spring-sale')
  end
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'fbl.acme.test' then
    return kumo.make_listener_domain {{ log_arf = 'LogThenDrop' }}
  elseif domain == 'bounce.acme.test' then
    return kumo.make_listener_domain {{ log_oob = 'LogThenDrop' }}
  elseif domain == 'reports.acme.test' then
    return kumo.make_listener_domain {{ relay_to = true, log_arf = 'LogThenRelay', log_oob = true }}
  elseif domain == 'acme.test' then
    return kumo.make_listener_domain {{ relay_from = {{ '127.0.0.2/32' }} }}
  end
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#
    );
    policy_with_init(
        &init,
        "trace_headers = { include_meta_names = { 'tenant', 'campaign' } }",
        &rest,
    )
}

/// CRLF line endings, as on the wire.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// An ARF report as a mailbox provider's feedback loop sends one: the
/// recipient's address redacted (no Original-Rcpt-To), the whole original
/// returned.
fn arf(original: &str) -> String {
    crlf(&format!(
        "From: staff@feedback.example\n\
         To: fbl@fbl.acme.test\n\
         Subject: Complaint about a message from acme.test\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=feedback-report;\n\
         \tboundary=\"arf-1\"\n\
         \n\
         --arf-1\n\
         Content-Type: text/plain\n\
         \n\
         A user marked this message as spam.\n\
         \n\
         --arf-1\n\
         Content-Type: message/feedback-report\n\
         \n\
         Feedback-Type: abuse\n\
         User-Agent: Feedback-Loop/2.0\n\
         Version: 1\n\
         Original-Mail-From: <news@acme.test>\n\
         Arrival-Date: Thu, 03 Dec 2026 10:00:00 +0000\n\
         Source-IP: 192.0.2.25\n\
         Reported-Domain: acme.test\n\
         \n\
         --arf-1\n\
         Content-Type: message/rfc822\n\
         \n\
         {original}\n\
         --arf-1--\n"
    ))
}

/// A DSN as an MTA sends one after the mail was forwarded and refused
/// there: the Final-Recipient is the forwarding target, the original's
/// headers are returned.
fn dsn(original_headers: &str) -> String {
    crlf(&format!(
        "From: MAILER-DAEMON@mailhost.customer.test (Mail Delivery System)\n\
         To: bounces@bounce.acme.test\n\
         Subject: Undelivered Mail Returned to Sender\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\
         \tboundary=\"dsn-1\"\n\
         \n\
         --dsn-1\n\
         Content-Type: text/plain\n\
         \n\
         Your message could not be delivered to one or more recipients.\n\
         \n\
         --dsn-1\n\
         Content-Type: message/delivery-status\n\
         \n\
         Reporting-MTA: dns; mailhost.customer.test\n\
         Arrival-Date: Thu, 03 Dec 2026 10:00:01 +0000\n\
         \n\
         Final-Recipient: rfc822; alice.smith@store.customer.test\n\
         Action: failed\n\
         Status: 5.1.1\n\
         Remote-MTA: dns; store.customer.test\n\
         Diagnostic-Code: smtp; 550 5.1.1 <alice.smith@store.customer.test>: Recipient\n\
         \x20   address rejected: User unknown in local recipient table\n\
         \n\
         --dsn-1\n\
         Content-Type: text/rfc822-headers\n\
         \n\
         {original_headers}\n\
         --dsn-1--\n"
    ))
}

/// Send `body` from `from` to `to` on `port` in a session of its own;
/// the reply to RCPT when it refuses, else the reply to the final dot.
fn send(port: u16, from: &str, to: &str, body: &str) -> (u16, String) {
    let mut c = RawSmtp::connect(port);
    c.reply();
    c.command("EHLO reporter.test");
    assert_eq!(c.command(&format!("MAIL FROM:<{from}>")).0, 250);
    let rcpt = c.command(&format!("RCPT TO:<{to}>"));
    if rcpt.0 != 250 {
        return rcpt;
    }
    assert_eq!(c.command("DATA").0, 354);
    c.command(&format!("{body}\r\n."))
}

/// The id in a `250 OK ids=<id>` reply.
fn id_of(reply: &(u16, String)) -> String {
    assert_eq!(reply.0, 250, "{reply:?}");
    reply.1.rsplit("ids=").next().unwrap().trim().to_string()
}

fn records_for<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["id"] == id).collect()
}

#[test]
fn reports_to_listener_domains_are_logged_with_the_original_recipient() {
    let sink = Sink::start(&[]);
    let (inbound, admin) = (free_port(), free_port());
    let mta = Mta::start(&reports_policy(sink.port, inbound, admin));

    // the original goes out through the submission listener
    let sent = send(
        mta.port,
        "news@acme.test",
        "alice@customer.test",
        "From: news@acme.test\r\nTo: alice@customer.test\r\nSubject: Spring sale\r\n\
         Message-ID: <sale-1@acme.test>\r\n\r\n20% off everything.\r\n",
    );
    let original_id = id_of(&sent);
    mta.wait_for_records(Duration::from_secs(30), "the original delivered", |r| {
        r.iter()
            .any(|x| x["type"] == "Delivery" && x["id"] == original_id.as_str())
    });
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    let original = received[0].replace("\r\n", "\n");
    assert!(original.contains("X-KumoRef: "), "{original}");
    let headers = original.split("\n\n").next().unwrap();

    // a stranger may not relay through the inbound listener, even with
    // listener domains about
    let (code, _) = send(
        inbound,
        "x@stranger.test",
        "bob@elsewhere.test",
        "Subject: x\r\n\r\nx",
    );
    assert_eq!(code, 550);
    // nor may acme.test's sender from outside its relay_from range
    let (code, _) = send(
        inbound,
        "news@acme.test",
        "bob@elsewhere.test",
        "Subject: x\r\n\r\nx",
    );
    assert_eq!(code, 550);

    // the complaint: a Feedback record in place of its Reception, dropped
    let complaint = id_of(&send(inbound, "", "fbl@fbl.acme.test", &arf(&original)));
    // the bounce: Reception, then an OOB record for the original recipient
    let bounce = id_of(&send(
        inbound,
        "",
        "bounces@bounce.acme.test",
        &dsn(headers),
    ));
    // the published examples, unchanged
    let example = |name: &str| {
        std::fs::read_to_string(workspace_root().join("tests/reports").join(name)).unwrap()
    };
    let rfc5965 = id_of(&send(
        inbound,
        "",
        "fbl@fbl.acme.test",
        &example("rfc5965-b2.eml"),
    ));
    let rfc3464 = id_of(&send(
        inbound,
        "",
        "bounces@bounce.acme.test",
        &example("rfc3464-simple.eml"),
    ));
    // not a report: accepted for the report address, logged, never relayed
    let chatter = id_of(&send(
        inbound,
        "someone@else.test",
        "fbl@fbl.acme.test",
        "Subject: hello\r\n\r\njust saying hi\r\n",
    ));
    // LogThenRelay: the report is logged and delivered as usual
    let relayed = id_of(&send(
        inbound,
        "",
        "abuse@reports.acme.test",
        &arf(&original),
    ));
    // relay_from: the sender domain's own range may relay anywhere
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {inbound}, source_address=('127.0.0.2', 0))\n\
         s.sendmail('news@acme.test', ['carol@customer.test'], 'Subject: from the range\\r\\n\\r\\nhi\\r\\n')\n\
         s.quit()\n"
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let records = mta.wait_for_records(Duration::from_secs(30), "everything", |r| {
        sluice_tests::count(r, "Delivery") == 3
            && sluice_tests::count(r, "OOB") == 2
            && sluice_tests::count(r, "Feedback") == 3
    });
    let logged = log_records(&mta.path("meta-logs"));

    // the complaint names the original's recipient, tenant and campaign
    let kinds = |id: &str| -> Vec<String> {
        records_for(&records, id)
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds(&complaint), ["Feedback"]);
    let feedback = records_for(&logged, &complaint)[0];
    let report = &feedback["feedback_report"];
    assert_eq!(report["feedback_type"], "abuse");
    assert_eq!(report["user_agent"], "Feedback-Loop/2.0");
    assert_eq!(report["source_ip"], "192.0.2.25");
    let trace = &report["supplemental_trace"];
    assert_eq!(trace["recipient"], "alice@customer.test", "{report}");
    assert_eq!(trace["id"], original_id.as_str());
    assert_eq!(feedback["meta"]["tenant"], "acme", "{feedback}");
    assert_eq!(feedback["meta"]["campaign"], "spring-sale");

    // the bounce: the recipient we sent to, not the forwarding target
    assert_eq!(kinds(&bounce), ["Reception", "OOB"]);
    let oob = records_for(&logged, &bounce)[1];
    assert_eq!(oob["recipient"], "alice@customer.test", "{oob}");
    assert_eq!(oob["sender"], "bounces@bounce.acme.test");
    assert_eq!(oob["response"]["code"], 550);
    assert_eq!(
        oob["response"]["enhanced_code"],
        serde_json::json!({"class": 5, "subject": 1, "detail": 1})
    );
    assert!(
        oob["response"]["content"]
            .as_str()
            .unwrap()
            .contains("User unknown in local recipient table"),
        "{oob}"
    );
    assert_eq!(oob["bounce_classification"], "InvalidRecipient");
    assert_eq!(oob["peer_address"]["name"], "mailhost.customer.test");
    assert_eq!(oob["meta"]["tenant"], "acme");
    assert_eq!(oob["meta"]["campaign"], "spring-sale");

    // the RFC examples: parsed, their own recipients (no trace of ours)
    assert_eq!(kinds(&rfc5965), ["Feedback"]);
    let r = &records_for(&records, &rfc5965)[0]["feedback_report"];
    assert_eq!(
        r["original_rcpt_to"],
        serde_json::json!(["<user@example.com>"])
    );
    assert!(r["supplemental_trace"].is_null());
    assert_eq!(kinds(&rfc3464), ["Reception", "OOB"]);
    let oob = records_for(&records, &rfc3464)[1];
    assert_eq!(oob["recipient"], "louisl@larry.slip.umd.edu");
    assert_eq!(oob["sender"], "bounces@bounce.acme.test");
    assert_eq!(oob["response"]["code"], 426);
    assert_eq!(oob["peer_address"]["name"], "cs.utk.edu");

    // not a report: only its Reception
    assert_eq!(kinds(&chatter), ["Reception"]);
    // LogThenRelay: logged as Feedback, then delivered
    assert_eq!(kinds(&relayed), ["Feedback", "Delivery"]);
    // relay_from: relayed from 127.0.0.2
    let from_range = records
        .iter()
        .filter(|r| r["type"] == "Delivery" && r["recipient"] == "carol@customer.test")
        .count();
    assert_eq!(from_range, 1);

    // dropped messages are nowhere: not in the spool, not at the sink
    for id in [&complaint, &bounce, &rfc5965, &rfc3464, &chatter] {
        let r = http_request(
            admin,
            &format!("/api/admin/inspect-message/v1?id={id}"),
            None,
        );
        assert_eq!(r["status"], 404, "{id}: {r}");
    }
    assert_eq!(sink.messages().len(), 3);

    let metrics = http_request(admin, "/metrics", None);
    let samples = &metrics["samples"];
    assert_eq!(samples["sluice_reports_received_total{type=Feedback}"], 3.0);
    assert_eq!(samples["sluice_reports_received_total{type=OOB}"], 2.0);
}

#[test]
fn a_bad_listener_domain_fails_validate_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = validate_fails(
        dir.path(),
        &format!(
            "local kumo = require 'kumo'\nkumo.on('init', function()\n  \
             kumo.define_spool {{ name = 'data', path = '{}/spool' }}\nend)\n\
             kumo.on('get_listener_domain', function(domain, listener, conn_meta)\n  \
             return kumo.make_listener_domain {{ log_arf = 'Drop' }}\nend)\n",
            dir.path().display()
        ),
    );
    for want in [
        "get_listener_domain",
        "log_arf",
        "LogThenDrop",
        "policy.lua:6",
    ] {
        assert!(err.contains(want), "{want} not in: {err}");
    }
}
