//! The ESMTP server against real clients: swaks, Python's smtplib, openssl.

use serde_json::Value;
use sluice_tests::*;
use std::time::Duration;

fn results(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn swaks_message_is_received_logged_and_written_to_the_maildir() {
    let mta = Mta::start(&maildir_policy("", ""));
    let o = swaks(
        mta.port,
        &[
            "--to",
            "User@Example.COM",
            "--from",
            "me@example.org",
            "--body",
            "hello sluice",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.split("250 OK ids=").nth(1))
        .unwrap_or_else(|| panic!("no 250 ids in {out}"))
        .trim()
        .to_string();
    assert_eq!(id.len(), 32);
    let recs = mta.wait_for_records(Duration::from_secs(10), "Delivery", |r| {
        count(r, "Delivery") == 1
    });
    let reception = &recs.iter().find(|r| r["type"] == "Reception").unwrap();
    assert_eq!(reception["id"], id.as_str());
    assert_eq!(reception["queue"], "example.com");
    assert_eq!(reception["sender"], "me@example.org");
    assert_eq!(reception["recipient"], "User@Example.COM");
    assert_eq!(reception["response"]["code"], 250);
    assert_eq!(reception["peer_address"]["addr"], "127.0.0.1");
    assert_eq!(reception["reception_protocol"], "ESMTP");
    let delivery = recs.iter().find(|r| r["type"] == "Delivery").unwrap();
    assert_eq!(delivery["delivery_protocol"], "Maildir");
    assert_eq!(delivery["num_attempts"], 0);
    assert_eq!(
        delivery["response"]["content"],
        format!("User@Example.COM: wrote to maildir with id={id}")
    );
    let files = mta.maildir_files("maildir");
    assert_eq!(files.len(), 1);
    let body = std::fs::read_to_string(&files[0]).unwrap();
    assert!(body.starts_with("X-KumoRef: "), "{body}");
    assert!(
        body.contains(&format!("(Sluice) with ESMTP id {id}")),
        "{body}"
    );
    assert!(body.contains("\r\n\tfor <User@Example.COM>;"), "{body}");
    assert!(body.contains("hello sluice"), "{body}");
    // final disposition removes the message from the spool; the segment
    // file may remain but the log shows no retry pending
    assert_eq!(count(&mta.records(), "TransientFailure"), 0);
}

#[test]
fn starttls_with_a_generated_certificate_is_verified_by_smtplib_and_swaks() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let listener = format!(
        "hostname = 'localhost', tls_certificate = '{}', tls_private_key = '{}'",
        cert.display(),
        key.display()
    );
    let mta = Mta::start(&maildir_policy(&listener, ""));
    let port = mta.port.to_string();
    let o = python_client(
        "smtp_send.py",
        &[
            "--port",
            &port,
            "--count",
            "3",
            "--starttls",
            "--cafile",
            cert.to_str().unwrap(),
        ],
    );
    let res = results(&o);
    assert_eq!(res.len(), 3, "{}", text(&o));
    for r in &res {
        assert_eq!(r["code"], 250, "{r}");
        assert_eq!(r["tls"], true, "{r}");
    }
    let o = swaks(
        mta.port,
        &[
            "--to",
            "u@example.com",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            cert.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("TLS started"), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(10), "4 deliveries", |r| {
        count(r, "Delivery") == 4
    });
    let reception = recs.iter().find(|r| r["type"] == "Reception").unwrap();
    assert!(
        reception["tls_protocol_version"]
            .as_str()
            .unwrap()
            .starts_with("TLS"),
        "{reception}"
    );
    let files = mta.maildir_files("maildir");
    let body = std::fs::read_to_string(&files[0]).unwrap();
    assert!(body.contains("with ESMTPS tls TLS"), "{body}");
}

#[test]
fn starttls_is_offered_with_a_self_signed_default_certificate() {
    let mta = Mta::start(&maildir_policy("", ""));
    let o = swaks(mta.port, &["--to", "u@example.com", "--tls"]);
    assert!(o.status.success(), "{}", text(&o));
    mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mta = Mta::start(&maildir_policy("", ""));
    let o = swaks(
        mta.port,
        &["--to", "a@example.com,b@example.com", "--pipeline"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // and a hand-rolled burst: everything up to DATA in one write
    let mut c = RawSmtp::connect(mta.port);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.command("EHLO pipe.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    c.send(b"MAIL FROM:<p@example.org>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 354);
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n");
    let (code, ids) = c.reply();
    assert_eq!(code, 250, "{ids}");
    assert_eq!(
        ids.split_whitespace().count(),
        4,
        "one id per recipient: {ids}"
    );
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 221);
    mta.wait_for_records(Duration::from_secs(10), "4 deliveries", |r| {
        count(r, "Delivery") == 4
    });
}

#[test]
fn ten_megabyte_message_is_delivered_intact() {
    let mta = Mta::start(&maildir_policy("", ""));
    let size = 10 * 1024 * 1024;
    let o = python_client(
        "smtp_send.py",
        &["--port", &mta.port.to_string(), "--size", &size.to_string()],
    );
    let res = results(&o);
    assert_eq!(res[0]["code"], 250, "{}", text(&o));
    mta.wait_for_records(Duration::from_secs(30), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let files = mta.maildir_files("maildir");
    let len = std::fs::metadata(&files[0]).unwrap().len() as usize;
    assert!(len > size && len < size + 2048, "{len}");
}

#[test]
fn message_over_the_size_limit_gets_552_and_the_session_goes_on() {
    let mta = Mta::start(&maildir_policy("max_message_size = 1000000", ""));
    let port = mta.port.to_string();
    // smtplib announces SIZE=, so the refusal comes at MAIL FROM
    let o = python_client("smtp_send.py", &["--port", &port, "--size", "2000000"]);
    let res = results(&o);
    assert_eq!(res[0]["code"], 552, "{}", text(&o));
    assert!(
        res[0]["reply"]
            .as_str()
            .unwrap()
            .contains("5.3.4 message too big")
    );
    // without SIZE, the body is read to the end, refused, and the session continues
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    c.command("EHLO big.test");
    assert_eq!(c.command("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.command("RCPT TO:<b@example.com>").0, 250);
    assert_eq!(c.command("DATA").0, 354);
    let line = "x".repeat(900) + "\r\n";
    for _ in 0..1500 {
        c.send(line.as_bytes());
    }
    let (code, text) = c.command(".");
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4 message too big"));
    let (code, _) = c.transaction("a@example.org", "b@example.com", "Subject: small\r\n\r\nok");
    assert_eq!(code, 250);
    mta.wait_for_records(Duration::from_secs(10), "one delivery", |r| {
        count(r, "Delivery") == 1
    });
    let rejections = mta.records_of("Rejection");
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(rejections.iter().all(|r| r["response"]["code"] == 552));
}

#[test]
fn a_thousand_recipients_are_accepted_and_each_gets_a_copy() {
    let mta = Mta::start(&maildir_policy("", ""));
    let o = python_client(
        "smtp_send.py",
        &["--port", &mta.port.to_string(), "--rcpts", "1000"],
    );
    let res = results(&o);
    assert_eq!(res[0]["code"], 250, "{}", text(&o));
    assert_eq!(res[0]["rcpt_errors"], serde_json::json!({}));
    // the reply stays under the 512-octet limit and says how many ids it left out
    let reply = res[0]["reply"].as_str().unwrap();
    assert!(reply.len() < 510 && reply.ends_with(" more)"), "{reply}");
    mta.wait_for_records(Duration::from_secs(60), "1000 deliveries", |r| {
        count(r, "Delivery") == 1000
    });
    assert_eq!(mta.maildir_files("maildir").len(), 1000);
    // the log writer runs on its own thread: a 250 may come before its record
    mta.wait_for_records(Duration::from_secs(10), "1000 Reception records", |r| {
        count(r, "Reception") == 1000
    });
}

#[test]
fn recipient_limit_gives_452() {
    let mta = Mta::start(&maildir_policy("max_recipients_per_message = 4", ""));
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    c.command("EHLO r.test");
    c.command("MAIL FROM:<a@example.org>");
    for i in 0..4 {
        assert_eq!(c.command(&format!("RCPT TO:<u{i}@example.com>")).0, 250);
    }
    let (code, text) = c.command("RCPT TO:<u4@example.com>");
    assert_eq!(
        (code, text.trim_end()),
        (452, "452 4.5.3 too many recipients")
    );
}

#[test]
fn relay_from_a_non_relay_host_is_refused_with_550() {
    let mta = Mta::start(&maildir_policy("relay_hosts = { '10.99.0.0/16' }", ""));
    let o = swaks(
        mta.port,
        &["--to", "victim@example.com", "--from", "spam@example.org"],
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    let expected = "550 5.7.1 relaying not permitted for 127.0.0.1:";
    assert!(out.contains(expected), "{out}");
    let recs = mta.wait_for_records(Duration::from_secs(10), "Rejection", |r| {
        count(r, "Rejection") >= 1
    });
    let rej = recs.iter().find(|r| r["type"] == "Rejection").unwrap();
    assert_eq!(rej["response"]["code"], 550);
    assert_eq!(rej["sender"], "spam@example.org");
    assert_eq!(count(&recs, "Reception"), 0);
    let spool_bytes: u64 = std::fs::read_dir(mta.path("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(spool_bytes, 0, "nothing was spooled");
}

#[test]
fn garbage_and_malformed_commands_get_the_right_replies_and_the_session_goes_on() {
    let mta = Mta::start(&maildir_policy("", ""));
    let mut other = RawSmtp::connect(mta.port);
    assert_eq!(other.reply().0, 220);
    let mut c = RawSmtp::connect(mta.port);
    assert_eq!(c.reply().0, 220);
    c.send(b"\x00\xff\xfe\x80binary\r\n");
    assert_eq!(c.reply().0, 500);
    assert_eq!(c.command("XYZZY plugh").0, 502);
    assert_eq!(c.command("VRFY root").0, 502);
    assert_eq!(c.command("MAIL FROM:<broken").0, 501);
    assert_eq!(c.command("RCPT TO:<a@example.com>").0, 503);
    assert_eq!(c.command("DATA").0, 503);
    assert_eq!(c.command("EHLO").0, 501);
    let (code, text) = c.command(&"A".repeat(10000));
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("5.2.3 line too long"));
    // credentials over plaintext are refused unread (RFC 3207, 4954)
    assert_eq!(c.command("AUTH PLAIN AGFhAGI=").0, 530);
    assert_eq!(c.command("AUTH").0, 501);
    // the same session still works
    assert_eq!(c.command("EHLO ok.test").0, 250);
    assert_eq!(c.command("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.command("MAIL FROM:<a@example.org>").0, 503);
    assert_eq!(c.command("RCPT TO:<b@example.com>").0, 250);
    assert_eq!(c.command("DATA").0, 354);
    // a body line over the hard limit refuses the message, not the session
    c.send(format!("{}\r\n", "B".repeat(2000)).as_bytes());
    let (code, text) = c.command(".");
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("5.2.3"));
    // bare LF in the body is refused by default (invalid_line_endings = Deny)
    let (code, text) = c.transaction("a@example.org", "b@example.com", "Subject: x\nbare");
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.6.0"));
    assert_eq!(c.command("RSET").0, 250);
    assert_eq!(c.command("NOOP").0, 250);
    // the other session was not disturbed
    assert_eq!(other.command("EHLO other.test").0, 250);
    let (code, _) = other.transaction(
        "o@example.org",
        "p@example.com",
        "Subject: fine\r\n\r\nfine",
    );
    assert_eq!(code, 250);
    assert_eq!(c.command("QUIT").0, 221);
    mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
}

#[test]
fn endless_errors_close_the_session_with_421() {
    let mta = Mta::start(&maildir_policy("", ""));
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    for _ in 0..19 {
        assert_eq!(c.command("BOGUS").0, 502);
    }
    let (code, _) = c.command("BOGUS");
    assert_eq!(code, 502);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(c.is_closed());
}

#[test]
fn idle_client_gets_421_and_is_disconnected() {
    let mta = Mta::start(&maildir_policy("client_timeout = '1s'", ""));
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    let started = std::time::Instant::now();
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(
        text.contains("4.3.2") && text.contains("idle too long"),
        "{text}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(c.is_closed());
}

#[test]
fn connections_over_max_connections_get_421() {
    let mta = Mta::start(&maildir_policy("max_connections = 2", ""));
    let mut a = RawSmtp::connect(mta.port);
    let mut b = RawSmtp::connect(mta.port);
    assert_eq!(a.reply().0, 220);
    assert_eq!(b.reply().0, 220);
    let mut c = RawSmtp::connect(mta.port);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("too many concurrent sessions"), "{text}");
    drop(c);
    assert_eq!(a.command("QUIT").0, 221);
    assert!(a.is_closed());
    // the slot a held is free once its session has closed
    let mut d = RawSmtp::connect(mta.port);
    assert_eq!(d.reply().0, 220);
    assert_eq!(b.command("NOOP").0, 250);
}

#[test]
fn policy_rejection_in_message_received_refuses_the_transaction() {
    let mta = Mta::start(&policy(
        "",
        r#"
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value('Subject') == 'spam' then
    kumo.reject(550, '5.7.1 no spam please')
  end
  msg:set_meta('x_seen', conn_meta:get_meta('ehlo_domain'))
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir/{{ meta.x_seen }}' } }
end)
"#,
    ));
    let o = swaks(
        mta.port,
        &[
            "--to",
            "u@example.com",
            "--header",
            "Subject: spam",
            "--ehlo",
            "bad.test",
        ],
    );
    assert!(
        text(&o).contains("550 5.7.1 no spam please"),
        "{}",
        text(&o)
    );
    let o = swaks(
        mta.port,
        &[
            "--to",
            "u@example.com",
            "--header",
            "Subject: ham",
            "--ehlo",
            "good.test",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    assert_eq!(mta.maildir_files("maildir/good.test").len(), 1);
}

#[test]
fn a_broken_get_queue_config_gives_421_and_spools_nothing() {
    let mta = Mta::start(&policy(
        "",
        "kumo.on('get_queue_config', function(domain) error('boom in ' .. domain) end)",
    ));
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(text(&o).contains("421 4.3.0"), "{}", text(&o));
    assert!(text(&o).contains("technical difficulties"), "{}", text(&o));
    assert_eq!(count(&mta.records(), "Reception"), 0);
    assert!(
        mta.stderr().contains("boom in example.com"),
        "{}",
        mta.stderr()
    );
}
