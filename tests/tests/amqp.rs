//! AMQP delivery (spec §5.4) and log hooks (spec §8) against a real
//! RabbitMQ started by each test.

use lapin::types::{AMQPValue, LongString};
use serde_json::Value;
use sluice_tests::rabbit::{PASSWORD, Rabbit};
use sluice_tests::*;
use std::collections::HashMap;
use std::time::Duration;

fn send(mta: &Mta, to: &str, subject: &str) {
    RawSmtp::send_message(
        mta.port,
        to,
        &format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n"),
    );
}

/// Seed 002 as published (with its syntax fixes): each message to the
/// `amqp` domain is published with routing key `logging`, and the broker's
/// Ack makes it a Delivery.
#[test]
fn seed_amqp_flow_publishes_each_message_once() {
    let rabbit = Rabbit::start();
    rabbit.declare_queue("logging", &[]);
    let mta = Mta::start(&policy(
        "",
        &format!(
            "AMQP_URL = '{}'\ndofile('{{ROOT}}/examples/seeds/amqp.lua')",
            rabbit.url()
        ),
    ));
    for i in 0..20 {
        send(&mta, &format!("user{i}@amqp"), &format!("seed-{i}"));
    }
    let got = rabbit.take("logging", 20, Duration::from_secs(30));
    assert_eq!(got.len(), 20, "every message published exactly once");
    let mut subjects: Vec<String> = got
        .iter()
        .map(|m| {
            assert_eq!(m.routing_key, "logging");
            let body = String::from_utf8_lossy(&m.payload).to_string();
            // the payload is the whole message: trace headers, headers, body
            assert!(body.contains("Received: from test"), "{body}");
            let subject = body
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string();
            assert!(body.contains(&format!("body of {subject}")));
            subject
        })
        .collect();
    subjects.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("seed-{i}")).collect();
    want.sort();
    assert_eq!(subjects, want);
    let recs = mta.wait_for_records(Duration::from_secs(10), "deliveries", |r| {
        count(r, "Delivery") == 20
    });
    let d = recs.iter().find(|r| r["type"] == "Delivery").unwrap();
    assert_eq!(d["response"]["content"], "OK");
    assert_eq!(d["peer_address"]["name"], "Lua via make.amqp");
    // the broker's password never reaches a log record or the daemon's log
    let all = std::fs::read_dir(mta.path("logs"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(!all.contains(PASSWORD));
    assert!(!mta.stderr().contains(PASSWORD));
}

/// A queue that refuses publishes (`x-overflow = reject-publish`, length 0)
/// makes the broker Nack; the seed's policy turns that into a 500 Bounce.
#[test]
fn broker_nack_bounces_through_the_seed_policy() {
    let rabbit = Rabbit::start();
    rabbit.declare_queue(
        "logging",
        &[
            ("x-max-length", AMQPValue::LongLongInt(0)),
            (
                "x-overflow",
                AMQPValue::LongString(LongString::from("reject-publish".as_bytes())),
            ),
        ],
    );
    let mta = Mta::start(&policy(
        "",
        &format!(
            "AMQP_URL = '{}'\ndofile('{{ROOT}}/examples/seeds/amqp.lua')",
            rabbit.url()
        ),
    ));
    send(&mta, "nacked@amqp", "refused");
    let recs = mta.wait_for_records(Duration::from_secs(20), "bounce", |r| {
        count(r, "Bounce") == 1
    });
    let b = recs.iter().find(|r| r["type"] == "Bounce").unwrap();
    assert_eq!(b["response"]["code"], 500);
    let content = b["response"]["content"].as_str().unwrap();
    let result: Value = serde_json::from_str(content).unwrap();
    assert_eq!(result["status"], "Nack", "{content}");
    assert_eq!(count(&recs, "Delivery"), 0);
}

/// `basic_publish` with the password read from a file: while the broker is
/// down each attempt is a TransientFailure and the message stays queued;
/// once it is up, the retry delivers it, once.
#[test]
fn broker_down_is_a_transient_failure_then_delivered() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("amqp-password");
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    let mta = Mta::start(&policy(
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s',
    max_retry_interval = '1s',
    protocol = {{ custom_lua = {{ constructor = 'make.amqp' }} }},
  }}
end)
kumo.on('make.amqp', function()
  local conn = {{}}
  function conn:send(msg)
    kumo.amqp.basic_publish {{
      routing_key = 'events',
      payload = msg:get_data(),
      content_type = 'message/rfc822',
      connection = {{
        host = '127.0.0.1',
        port = {port},
        username = 'sluice',
        password = {{ path = '{}' }},
        connect_timeout = '2s',
      }},
    }}
    return '250 published'
  end
  return conn
end)
"#,
            secret.display()
        ),
    ));
    send(&mta, "someone@example.com", "while-down");
    let recs = mta.wait_for_records(Duration::from_secs(20), "two transient failures", |r| {
        count(r, "TransientFailure") >= 2
    });
    let t = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure")
        .unwrap();
    assert_eq!(t["response"]["code"], 400);
    let content = t["response"]["content"].as_str().unwrap();
    assert!(content.contains("127.0.0.1"), "{content}");
    assert!(!content.contains(PASSWORD), "{content}");
    assert_eq!(count(&recs, "Delivery"), 0);

    // until the queue exists the broker would drop the message as
    // unroutable, so the MTA is kept out with a wrong password meanwhile;
    // the file is read at each attempt, as a rotated Secret would be
    std::fs::write(&secret, "not-the-password\n").unwrap();
    let rabbit = Rabbit::start_on(port);
    rabbit.declare_queue("events", &[]);
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    mta.wait_for_records(Duration::from_secs(30), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let got = rabbit.take("events", 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content_type.as_deref(), Some("message/rfc822"));
    assert!(String::from_utf8_lossy(&got[0].payload).contains("Subject: while-down"));
    assert!(!mta.stderr().contains(PASSWORD));
}

