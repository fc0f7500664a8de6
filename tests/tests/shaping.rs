//! Shaping automation end to end: a receiver that starts answering
//! `421 4.7.0 [TSS04] ...` (Yahoo's "unexpected volume" deferral) after a
//! few messages; two sluice-mta processes sharing one real Redis with a
//! `shaping.toml` rule (Threshold 3/min → Suspend for 4 s). The threshold
//! counts both nodes' matches; within a second both nodes hold the path,
//! their Delayed records name the rule, and delivery resumes when the
//! suspension lapses. Without Redis, a suspension survives kill -9 in the
//! file beside the spool. A SetConfig rule slows the path to the rate it
//! names while it lasts.

use serde_json::Value;
use sluice_tests::redis::{PASSWORD, Redis};
use sluice_tests::reply_sink::ReplySink;
use sluice_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RULES: &str = r#"
# Yahoo's documented deferral for unexpected volume, as KumoMTA's
# community shaping.toml watches it
["shaped.test"]
connection_limit = 2

[["shaped.test".automation]]
regex = "421 4\\.7\\.0 \\[TSS04\\]"
trigger = {Threshold = "3/min"}
action = "Suspend"
duration = "4s"
"#;

fn node(redis: Option<&Redis>, sink: u16, rules: &std::path::Path) -> (Mta, u16) {
    let admin = free_port();
    let shared = redis
        .map(|r| {
            format!(
                "kumo.configure_redis_throttles {{ node = {}, password = '{PASSWORD}' }}",
                r.lua_node()
            )
        })
        .unwrap_or_default();
    let init = format!(
        "kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n  {shared}\n  \
         kumo.configure_shaping_automation {{ files = {{ '{}' }} }}",
        rules.display()
    );
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
    retry_interval = '1 seconds', max_retry_interval = '1 seconds',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#
    );
    (Mta::start(&policy_with_init(&init, "", &rest)), admin)
}

/// The actions `/api/admin/shaping/v1` lists. A plain HTTP/1.1 GET on a
/// socket, not the Python client: the test times when they appear.
fn actions(admin: u16) -> Vec<Value> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    c.write_all(
        b"GET /api/admin/shaping/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("{}");
    let body: Value = serde_json::from_str(body).unwrap();
    body["actions"].as_array().cloned().unwrap_or_default()
}

