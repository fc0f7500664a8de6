//! SMTP delivery through egress paths to Postfix's smtp-sink.

use serde_json::Value;
use sluice_tests::*;
use std::time::{Duration, Instant};

fn send(mta: &Mta, count: usize) {
    let o = python_client(
        "smtp_send.py",
        &[
            "--port",
            &mta.port.to_string(),
            "--count",
            &count.to_string(),
            "--concurrency",
            "4",
        ],
    );
    let n = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("\"code\": 250"))
        .count();
    assert_eq!(n, count, "{}", text(&o));
}

#[test]
fn messages_are_relayed_to_the_mx_list_host() {
    let sink = Sink::start(&[]);
    let mta = Mta::start(&relay_policy(sink.port, "", ""));
    send(&mta, 5);
    let recs = mta.wait_for_records(Duration::from_secs(20), "5 deliveries", |r| {
        count(r, "Delivery") == 5
    });
    let site = format!("unspecified->mx_list:[127.0.0.1]:{}@smtp_client", sink.port);
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert_eq!(d["site"], site.as_str());
        assert_eq!(d["delivery_protocol"], "ESMTP");
        assert_eq!(d["egress_pool"], "unspecified");
        assert_eq!(d["egress_source"], "unspecified");
        assert_eq!(d["peer_address"]["addr"], "127.0.0.1");
        assert_eq!(d["response"]["code"], 250);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.messages().len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 5);
    assert!(
        msgs.iter()
            .all(|m| m.contains("(Sluice) with ESMTP id") && m.contains("X-Test-Seq: "))
    );
}

#[test]
fn rcpt_4xx_is_a_transient_failure_and_5xx_a_bounce() {
    let soft = Sink::start(&["-r", "RCPT"]);
    let mta = Mta::start(&relay_policy(soft.port, "retry_interval = '1 hour'", ""));
    send(&mta, 1);
    let recs = mta.wait_for_records(Duration::from_secs(20), "transient failure", |r| {
        count(r, "TransientFailure") == 1
    });
    let tf = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure")
        .unwrap();
    assert_eq!(tf["response"]["code"].as_u64().unwrap() / 100, 4, "{tf}");
    assert_eq!(count(&recs, "Bounce"), 0);

    let hard = Sink::start(&["-f", "RCPT"]);
    let mta = Mta::start(&relay_policy(hard.port, "", ""));
    send(&mta, 1);
    let recs = mta.wait_for_records(Duration::from_secs(20), "bounce", |r| {
        count(r, "Bounce") == 1
    });
    let b = recs.iter().find(|r| r["type"] == "Bounce").unwrap();
    assert_eq!(b["response"]["code"].as_u64().unwrap() / 100, 5, "{b}");
    assert_eq!(count(&recs, "TransientFailure"), 0);
}

/// connection_limit = 2: the sink never sees more than 2 open connections,
/// counted by the kernel on the sink's port. 200 messages make the ready
/// queue long enough that the ramp (spec §4.4) asks for both.
#[test]
fn connection_limit_caps_open_connections_at_the_sink() {
    let sink = Sink::start(&[]);
    let mta = Mta::start(&relay_policy(
        sink.port,
        "",
        "connection_limit = 2, idle_timeout = '3s'",
    ));
    let port = mta.port.to_string();
    let client = std::thread::spawn(move || {
        python_client(
            "smtp_send.py",
            &["--port", &port, "--count", "200", "--concurrency", "10"],
        )
    });
    let mut max_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mta.records(), "Delivery") < 200 {
        max_seen = max_seen.max(sink.open_connections());
        assert!(Instant::now() < deadline, "not all delivered");
        std::thread::sleep(Duration::from_millis(5));
    }
    client.join().unwrap();
    // idle connections stay open for idle_timeout: count them once more
    max_seen = max_seen.max(sink.open_connections());
    assert!(max_seen <= 2, "saw {max_seen} connections");
    assert_eq!(max_seen, 2, "both allowed connections are used");
    // and every message reached the sink exactly once
    let mut seqs: Vec<u64> = sink
        .messages()
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("X-Test-Seq: "))
                .and_then(|s| s.trim().parse().ok())
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<u64>>());
}