/// The log hook: every Reception and Delivery record of 100 messages
/// reaches RabbitMQ as JSON, once each; the hook's own deliveries are not
/// hooked again.
#[test]
fn log_hook_publishes_every_record_once() {
    let rabbit = Rabbit::start();
    rabbit.declare_queue("logging", &[]);
    let mta = Mta::start(&policy_with_init(
        "kumo.configure_log_hook { name = 'amqp', headers = { 'Subject' } }",
        "",
        &format!(
            r#"
kumo.on('should_enqueue_log_record', function(msg, hook_name)
  local log_record = msg:get_meta 'log_record'
  if hook_name == 'amqp' and log_record.queue ~= 'amqp-log' then
    msg:set_meta('queue', 'amqp-log')
    return true
  end
  return false
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'amqp-log' then
    return kumo.make_queue_config {{
      protocol = {{ custom_lua = {{ constructor = 'make.amqp' }} }},
    }}
  end
  return kumo.make_queue_config {{ protocol = {{ maildir_path = '{{DIR}}/maildir' }} }}
end)
kumo.on('make.amqp', function()
  local conn = {{}}
  function conn:send(msg)
    kumo.amqp.basic_publish {{
      routing_key = 'logging',
      payload = msg:get_data(),
      content_type = 'application/json',
      connection = {{ host = '127.0.0.1', port = {}, username = 'sluice', password = '{PASSWORD}' }},
    }}
    return 'published'
  end
  return conn
end)
"#,
            rabbit.port
        ),
    ));
    let out = python_client(
        "smtp_send.py",
        &[
            "--port",
            &mta.port.to_string(),
            "--count",
            "100",
            "--concurrency",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let got = rabbit.take("logging", 200, Duration::from_secs(60));
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for m in &got {
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        let rec: Value = serde_json::from_slice(&m.payload).expect("each payload is JSON");
        assert!(rec["headers"]["subject"].is_string(), "{rec}");
        *seen
            .entry((
                rec["type"].as_str().unwrap().to_string(),
                rec["id"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1;
    }
    let recs = mta.records();
    for kind in ["Reception", "Delivery"] {
        let ids: Vec<&str> = recs
            .iter()
            .filter(|r| r["type"] == kind && r["queue"] != "amqp-log")
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 100, "{kind} records in the local log");
        for id in ids {
            assert_eq!(
                seen.get(&(kind.to_string(), id.to_string())),
                Some(&1),
                "{kind} of {id} published exactly once"
            );
        }
    }
    assert_eq!(got.len(), 200, "nothing else was hooked");
    assert_eq!(mta.maildir_files("maildir").len(), 100);
}
