//! xfer between two real `sluice-mta` processes (KumoMTA's
//! `/api/admin/xfer/v1`): node A's destination refuses for now, so its
//! messages wait in backoff; moved to node B they keep their id, attempts
//! and due time, and B delivers them to its own destination, A never. A
//! target that refuses leaves them on A; the criteria move only what
//! matches; a SIGKILL of either node mid-transfer loses nothing.

use serde_json::Value;
use sluice_tests::*;
use std::time::{Duration, Instant};

/// A node: SMTP in, admin API on `admin`, relaying to `[127.0.0.1]:sink`.
/// A message without a tenant retries after 1 s, one of tenant `slow`
/// after 10 s doubling, of `slower` after 300 s doubling, any other after
/// an hour; `requeue_message` moves a message's first failure to tenant
/// `slow` (`slower` for later.example): a rebind, one more attempt. So
/// two quick attempts, then a wait of 20 s (10 minutes for later.example).
fn node(admin: u16, sink: u16, http_extra: &str, lua: &str) -> Mta {
    let init = format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' {http_extra} }}");
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local retry = '1 seconds'
  if tenant == 'slow' then retry = '10 seconds'
  elseif tenant == 'slower' then retry = '300 seconds'
  elseif tenant ~= nil then retry = '1 hour' end
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
    retry_interval = retry,
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
kumo.on('requeue_message', function(msg)
  if msg:get_meta('tenant') == nil then
    local later = msg:queue_name() == 'later.example'
    msg:set_meta('tenant', later and 'slower' or 'slow')
  end
end)
{lua}
"#
    );
    Mta::start(&policy_with_init(&init, "", &rest))
}

