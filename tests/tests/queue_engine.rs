//! The queue engine end to end: max_message_rate, requeue_message, scheduling.

use serde_json::Value;
use sluice_tests::*;
use std::time::Duration;

fn event_secs(r: &Value) -> f64 {
    rfc3339_secs(r["event_time"].as_str().unwrap())
}

fn of<'a>(recs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["type"] == kind).collect()
}

/// 60 messages into a queue with max_message_rate = '10/s': throttled
/// messages are `Delayed` (never TransientFailure) and keep num_attempts 0,
/// and over any window the rate is never exceeded.
#[test]
fn queue_max_message_rate_paces_promotion() {
    let mta = Mta::start(&maildir_policy("", "max_message_rate = '10/s'"));
    let o = python_client(
        "smtp_send.py",
        &[
            "--port",
            &mta.port.to_string(),
            "--count",
            "60",
            "--concurrency",
            "6",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(30), "60 deliveries", |r| {
        count(r, "Delivery") == 60
    });
    let deliveries = of(&recs, "Delivery");
    assert!(deliveries.iter().all(|d| d["num_attempts"] == 0));
    assert_eq!(count(&recs, "TransientFailure"), 0);
    let delayed = of(&recs, "Delayed");
    assert!(delayed.len() >= 50, "{}", delayed.len());
    for d in &delayed {
        assert_eq!(d["response"]["code"], 400);
        assert!(
            d["response"]["content"]
                .as_str()
                .unwrap()
                .starts_with("Context: MessageRateThrottle. Next due in ")
        );
    }
    // the throttle's timing is unit-tested with a paused clock (throttle,
    // queue::retry); here: the rate is never exceeded, whatever the load.
    // Over any window of L seconds at most 10 + 10L promotions (+1 for clock edges)
    let mut times: Vec<f64> = deliveries.iter().map(|r| event_secs(r)).collect();
    times.sort_by(f64::total_cmp);
    for (i, start) in times.iter().enumerate() {
        for l in 1..=5 {
            let n = times[i..]
                .iter()
                .take_while(|t| **t < start + l as f64)
                .count();
            assert!(n <= 10 + 10 * l + 1, "{n} deliveries within {l}s");
        }
    }
}

/// Seed 003 unchanged: after the third failed attempt the message moves to
/// the smart-host queue `[10.0.0.1]` and is delivered there. (The smart host
/// here is a maildir queue; the SMTP version comes with SMTP delivery.)
#[test]
fn requeue_seed_moves_the_message_to_the_smart_host_after_the_third_attempt() {
    let mta = Mta::start(&policy(
        "",
        r#"
dofile('{ROOT}/examples/seeds/requeue_message_smart_host.lua')
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == '[10.0.0.1]' then
    return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/smarthost' } }
  end
  -- the original destination always fails: its maildir cannot be created
  return kumo.make_queue_config { retry_interval = '1 second', protocol = { maildir_path = '{DIR}/blocked/maildir' } }
end)
"#,
    ));
    std::fs::write(mta.path("blocked"), b"a file, not a directory").unwrap();
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(20), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let kinds = sequence(&recs);
    assert_eq!(
        kinds,
        vec![
            ("Reception", "example.com", 0),
            ("TransientFailure", "example.com", 0),
            ("TransientFailure", "example.com", 1),
            ("TransientFailure", "example.com", 2),
            ("Delivery", "[10.0.0.1]", 3),
        ]
    );
    assert_eq!(mta.maildir_files("smarthost").len(), 1);
}

