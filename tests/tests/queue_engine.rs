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

/// 60 messages into a queue with max_message_rate = '10/s': 10 at once (the
/// burst the spec allows), then 10 per second, so the last is delivered
/// between 5 and 6 s after the first; throttled messages are `Delayed`
/// (never TransientFailure) and keep num_attempts 0.
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
    let mut times: Vec<f64> = deliveries.iter().map(|r| event_secs(r)).collect();
    times.sort_by(f64::total_cmp);
    let span = times[59] - times[0];
    assert!(
        (4.5..=6.5).contains(&span),
        "60 messages at 10/s took {span:.2}s"
    );
    // over any window of L seconds at most 10 + 10L promotions (+1 for clock edges)
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