/// A Delayed record of a message held for a suspended path.
fn suspended_record(r: &Value) -> bool {
    r["type"] == "Delayed"
        && r["response"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Context: ReadyQueueSuspended: "))
}

fn seconds(rec: &Value) -> f64 {
    rfc3339_secs(rec["event_time"].as_str().unwrap())
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_provider_deferral_suspends_the_site_on_every_node_until_the_rule_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("shaping.toml");
    std::fs::write(&rules, RULES).unwrap();
    let recovered = Arc::new(AtomicBool::new(false));
    let r = recovered.clone();
    let sink = ReplySink::start(move |n, _| {
        // the first four are taken, then the provider defers until it recovers
        (n >= 4 && !r.load(Ordering::SeqCst)).then(|| {
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected \
             volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
                .to_string()
        })
    });
    let redis = Redis::start();
    let nodes: Vec<(Mta, u16)> = (0..2)
        .map(|_| node(Some(&redis), sink.port, &rules))
        .collect();
    for (mta, _) in &nodes {
        for i in 0..6 {
            let reply = RawSmtp::send_message(
                mta.port,
                &format!("user{i}@shaped.test"),
                "Subject: volume\r\n\r\nhello",
            );
            assert!(reply.starts_with("250"), "{reply}");
        }
    }

    // when each node first lists the suspension
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<Option<f64>> = vec![None, None];
    while seen.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "no suspension: {seen:?}");
        for (i, (_, admin)) in nodes.iter().enumerate() {
            if seen[i].is_none() && actions(*admin).iter().any(|a| a["action"] == "Suspend") {
                seen[i] = Some(now_secs());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // the provider recovers; the suspension still holds until it lapses
    recovered.store(true, Ordering::SeqCst);
    let action = actions(nodes[0].1)[0].clone();
    assert!(
        action["rule"]
            .as_str()
            .unwrap()
            .contains("shaped.test automation[1]"),
        "{action}"
    );
    let expires = rfc3339_secs(action["expires"].as_str().unwrap());

    // the threshold: the third TSS04 over both nodes
    let all_records: Vec<Value> = nodes.iter().flat_map(|(m, _)| m.records()).collect();
    let mut deferrals: Vec<f64> = all_records
        .iter()
        .filter(|r| {
            r["type"] == "TransientFailure"
                && r["response"]["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("[TSS04]"))
        })
        .map(seconds)
        .collect();
    deferrals.sort_by(f64::total_cmp);
    assert!(deferrals.len() >= 3, "{deferrals:?}");
    let threshold = deferrals[2];
    eprintln!(
        "threshold at the 3rd of {} deferrals; suspended on the nodes {:.3} s and {:.3} s after it",
        deferrals.len(),
        seen[0].unwrap() - threshold,
        seen[1].unwrap() - threshold
    );
    for (i, t) in seen.iter().enumerate() {
        let after = t.unwrap() - threshold;
        assert!(
            after < 1.0,
            "node {i} suspended {after:.2} s after the threshold"
        );
    }

    // every message delivered, none while the path was suspended
    let delivered = |m: &Mta| sluice_tests::count(&m.records(), "Delivery");
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.iter().map(|(m, _)| delivered(m)).sum::<usize>() < 12 {
        assert!(Instant::now() < deadline, "not all delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let suspended_from = seen.iter().map(|t| t.unwrap()).fold(f64::MAX, f64::min);
    for (i, (mta, _)) in nodes.iter().enumerate() {
        let records = mta.records();
        let late: Vec<f64> = records
            .iter()
            .filter(|r| r["type"] == "Delivery")
            .map(seconds)
            .filter(|t| *t > suspended_from)
            .collect();
        assert!(
            late.iter().all(|t| *t >= expires - 0.1),
            "node {i} delivered during the suspension (until {expires}): {late:?}"
        );
        // held messages were told why, naming the rule
        let held: Vec<&Value> = records.iter().filter(|r| suspended_record(r)).collect();
        assert!(!held.is_empty(), "node {i} logged no ReadyQueueSuspended");
        let content = held[0]["response"]["content"].as_str().unwrap();
        assert!(content.contains("shaped.test automation[1]"), "{content}");
    }
    // and the lapsed action is gone everywhere; the node that saw the
    // threshold counted it
    let mut enacted = 0.0;
    for (_, admin) in &nodes {
        assert!(actions(*admin).is_empty());
        let m = http_request(*admin, "/metrics", None);
        enacted += m["samples"]["sluice_shaping_actions_total{action=Suspend}"]
            .as_f64()
            .unwrap_or(0.0);
    }
    assert!(enacted >= 1.0, "{enacted}");
}

#[test]
fn without_redis_a_suspension_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("shaping.toml");
    std::fs::write(
        &rules,
        "[[\"shaped.test\".automation]]\nregex = \"TSS04\"\naction = \"Suspend\"\nduration = \"10 minutes\"\n",
    )
    .unwrap();
    let sink = ReplySink::start(|_, _| Some("421 4.7.0 [TSS04] deferred".into()));
    let (mut mta, admin) = node(None, sink.port, &rules);
    RawSmtp::send_message(mta.port, "a@shaped.test", "Subject: x\r\n\r\nx");
    let deadline = Instant::now() + Duration::from_secs(20);
    while actions(admin).is_empty() {
        assert!(Instant::now() < deadline, "no suspension");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = actions(admin);
    let held = |m: &Mta| m.records().iter().filter(|r| suspended_record(r)).count();
    let held_before = held(&mta);
    mta.kill9();
    mta.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http_request(admin, "/api/admin/shaping/v1", None);
        if r["status"] == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not back: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(actions(admin), before);
    let rcpts = sink.rcpts();
    // new mail for the path waits, it is not tried
    RawSmtp::send_message(mta.port, "b@shaped.test", "Subject: y\r\n\r\ny");
    mta.wait_for_records(Duration::from_secs(20), "held after the restart", |r| {
        r.iter().filter(|r| suspended_record(r)).count() > held_before
    });
    assert_eq!(sink.rcpts(), rcpts);
}

/// The times of the Delivery records of `recipients`, sorted.
fn delivered_at(mta: &Mta, recipients: &[String]) -> Vec<f64> {
    let mut t: Vec<f64> = mta
        .records()
        .iter()
        .filter(|r| r["type"] == "Delivery")
        .filter(|r| recipients.iter().any(|x| r["recipient"] == x.as_str()))
        .map(seconds)
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

#[test]
fn set_config_slows_the_path_while_it_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("shaping.toml");
    // a provider asking for a slower rate: two a second for 6 s
    std::fs::write(
        &rules,
        "[[\"shaped.test\".automation]]\nregex = \"TSS04\"\n\
         action = {SetConfig = {name = \"max_message_rate\", value = \"2/s\"}}\nduration = \"6s\"\n",
    )
    .unwrap();
    // the provider defers the first attempt only
    let sink = ReplySink::start(|n, _| {
        (n == 0).then(|| "451 4.7.0 [TSS04] Messages temporarily deferred".to_string())
    });
    let (mta, admin) = node(None, sink.port, &rules);
    RawSmtp::send_message(mta.port, "first@shaped.test", "Subject: x\r\n\r\nx");
    let deadline = Instant::now() + Duration::from_secs(20);
    let action = loop {
        if let Some(a) = actions(admin)
            .into_iter()
            .find(|a| a["action"] == "SetConfig")
        {
            break a;
        }
        assert!(Instant::now() < deadline, "no SetConfig action");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(action["config"]["name"], "max_message_rate", "{action}");
    assert_eq!(action["config"]["value"], "2/s", "{action}");

    let send = |tag: &str| -> Vec<String> {
        let to: Vec<String> = (0..6).map(|i| format!("{tag}{i}@shaped.test")).collect();
        for r in &to {
            let reply = RawSmtp::send_message(mta.port, r, "Subject: y\r\n\r\ny");
            assert!(reply.starts_with("250"), "{reply}");
        }
        to
    };
    let wait = |to: &[String]| -> Vec<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = delivered_at(&mta, to);
            if t.len() == to.len() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "delivered {} of {}",
                t.len(),
                to.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // six messages at two a second take at least 2 s (2.5 s by the rate)
    let slow = wait(&send("slow"));
    let spread = slow[5] - slow[0];
    assert!(spread >= 2.0, "six messages within {spread:.2} s at 2/s");

    // once the action lapses, the path runs at its own (unlimited) rate
    let deadline = Instant::now() + Duration::from_secs(20);
    while !actions(admin).is_empty() {
        assert!(Instant::now() < deadline, "the action did not lapse");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fast = wait(&send("fast"));
    let spread = fast[5] - fast[0];
    assert!(
        spread < 2.0,
        "six messages took {spread:.2} s after the lapse"
    );
}