/// The message ids of `kind` records in `mta`'s log.
fn ids(mta: &Mta, kind: &str) -> Vec<String> {
    mta.records_of(kind)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn wait_ids(mta: &Mta, kind: &str, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let got = ids(mta, kind);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} {kind} records: {}",
            got.len(),
            mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `inspect-message`'s view of a spooled message.
fn inspect(admin: u16, id: &str) -> Value {
    http_json(
        admin,
        &format!("/api/admin/inspect-message/v1?id={id}"),
        None,
    )["message"]
        .clone()
}

fn send(mta: &Mta, to: &str, n: usize) {
    for i in 0..n {
        let body = format!("Subject: xfer {i}\r\nX-Test-Seq: {i}\r\n\r\nhello");
        RawSmtp::send_message(mta.port, to, &body);
    }
}

fn xfer(admin: u16, body: &str) -> Value {
    let r = http_request(admin, "/api/admin/xfer/v1", Some(body));
    assert_eq!(r["status"], 200, "{r}");
    serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
}

#[test]
fn a_message_in_backoff_moves_with_its_attempts_and_due_time_and_is_delivered_there() {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&[]);
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = node(admin_a, refusing.port, "", "");
    let b = node(admin_b, accepting.port, "", "");
    // due 20 s after their second attempt, and 10 minutes after it
    send(&a, "someone@example.com", 5);
    send(&a, "someone@later.example", 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.records_of("TransientFailure").len() < 20 {
        assert!(Instant::now() < deadline, "{}", a.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids_a = ids(&a, "Reception");
    let before: Vec<Value> = ids_a.iter().map(|id| inspect(admin_a, id)).collect();
    let now_ms = chrono_now_ms();
    let later = |m: &Value| m["meta"]["tenant"] == "slower";
    for m in &before {
        assert_eq!(m["num_attempts"], 2, "{m}");
        let due_in = m["due"].as_i64().unwrap() - now_ms;
        if later(m) {
            assert!(
                due_in > 9 * 60_000 && due_in <= 10 * 60_000 + 60_000,
                "{due_in} ms: {m}"
            );
        }
    }
    let answer = xfer(
        admin_a,
        &format!(r#"{{"target": "http://127.0.0.1:{admin_b}", "reason": "scale-down"}}"#),
    );
    assert_eq!(answer["messages"], 10, "{answer}");
    let out = wait_ids(&a, "XferOut", 10, Duration::from_secs(20));
    let inn = wait_ids(&b, "XferIn", 10, Duration::from_secs(20));
    let (mut out, mut inn, mut want) = (out, inn, ids_a.clone());
    out.sort();
    inn.sort();
    want.sort();
    assert_eq!(out, want, "every message left A under its id");
    assert_eq!(inn, want, "and arrived at B under it");
    let rebinds = a.records_of("AdminRebind");
    assert_eq!(rebinds.len(), 10);
    assert!(
        rebinds[0]["response"]["content"]
            .as_str()
            .unwrap()
            .ends_with(": scale-down"),
        "{}",
        rebinds[0]
    );
    for (id, was) in ids_a.iter().zip(&before) {
        let now = inspect(admin_b, id);
        assert_eq!(now["num_attempts"], 2, "{now}");
        let (due_a, due_b) = (was["due"].as_i64().unwrap(), now["due"].as_i64().unwrap());
        assert!(
            (due_a - due_b).abs() <= 1000,
            "due {due_a} on A, {due_b} on B"
        );
        assert_eq!(now["meta"]["tenant"], was["meta"]["tenant"], "{now}");
        assert!(now["meta"].get("queue").is_none(), "{now}");
    }
    // gone from A's spool
    let r = http_request(
        admin_a,
        &format!("/api/admin/inspect-message/v1?id={}", ids_a[0]),
        None,
    );
    assert_eq!(r["status"], 404, "{r}");
    // B delivers the ones due in 20 s when they fall due; A never does
    let delivered = wait_ids(&b, "Delivery", 5, Duration::from_secs(40));
    assert_eq!(delivered.len(), 5);
    assert_eq!(accepting.seqs().len(), 5);
    assert!(ids(&a, "Delivery").is_empty());
    for d in b.records_of("Delivery") {
        assert_eq!(d["num_attempts"], 2, "attempts kept: {d}");
        assert_eq!(d["queue"], "slow@example.com", "{d}");
    }
    // the ones due in 10 minutes wait on B for their time
    for (id, was) in ids_a.iter().zip(&before).filter(|(_, m)| later(m)) {
        let now = inspect(admin_b, id);
        assert_eq!(now["due"], was["due"], "{id}");
    }
}

/// Now, unix milliseconds.
fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_target_that_refuses_leaves_the_messages_and_says_why() {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let admin_a = free_port();
    let a = node(admin_a, refusing.port, "", "");
    // B takes transfers only with credentials it accepts
    let admin_b = free_port();
    let b = node(
        admin_b,
        refusing.port,
        ", trusted_hosts = { '10.9.9.9' }",
        "kumo.on('http_server_validate_auth_basic', function(u, p) return u == 'ops' and p == 'pw' end)",
    );
    send(&a, "x@held.example", 3);
    wait_ids(&a, "TransientFailure", 3, Duration::from_secs(20));
    let down = free_port();
    for (target, why) in [
        (format!("http://127.0.0.1:{down}"), "error sending request"),
        (format!("http://127.0.0.1:{admin_b}"), "401"),
        // a 4xx: A's own listener refuses its own mail
        (format!("http://127.0.0.1:{admin_a}"), "400"),
    ] {
        let is_xfer = |r: &Value| r["delivery_protocol"] == "xfer";
        let before = a
            .records_of("TransientFailure")
            .iter()
            .filter(|r| is_xfer(r))
            .count();
        xfer(
            admin_a,
            &format!(r#"{{"target": "{target}", "reason": "try", "domain": "held.example"}}"#),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let failures = loop {
            let recs: Vec<Value> = a
                .records_of("TransientFailure")
                .into_iter()
                .filter(is_xfer)
                .skip(before)
                .collect();
            if recs.len() >= 3 {
                break recs;
            }
            assert!(Instant::now() < deadline, "{}", a.stderr());
            std::thread::sleep(Duration::from_millis(100));
        };
        for f in &failures {
            let text = f["response"]["content"].as_str().unwrap();
            assert!(text.contains(why), "{target}: {text}");
        }
        assert!(ids(&a, "XferOut").is_empty());
        assert!(ids(&b, "XferIn").is_empty());
        // still on A: cancel puts them back in their own queue
        let xq = format!(
            "http://127.0.0.1:{}/.xfer.kumomta.internal",
            target.rsplit(':').next().unwrap()
        );
        let r = http_request(
            admin_a,
            "/api/admin/xfer/cancel/v1",
            Some(&format!(r#"{{"queue_name": "{xq}", "reason": "undo"}}"#)),
        );
        assert_eq!(r["status"], 200, "{r}");
        let cancelled: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(cancelled["messages"], 3, "{cancelled}");
    }
    for id in ids(&a, "Reception") {
        let m = inspect(admin_a, &id);
        assert!(
            m["meta"].get("queue").is_none(),
            "back in its own queue: {m}"
        );
        assert!(m["meta"].get("xfer_queue_info").is_none(), "{m}");
    }
    // not an xfer queue, and a bad target, are refused
    let r = http_request(
        admin_a,
        "/api/admin/xfer/cancel/v1",
        Some(r#"{"queue_name": "held.example", "reason": "x"}"#),
    );
    assert_eq!(r["status"], 400, "{r}");
    let r = http_request(
        admin_a,
        "/api/admin/xfer/v1",
        Some(r#"{"target": "ftp://x", "reason": "x"}"#),
    );
    assert_eq!(r["status"], 400, "{r}");
}

#[test]
fn xfer_by_domain_tenant_campaign_and_queue_name_moves_only_what_matches() {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&["-r", "RCPT"]);
    let (admin_a, admin_b) = (free_port(), free_port());
    // every message keeps its first queue: tenant and campaign come from headers
    let lua = r#"
kumo.on('smtp_server_message_received', function(msg)
  local t = msg:get_first_named_header_value('X-Tenant')
  if t then msg:set_meta('tenant', t) end
  local c = msg:get_first_named_header_value('X-Campaign')
  if c then msg:set_meta('campaign', c) end
end)"#;
    let a = node(admin_a, refusing.port, "", lua);
    let _b = node(admin_b, accepting.port, "", "");
    let send_to = |to: &str, headers: &str| {
        RawSmtp::send_message(a.port, to, &format!("{headers}Subject: m\r\n\r\nx"));
    };
    send_to("a@d1.example", "X-Tenant: held\r\n");
    send_to("a@d2.example", "X-Tenant: held\r\n");
    send_to("a@d3.example", "X-Tenant: t3\r\n");
    send_to("a@d4.example", "X-Tenant: held\r\nX-Campaign: c4\r\n");
    send_to("a@d5.example", "X-Tenant: held\r\n");
    wait_ids(&a, "TransientFailure", 5, Duration::from_secs(20));
    let target = format!("http://127.0.0.1:{admin_b}");
    let cases = [
        (r#""domain": "d1.example""#, "d1.example"),
        (r#""tenant": "t3""#, "d3.example"),
        (r#""campaign": "c4""#, "d4.example"),
        (r#""queue_names": ["held@d5.example"]"#, "d5.example"),
    ];
    for (n, (criterion, domain)) in cases.iter().enumerate() {
        let answer = xfer(
            admin_a,
            &format!(r#"{{"target": "{target}", "reason": "r", {criterion}}}"#),
        );
        assert_eq!(answer["messages"], 1, "{criterion}: {answer}");
        wait_ids(&a, "XferOut", n + 1, Duration::from_secs(20));
        let out = a.records_of("XferOut");
        let last = out.last().unwrap();
        assert!(
            last["recipient"].as_str().unwrap().ends_with(domain),
            "{criterion}: {last}"
        );
    }
    // d2 never matched
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.records_of("XferOut").len(), 4);
}

/// 2,000 messages held on A by a suspension (due now, so B delivers them
/// at once), moved to B, with `kill` SIGKILLing one of
/// them once `XferIn` records show the transfer half-way, then starting it
/// again on the same spool: B's destination gets every message at least
/// once. Returns how many it got twice or more.
fn killed_mid_transfer(kill_source: bool) -> usize {
    const TOTAL: usize = 2000;
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&[]);
    let (admin_a, admin_b) = (free_port(), free_port());
    let mut a = node(admin_a, refusing.port, "", "");
    let mut b = node(admin_b, accepting.port, "", "");
    let suspend = r#"{"domain": "example.com", "reason": "hold", "duration": "10m"}"#;
    assert_eq!(
        http_request(admin_a, "/api/admin/suspend/v1", Some(suspend))["status"],
        200
    );
    let out = a.path("client.jsonl");
    let status = smtp_send(a.port, TOTAL, &[], &out).wait().unwrap();
    assert!(status.success());
    assert_eq!(
        read_jsonl(&out).iter().filter(|r| r["code"] == 250).count(),
        TOTAL,
        "every message accepted"
    );
    wait_ids(&a, "Delayed", TOTAL, Duration::from_secs(60));
    let answer = xfer(
        admin_a,
        &format!(r#"{{"target": "http://127.0.0.1:{admin_b}", "reason": "drain"}}"#),
    );
    assert_eq!(answer["messages"], TOTAL, "{answer}");
    wait_ids(&b, "XferIn", TOTAL / 4, Duration::from_secs(60));
    let victim = if kill_source { &mut a } else { &mut b };
    victim.kill9();
    victim.spawn();
    let deadline = Instant::now() + Duration::from_secs(180);
    let seqs = loop {
        let seqs = accepting.seqs();
        if seqs.len() >= TOTAL {
            break seqs;
        }
        if Instant::now() >= deadline {
            let missing: Vec<u64> = (0..TOTAL as u64)
                .filter(|s| !seqs.contains_key(s))
                .collect();
            let summary = |admin| http_json(admin, "/api/admin/queue-summary/v1", None);
            panic!(
                "{} of {TOTAL} delivered, missing {missing:?}; A has {}, B has {}",
                seqs.len(),
                summary(admin_a),
                summary(admin_b),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!((0..TOTAL as u64).all(|s| seqs.contains_key(&s)));
    // nothing left on A; nothing on B's spool that it does not deliver (a
    // transfer spooled but never queued, as when a killed sender's request
    // was cancelled half-way, shows here)
    let summary = http_json(admin_a, "/api/admin/queue-summary/v1", None);
    assert_eq!(summary["scheduled_total"], 0, "{summary}");
    let spooled = |admin: u16| {
        let m = http_request(admin, "/metrics", None);
        m["samples"]["message_count{}"].as_f64().unwrap_or(-1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled(admin_b) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "B's spool keeps {}",
            spooled(admin_b)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ids(&a, "Delivery").is_empty(), "A delivered nothing itself");
    seqs.values().filter(|&&n| n > 1).count()
}

#[test]
fn a_source_killed_mid_transfer_resumes_it_and_loses_nothing() {
    let dups = killed_mid_transfer(true);
    eprintln!("source SIGKILLed mid-transfer: 2000 delivered, {dups} twice");
}

#[test]
fn a_target_killed_mid_transfer_loses_nothing() {
    let dups = killed_mid_transfer(false);
    eprintln!("target SIGKILLed mid-transfer: 2000 delivered, {dups} twice");
}

/// `kumo.xfer.xfer` in `requeue_message` (KumoMTA's API): a message that
/// fails on A goes to B at once, with the attempt it failed counted and
/// due when A would have retried it (after its queue's 1 s); B delivers it.
#[test]
fn kumo_xfer_xfer_in_requeue_message_moves_a_failed_message() {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&[]);
    let (admin_a, admin_b) = (free_port(), free_port());
    let b = node(admin_b, accepting.port, "", "");
    let init = format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin_a}' }}");
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }},
    retry_interval = '1 seconds',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
kumo.on('requeue_message', function(msg)
  if kumo.xfer.get_xfer_target(msg) == nil then
    kumo.xfer.xfer(msg, 'http://127.0.0.1:{admin_b}', 'failed here')
    -- an error here would leave the message on A
    assert(kumo.xfer.get_xfer_target(msg) == 'http://127.0.0.1:{admin_b}/')
  end
end)
"#,
        refusing.port
    );
    let a = Mta::start(&policy_with_init(&init, "", &rest));
    send(&a, "someone@example.com", 3);
    let delivered = wait_ids(&b, "Delivery", 3, Duration::from_secs(30));
    let mut want = ids(&a, "Reception");
    let mut got = delivered.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    for d in b.records_of("Delivery") {
        assert_eq!(d["num_attempts"], 1, "the failed attempt counted: {d}");
    }
    assert_eq!(
        ids(&a, "TransientFailure").len(),
        3,
        "one failure each on A"
    );
    assert_eq!(ids(&a, "XferOut").len(), 3);
    let rebind = &a.records_of("AdminRebind")[0];
    let text = rebind["response"]["content"].as_str().unwrap();
    assert!(text.contains(".xfer.kumomta.internal"), "{text}");
    assert!(ids(&a, "Delivery").is_empty());
}

/// `sluice xfer --wait` comes back once the last bound message has left,
/// saying how many were left as that changed.
#[test]
fn the_cli_waits_for_an_xfer_and_shows_what_is_left() {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&[]);
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = node(admin_a, refusing.port, "", "");
    // B must live until the end: it takes the messages
    let _b = node(admin_b, accepting.port, "", "");
    send(&a, "someone@later.example", 20);
    wait_ids(&a, "TransientFailure", 40, Duration::from_secs(30));
    let (ok, out, err) = sluice_cli(
        admin_a,
        &[
            "xfer",
            "--target",
            &format!("http://127.0.0.1:{admin_b}"),
            "--reason",
            "scale-down",
            "--wait",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(err.starts_with("xfer: "), "{err}");
    assert!(
        err.ends_with("xfer: 20 of 20 handed over, 0 to go\n"),
        "{err}"
    );
    // it came back once B had every message: B counts each XferIn before
    // it answers A, and A counts the XferOut the CLI follows after that
    let m = http_request(admin_b, "/metrics", None);
    assert_eq!(m["samples"]["sluice_xfer_in_total{}"], 20.0, "{m}");
    wait_ids(&a, "XferOut", 20, Duration::from_secs(10));
}