/// max_deliveries_per_connection = 5: 20 messages over one connection at a
/// time means 4 sessions at the sink.
#[test]
fn max_deliveries_per_connection_opens_a_new_connection_every_5_messages() {
    let sink = Sink::start(&[]);
    let mta = Mta::start(&relay_policy(
        sink.port,
        "",
        "connection_limit = 1, max_deliveries_per_connection = 5",
    ));
    send(&mta, 20);
    mta.wait_for_records(Duration::from_secs(30), "20 deliveries", |r| {
        count(r, "Delivery") == 20
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.sessions() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // connections end after 5 messages, or after idle_timeout (5 s) with less
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.sessions(), 4, "sessions at the sink");
}

#[test]
fn required_tls_against_a_sink_without_tls_is_transient_and_opportunistic_delivers() {
    let sink = Sink::start(&[]);
    let mta = Mta::start(&relay_policy(
        sink.port,
        "retry_interval = '1 hour'",
        "enable_tls = 'Required'",
    ));
    send(&mta, 1);
    let recs = mta.wait_for_records(Duration::from_secs(20), "transient failure", |r| {
        count(r, "TransientFailure") == 1
    });
    let tf: &Value = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure")
        .unwrap();
    assert!(
        tf["response"]["content"]
            .as_str()
            .unwrap()
            .contains("STARTTLS"),
        "{tf}"
    );
    assert_eq!(count(&recs, "Delivery"), 0);

    let mta = Mta::start(&relay_policy(sink.port, "", "enable_tls = 'Opportunistic'"));
    send(&mta, 1);
    mta.wait_for_records(Duration::from_secs(20), "delivery", |r| {
        count(r, "Delivery") == 1
    });
}

/// Seed 003 unchanged over SMTP: a destination that always answers 4xx to
/// RCPT; after the third failed attempt the handler moves the message to
/// the smart-host queue `[10.0.0.1]`, which this policy points at a second
/// sink; the message is delivered there.
#[test]
fn requeue_seed_reroutes_to_the_smart_host_over_smtp() {
    let failing = Sink::start(&["-r", "RCPT"]);
    let smart = Sink::start(&[]);
    let mta = Mta::start(&policy(
        "",
        &format!(
            r#"
dofile('{{ROOT}}/examples/seeds/requeue_message_smart_host.lua')
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local port = {failing}
  if domain == '[10.0.0.1]' then
    port = {smart}
  end
  return kumo.make_queue_config {{
    retry_interval = '1 second',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:' .. port }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#,
            failing = failing.port,
            smart = smart.port
        ),
    ));
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(30), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let seen = sequence(&recs);
    assert_eq!(
        seen,
        vec![
            ("Reception", "example.com", 0),
            ("TransientFailure", "example.com", 0),
            ("TransientFailure", "example.com", 1),
            ("TransientFailure", "example.com", 2),
            ("Delivery", "[10.0.0.1]", 3),
        ]
    );
    let delivery = recs.last().unwrap();
    assert_eq!(
        delivery["site"],
        format!(
            "unspecified->mx_list:[127.0.0.1]:{}@smtp_client",
            smart.port
        )
        .as_str()
    );
    assert_eq!(smart.messages().len(), 1);
    // smtp-sink dumps even refused envelopes; no body ever reached it
    assert!(
        failing
            .messages()
            .iter()
            .all(|m| !m.contains("This is a test mailing"))
    );
}

/// Conformance C12: a pool with source A weight 2 and B weight 1 splits 300
/// messages of one queue 200/100.
#[test]
fn weighted_pool_splits_traffic_by_weight() {
    let sink = Sink::start(&[]);
    let mta = Mta::start(&policy(
        "",
        &format!(
            r#"
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {{ name = name, ehlo_domain = name .. '.sluice.test' }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'A', weight = 2 }}, {{ name = 'B', weight = 1 }} }} }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    egress_pool = 'pool',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#,
            port = sink.port
        ),
    ));
    send(&mta, 300);
    let recs = mta.wait_for_records(Duration::from_secs(60), "300 deliveries", |r| {
        count(r, "Delivery") == 300
    });
    let a = recs
        .iter()
        .filter(|r| r["type"] == "Delivery" && r["egress_source"] == "A")
        .count();
    let b = recs
        .iter()
        .filter(|r| r["type"] == "Delivery" && r["egress_source"] == "B")
        .count();
    assert!(
        (199..=201).contains(&a) && (99..=101).contains(&b),
        "A={a} B={b}"
    );
    assert!(
        recs.iter()
            .filter(|r| r["type"] == "Delivery")
            .all(|r| r["egress_pool"] == "pool")
    );
    let sites: std::collections::HashSet<&str> = recs
        .iter()
        .filter_map(|r| r["site"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(sites.len(), 2, "one ready queue per source: {sites:?}");
}

/// STARTTLS to a real TLS peer (a second sluice-mta with an openssl
/// certificate): RequiredInsecure delivers over TLS and both sides log the
/// cipher; Required verifies the certificate, so the self-signed one is a
/// TransientFailure that names the certificate problem.
#[test]
fn starttls_to_a_tls_peer_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let receiver = Mta::start(&maildir_policy(
        &format!(
            "hostname = 'localhost', tls_certificate = '{}', tls_private_key = '{}'",
            cert.display(),
            key.display()
        ),
        "",
    ));
    let sender = Mta::start(&relay_policy(
        receiver.port,
        "",
        "enable_tls = 'RequiredInsecure'",
    ));
    send(&sender, 3);
    let recs = sender.wait_for_records(Duration::from_secs(20), "deliveries", |r| {
        count(r, "Delivery") == 3
    });
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert!(
            d["tls_protocol_version"]
                .as_str()
                .unwrap()
                .starts_with("TLSv1_"),
            "{d}"
        );
        assert!(d["tls_cipher"].as_str().unwrap().starts_with("TLS"), "{d}");
    }
    // the maildir is written after the Reception is logged: wait for the
    // receiver's own deliveries before counting its files
    let received = receiver.wait_for_records(Duration::from_secs(10), "maildir deliveries", |r| {
        count(r, "Reception") == 3 && count(r, "Delivery") == 3
    });
    for r in received.iter().filter(|r| r["type"] == "Reception") {
        assert!(r["tls_cipher"].is_string(), "{r}");
    }
    assert_eq!(receiver.maildir_files("maildir").len(), 3);

    let strict = Mta::start(&relay_policy(
        receiver.port,
        "retry_interval = '1 hour'",
        "enable_tls = 'Required'",
    ));
    send(&strict, 1);
    let recs = strict.wait_for_records(Duration::from_secs(20), "transient failure", |r| {
        count(r, "TransientFailure") == 1
    });
    let tf = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure")
        .unwrap();
    let content = tf["response"]["content"].as_str().unwrap();
    assert!(content.to_lowercase().contains("certificate"), "{content}");
    assert_eq!(count(&recs, "Delivery"), 0);
}