#[test]
fn requeue_handlers_chain_reject_and_rebind_as_the_source_does() {
    let mta = Mta::start(&policy(
        "",
        r#"
kumo.on('requeue_message', function(msg, response, context, increment, delay)
  local rcpt = msg:recipient()
  if rcpt == 'reject@example.com' then
    kumo.reject(451, 'x')
  end
  if rcpt == 'stop@example.com' then
    return nil -- an explicit nil ends the chain
  end
  -- no return: the next handler runs
end)
kumo.on('requeue_message', function(msg, response, context, increment, delay)
  assert(context[1] == 'LoggedTransientFailure', context[1])
  assert(increment == true and delay == nil)
  assert(response:find('^400 '), response)
  msg:set_meta('queue', 'moved.example')
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'moved.example' then
    return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/moved' } }
  end
  return kumo.make_queue_config { retry_interval = '1 hour', protocol = { maildir_path = '{DIR}/blocked/maildir' } }
end)
"#,
    ));
    std::fs::write(mta.path("blocked"), b"x").unwrap();
    for to in ["reject@example.com", "stop@example.com", "next@example.com"] {
        let o = swaks(mta.port, &["--to", to]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let recs = mta.wait_for_records(Duration::from_secs(10), "bounce and delivery", |r| {
        count(r, "Bounce") == 1 && count(r, "Delivery") == 1
    });
    let bounce = of(&recs, "Bounce")[0];
    assert_eq!(bounce["recipient"], "reject@example.com");
    assert_eq!(bounce["response"]["code"], 451);
    assert_eq!(bounce["response"]["content"], "x");
    let delivery = of(&recs, "Delivery")[0];
    assert_eq!(delivery["recipient"], "next@example.com");
    assert_eq!(delivery["queue"], "moved.example");
    assert_eq!(delivery["num_attempts"], 1);
    std::thread::sleep(Duration::from_secs(1));
    let recs = mta.records();
    // the stopped chain left 'stop' in its queue, waiting an hour
    assert_eq!(count(&recs, "TransientFailure"), 3);
    assert_eq!(count(&recs, "Delivery"), 1);
    assert_eq!(count(&recs, "Bounce"), 1);
}

#[test]
fn set_scheduling_holds_a_message_until_first_attempt_and_expires_it_at_expires() {
    let mta = Mta::start(&policy(
        "",
        r#"
kumo.on('smtp_server_message_received', function(msg)
  local now = os.time()
  local rcpt = msg:recipient()
  if rcpt == 'later@example.com' then
    msg:set_scheduling { first_attempt = os.date('!%Y-%m-%dT%H:%M:%SZ', now + 3) }
  elseif rcpt == 'expiring@fails.example' then
    local s = msg:set_scheduling { expires = os.date('!%Y-%m-%dT%H:%M:%SZ', now + 3) }
    assert(s.expires, 'normalised table returned')
  end
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'fails.example' then
    return kumo.make_queue_config { retry_interval = '2 seconds', protocol = { maildir_path = '{DIR}/blocked/maildir' } }
  end
  return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } }
end)
"#,
    ));
    std::fs::write(mta.path("blocked"), b"x").unwrap();
    let o = swaks(mta.port, &["--to", "later@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(5), "Delayed", |r| {
        count(r, "Delayed") == 1
    });
    let delayed = of(&recs, "Delayed")[0];
    assert!(
        delayed["response"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Context: Received, ScheduledForLater.")
    );
    assert_eq!(count(&recs, "Delivery"), 0);
    let recs = mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let gap = event_secs(of(&recs, "Delivery")[0]) - event_secs(of(&recs, "Reception")[0]);
    assert!(
        (1.5..=4.5).contains(&gap),
        "delivered {gap}s after reception"
    );

    // expires replaces max_age: failures every 2 s until the next try would be past it
    let o = swaks(mta.port, &["--to", "expiring@fails.example"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(15), "expiration", |r| {
        count(r, "Expiration") == 1
    });
    let exp = of(&recs, "Expiration")[0];
    assert_eq!(exp["response"]["code"], 551);
    assert!(
        exp["response"]["content"]
            .as_str()
            .unwrap()
            .contains("configured via set_scheduling"),
        "{exp}"
    );
    assert!(count(&recs, "TransientFailure") >= 1);
}

/// Every distinct destination makes a scheduled queue; an idle one goes
/// after its `reap_interval`, so 100,000 one-message destinations leave no
/// queue behind once their mail is delivered (memory does not grow with
/// every domain ever seen).
#[test]
fn a_hundred_thousand_one_message_destinations_leave_no_queue_behind() {
    let admin = free_port();
    let mut mta = Mta::prepare(&format!(
        r#"
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{DIR}}/spool' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{{PORT}}' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}
end)
-- every queue feeds one ready queue (one routing domain) of a null delivery
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config {{ reap_interval = '1s', protocol = {{ custom_lua = {{ constructor = 'make.null' }} }} }}
end)
kumo.on('make.null', function()
  local conn = {{}}
  function conn:send(msg)
    return 'OK'
  end
  return conn
end)
"#
    ));
    mta.spawn();
    let total = 100_000;
    let batch = 2_000;
    let started = std::time::Instant::now();
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import json, urllib.request
for start in range(0, {total}, {batch}):
    body = {{"envelope_sender": "bulk@example.org",
             "recipients": [{{"email": f"u@d{{i}}.example", "metadata": {{"routing_domain": "null.test"}}}}
                            for i in range(start, start + {batch})],
             "content": "Subject: one of many\r\n\r\nhello\r\n"}}
    r = urllib.request.Request("http://127.0.0.1:{admin}/api/inject/v1", data=json.dumps(body).encode(),
                               headers={{"Content-Type": "application/json"}})
    out = json.load(urllib.request.urlopen(r, timeout=120))
    assert out["success_count"] == {batch}, out
"#
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("injected in {:?}", started.elapsed());
    let summary = || http_json(admin, "/api/admin/queue-summary/v1?limit=1000000", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let delivered = || {
        let m = http_request(admin, "/metrics", None);
        m["samples"]["total_messages_delivered_total{service=Lua}"]
            .as_f64()
            .unwrap_or(0.0) as usize
    };
    // while the mail goes out, the queues exist (a cheap look: the top one)
    let most = summary_scheduled_total(admin);
    while delivered() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} delivered",
            delivered()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    loop {
        let s = summary();
        let queues = s["scheduled"].as_array().unwrap().len();
        if queues == 0 && s["ready"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queues} scheduled queues left after delivery"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(most > 0, "the queues existed before they were reaped");
    eprintln!("delivered and reaped after {:?}", started.elapsed());
}

/// How many scheduled queues the summary lists (asking for one entry only).
fn summary_scheduled_total(admin: u16) -> usize {
    let s = http_json(admin, "/api/admin/queue-summary/v1?limit=1", None);
    s["scheduled_queues"].as_u64().unwrap_or(0) as usize
}
