//! The admin HTTP listener and metrics, over real HTTP (Python's urllib) and
//! checked with Prometheus' own text-format parser.

use serde_json::Value;
use sluice_tests::*;
use std::time::Duration;

fn get(port: u16, path: &str) -> Value {
    http_request(port, path, None)
}

fn admin_policy(trusted_port: u16, untrusted_port: u16) -> String {
    policy_with_init(
        &format!(
            "kumo.start_http_listener {{ listen = '127.0.0.1:{trusted_port}' }}\n  \
             kumo.start_http_listener {{ listen = '127.0.0.1:{untrusted_port}', trusted_hosts = {{ '10.9.9.9' }} }}"
        ),
        "",
        "kumo.on('get_queue_config', function() return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } } end)",
    )
}

#[test]
fn metrics_config_and_probes_over_http() {
    let (admin, other) = (free_port(), free_port());
    let mut mta = Mta::start(&admin_policy(admin, other));
    for _ in 0..3 {
        assert!(swaks(mta.port, &["--to", "u@example.com"]).status.success());
    }
    mta.wait_for_records(Duration::from_secs(10), "3 deliveries", |r| {
        count(r, "Delivery") == 3
    });

    assert_eq!(get(admin, "/api/check-liveness/v1")["status"], 200);
    assert_eq!(get(admin, "/api/check-readiness/v1")["status"], 200);
    assert_eq!(get(admin, "/healthz/live")["status"], 200);

    let m = get(admin, "/metrics");
    assert_eq!(m["status"], 200, "{m}");
    // (the parser names counter samples `<name>_total`; the exposition uses
    // KumoMTA's metric names as they are)
    let samples = &m["samples"];
    assert_eq!(
        samples["total_messages_received_total{service=esmtp_listener}"], 3.0,
        "{samples}"
    );
    assert_eq!(
        samples["total_messages_delivered_total{service=Maildir}"], 3.0,
        "{samples}"
    );
    assert!(
        samples["total_connection_count_total{service=esmtp_listener}"]
            .as_f64()
            .unwrap()
            >= 3.0
    );
    assert!(
        samples["delivery_latency_seconds_sum{}"].as_f64().unwrap() > 0.0,
        "{samples}"
    );
    assert_eq!(samples["message_count{}"], 0.0);
    assert_eq!(samples["delivery_latency_seconds_count{}"], 3.0);

    // the config hash is the SHA-256 of the policy file, on the API and in metrics
    let o = std::process::Command::new("sha256sum")
        .arg(&mta.policy_path)
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let c = get(admin, "/api/admin/config/v1");
    let config: Value = serde_json::from_str(c["body"].as_str().unwrap()).unwrap();
    assert_eq!(config["hash"], hash.as_str());
    assert_eq!(config["last_reload_error"], Value::Null);
    assert_eq!(
        samples[format!("sluice_config_info{{hash={hash}}}").as_str()],
        1.0,
        "{samples}"
    );

    // a listener whose trusted_hosts leave loopback out: probes yes, admin
    // only with credentials, and this policy checks none (KumoMTA's 401)
    assert_eq!(get(other, "/api/check-liveness/v1")["status"], 200);
    assert_eq!(get(other, "/healthz/live")["status"], 200);
    assert_eq!(get(other, "/metrics")["status"], 401);
    let refused = get(other, "/api/admin/config/v1");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["www_authenticate"], "Basic realm=\"sluice\"");
    let refused = http_request_as(other, "/metrics", None, Some("ops:guess"));
    assert_eq!(refused["status"], 401, "no handler accepts anything");

    // draining: probes say so while a transaction keeps the daemon alive
    let mut busy = RawSmtp::connect(mta.port);
    busy.reply();
    busy.command("MAIL FROM:<a@example.org>");
    mta.sigterm();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(admin, "/api/check-readiness/v1")["status"] != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never went false"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(admin, "/api/check-liveness/v1")["status"], 503);
    // the process still answers: a liveness probe must not kill the drain
    assert_eq!(get(admin, "/healthz/live")["status"], 200);
    assert_eq!(get(admin, "/metrics")["samples"]["sluice_draining{}"], 1.0);
    busy.command("QUIT");
    mta.wait_exit(Duration::from_secs(15))
        .expect("exits after the drain");
}

/// Mail to `held.example` cannot be delivered (its maildir is not
/// writable), so it waits an hour between attempts: something to
/// summarise and to bounce.
fn queueing_policy(admin: u16, other: u16) -> String {
    policy_with_init(
        &format!(
            "kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n  \
             kumo.start_http_listener {{ listen = '127.0.0.1:{other}', trusted_hosts = {{ '10.9.9.9' }} }}"
        ),
        "",
        r#"
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'ops' and password == 's3cret'
end)
kumo.on('get_queue_config', function(domain)
  if domain == 'held.example' then
    return kumo.make_queue_config { retry_interval = '1 hour', protocol = { maildir_path = '/proc/sluice-cannot-write' } }
  end
  return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } }
end)
"#,
    )
}

fn inject_body(to: &[&str]) -> String {
    let recipients: Vec<Value> = to
        .iter()
        .map(|t| serde_json::json!({ "email": t }))
        .collect();
    serde_json::json!({
        "envelope_sender": "bulk@example.org",
        "recipients": recipients,
        "content": {
            "subject": "hello from HTTP",
            "text_body": "plain text",
            "html_body": "<p>html</p>",
            "from": { "email": "news@example.org", "name": "News" },
            "headers": { "X-Campaign": "spring" },
        },
    })
    .to_string()
}

fn summary_count(admin: u16, queue: &str) -> (u64, bool) {
    let s = http_json(admin, "/api/admin/queue-summary/v1", None);
    s["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .map(|q| (q["count"].as_u64().unwrap(), q["suspended"] == true))
        .unwrap_or((0, false))
}

#[test]
fn inject_summary_suspend_resume_and_bounce_over_http() {
    let (admin, other) = (free_port(), free_port());
    let mta = Mta::start(&queueing_policy(admin, other));

    // HTTP injection: one message per recipient, built from the parts
    let r = http_json(
        admin,
        "/api/inject/v1",
        Some(&inject_body(&[
            "a@example.com",
            "b@example.com",
            "h0@held.example",
        ])),
    );
    assert_eq!(r["success_count"], 3, "{r}");
    assert_eq!(r["fail_count"], 0);
    let recs = mta.wait_for_records(Duration::from_secs(10), "deliveries", |r| {
        count(r, "Delivery") == 2 && count(r, "TransientFailure") == 1
    });
    for rec in recs.iter().filter(|r| r["type"] == "Reception") {
        assert_eq!(rec["reception_protocol"], "HTTP");
        assert_eq!(rec["sender"], "bulk@example.org");
    }
    let files = mta.maildir_files("maildir");
    assert_eq!(files.len(), 2);
    let body = std::fs::read_to_string(&files[0]).unwrap();
    for want in [
        "From: \"News\" <news@example.org>",
        "Subject: hello from HTTP",
        "X-Campaign: spring",
        "multipart/alternative",
        "<p>html</p>",
    ] {
        assert!(body.contains(want), "{want} in {body}");
    }
    // a malformed request says what is wrong
    let bad = http_request(admin, "/api/inject/v1", Some(r#"{"envelope_sender": 5}"#));
    assert_eq!(bad["status"], 422);
    assert!(
        bad["body"].as_str().unwrap().contains("envelope_sender"),
        "{bad}"
    );
    // where the address is not trusted, inject, bounce and suspend need the
    // credentials http_server_validate_auth_basic accepts: 401 without or
    // with wrong ones, and nothing happens
    let one = inject_body(&["x@example.com"]);
    let suspend = r#"{"domain": "nowhere.example", "reason": "r", "duration": "1m"}"#;
    for (path, body) in [
        ("/api/inject/v1", one.as_str()),
        ("/api/admin/bounce/v1", suspend),
        ("/api/admin/suspend/v1", suspend),
    ] {
        for user in [None, Some("ops:wrong"), Some("intruder:s3cret")] {
            let r = http_request_as(other, path, Some(body), user);
            assert_eq!(r["status"], 401, "{path} as {user:?}: {r}");
        }
    }
    assert!(
        http_json(admin, "/api/admin/suspend/v1", None)
            .as_array()
            .unwrap()
            .is_empty()
    );
    let r = http_request_as(other, "/api/inject/v1", Some(&one), Some("ops:s3cret"));
    assert_eq!(r["status"], 200, "{r}");
    let r = http_request_as(
        other,
        "/api/admin/bounce/v1",
        Some(suspend),
        Some("ops:s3cret"),
    );
    assert_eq!(r["status"], 200, "{r}");
    let r = http_request_as(other, "/api/admin/bounce/v1", None, Some("ops:s3cret"));
    let rules: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(rules[0]["domain"], "nowhere.example", "{rules}");
    mta.wait_for_records(Duration::from_secs(10), "the credentialed injection", |r| {
        count(r, "Delivery") == 3
    });

    // five more wait in held.example; the summary counts them
    let held: Vec<String> = (1..=5).map(|i| format!("h{i}@held.example")).collect();
    let held_refs: Vec<&str> = held.iter().map(String::as_str).collect();
    http_json(admin, "/api/inject/v1", Some(&inject_body(&held_refs)));
    mta.wait_for_records(Duration::from_secs(10), "transient failures", |r| {
        count(r, "TransientFailure") == 6
    });
    assert_eq!(summary_count(admin, "held.example"), (6, false));

    // a suspension of no time at all lapses at once, and the MTA answers on
    // (the rule's expiry once raced the reply that describes it)
    for _ in 0..20 {
        let instant = http_json(
            admin,
            "/api/admin/suspend/v1",
            Some(r#"{"domain": "nowhere.example", "reason": "blink", "duration": "0s"}"#),
        );
        assert_eq!(instant["reason"], "blink", "{instant}");
    }
    assert_eq!(get(admin, "/api/check-liveness/v1")["status"], 200);

    // suspend example.com: new mail there waits; resuming delivers it
    let rule = http_json(
        admin,
        "/api/admin/suspend/v1",
        Some(r#"{"domain": "example.com", "reason": "maintenance", "duration": "1h"}"#),
    );
    http_json(
        admin,
        "/api/inject/v1",
        Some(&inject_body(&["c@example.com", "d@example.com"])),
    );
    let recs = mta.wait_for_records(Duration::from_secs(10), "held by the suspension", |r| {
        r.iter()
            .filter(|x| x["type"] == "Delayed")
            .filter(|x| {
                x["response"]["content"]
                    .as_str()
                    .unwrap()
                    .contains("AdminSuspended")
            })
            .count()
            == 2
    });
    assert_eq!(
        count(&recs, "Delivery"),
        3,
        "nothing delivered while suspended"
    );
    assert_eq!(summary_count(admin, "example.com"), (2, true));
    let listed = http_json(admin, "/api/admin/suspend/v1", None);
    assert_eq!(listed[0]["id"], rule["id"]);
    // resume: DELETE with the rule id
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import urllib.request as u; r = u.Request('http://127.0.0.1:{admin}/api/admin/suspend/v1', \
             data=b'{{\"id\": \"{}\"}}', method='DELETE', headers={{'Content-Type': 'application/json'}}); \
             print(u.urlopen(r).status)",
            rule["id"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "200",
        "{}",
        text(&o)
    );
    mta.wait_for_records(Duration::from_secs(10), "delivered after resume", |r| {
        count(r, "Delivery") == 5
    });
    assert_eq!(mta.maildir_files("maildir").len(), 5);

    // bounce held.example: the six waiting, and one arriving afterwards
    let bounce = http_json(
        admin,
        "/api/admin/bounce/v1",
        Some(r#"{"domain": "held.example", "reason": "cleanup", "duration": "10m"}"#),
    );
    assert_eq!(bounce["messages"], 6, "{bounce}");
    http_json(
        admin,
        "/api/inject/v1",
        Some(&inject_body(&["late@held.example"])),
    );
    let recs = mta.wait_for_records(Duration::from_secs(10), "admin bounces", |r| {
        count(r, "AdminBounce") == 7
    });
    for b in recs.iter().filter(|r| r["type"] == "AdminBounce") {
        assert_eq!(b["response"]["code"], 551);
        assert_eq!(
            b["response"]["content"],
            "Administrator bounced with reason: cleanup"
        );
    }
    assert_eq!(summary_count(admin, "held.example"), (0, false));
}

/// `/api/admin/config/v1` says who may relay through each listener, and a
/// listener relaying for private ranges by address alone is warned about
/// at start, in the log and in a metric (a masquerading proxy would let the
/// whole internet relay through it).
#[test]
fn each_listeners_relay_policy_is_reported_and_private_ranges_warned_about() {
    let admin = free_port();
    let mta = Mta::start(&policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "relay_hosts = { '127.0.0.1', '10.0.0.0/8', '192.168.1.0/24' }, \
         peer = { ['127.0.0.9'] = { require_proxy_protocol = true, relay_hosts = { '203.0.113.0/24' } } }",
        "",
    ));
    let config = http_json(admin, "/api/admin/config/v1", None);
    let listener = &config["listeners"][0];
    assert_eq!(listener["listen"], format!("127.0.0.1:{}", mta.port));
    assert_eq!(
        listener["relay_hosts"],
        serde_json::json!(["127.0.0.1/32", "10.0.0.0/8", "192.168.1.0/24"])
    );
    assert_eq!(
        listener["relay_private_ranges"],
        serde_json::json!(["10.0.0.0/8", "192.168.1.0/24"])
    );
    assert_eq!(listener["auth_offered"], false);
    assert_eq!(listener["peer"][0]["peer"], "127.0.0.9/32");
    assert_eq!(listener["peer"][0]["require_proxy_protocol"], true);
    assert_eq!(
        listener["peer"][0]["relay_hosts"],
        serde_json::json!(["203.0.113.0/24"])
    );
    let warning = listener["warning"].as_str().unwrap();
    assert!(
        warning.contains("externalTrafficPolicy: Cluster"),
        "{warning}"
    );
    let m = http_request(admin, "/metrics", None);
    let gauge = format!(
        "sluice_listener_relay_private_ranges{{listener=127.0.0.1:{}}}",
        mta.port
    );
    assert_eq!(m["samples"][gauge.as_str()], 2.0, "{m}");
    assert!(
        mta.stderr()
            .contains("relays for private ranges 10.0.0.0/8, 192.168.1.0/24"),
        "{}",
        mta.stderr()
    );
}
