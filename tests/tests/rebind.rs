//! Rebinding waiting mail (`/api/admin/rebind/v1`, `sluice rebind`, as
//! kcli's): messages stuck in backoff for a dead destination move to
//! another queue by their meta and are delivered at once, each with an
//! AdminRebind record; `rebind_message` decides per message when asked to;
//! a message whose queue does not change keeps its due time unless
//! `--always-flush`; requests that would do nothing, or could not, are
//! refused saying why.

use serde_json::{Value, json};
use sluice_tests::*;
use std::time::Duration;

/// `stuck.test` goes nowhere (port 9) and waits an hour between attempts;
/// every other domain goes to `sink`.
fn mta(admin: u16, sink: u16, rebind_handler: &str) -> Mta {
    Mta::start(&policy_with_init(
        &admin_listener(admin),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain)
  local port = {sink}
  if domain == 'stuck.test' then port = 9 end
  return kumo.make_queue_config {{
    retry_interval = '1 hour',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:' .. port }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
{rebind_handler}
"#
        ),
    ))
}

/// Send to each recipient and wait until every one has failed once.
fn stuck(mta: &Mta, rcpts: &[&str]) {
    for to in rcpts {
        let o = swaks(mta.port, &["--to", to]);
        assert!(o.status.success(), "{}", text(&o));
    }
    mta.wait_for_records(Duration::from_secs(20), "a failure each", |r| {
        count(r, "TransientFailure") >= rcpts.len()
    });
}

#[test]
fn rebind_moves_waiting_mail_to_another_queue_now() {
    let (admin, sink) = (free_port(), Sink::start(&[]));
    let mta = mta(admin, sink.port, "");
    stuck(&mta, &["a@stuck.test", "b@stuck.test"]);

    let (ok, out, err) = sluice_cli(
        admin,
        &[
            "--json",
            "rebind",
            "--domain",
            "stuck.test",
            "--set",
            "queue=rescue.test",
            "--reason",
            "route around the dead MX",
        ],
    );
    assert!(ok, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["messages"], 2, "{answer}");

    // due at once in their new queue: delivered long before the hour's retry
    let recs = mta.wait_for_records(Duration::from_secs(20), "two deliveries", |r| {
        count(r, "Delivery") == 2
    });
    let rebinds: Vec<&Value> = recs.iter().filter(|r| r["type"] == "AdminRebind").collect();
    assert_eq!(rebinds.len(), 2, "{recs:?}");
    for r in rebinds {
        assert_eq!(r["queue"], "rescue.test", "{r}");
        assert_eq!(
            r["response"]["content"],
            "Rebound from stuck.test to rescue.test: route around the dead MX"
        );
    }
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert_eq!(d["queue"], "rescue.test", "{d}");
    }
    assert_eq!(sink.messages().len(), 2);
}

#[test]
fn the_rebind_event_decides_and_an_unmoved_message_keeps_its_due_time() {
    let (admin, sink) = (free_port(), Sink::start(&[]));
    let handler = r#"
kumo.on('rebind_message', function(msg, data)
  -- only a's message moves, to the queue the request names
  if msg:recipient() == 'a@stuck.test' then msg:set_meta('queue', data.target) end
end)
"#;
    let mta = mta(admin, sink.port, handler);
    stuck(&mta, &["a@stuck.test", "b@stuck.test"]);
    let b = mta
        .records_of("TransientFailure")
        .into_iter()
        .find(|r| r["recipient"] == "b@stuck.test")
        .unwrap();
    let b_id = b["id"].as_str().unwrap().to_string();
    let inspect = || {
        http_json(
            admin,
            &format!("/api/admin/inspect-message/v1?id={b_id}"),
            None,
        )
    };
    let due_before = inspect()["message"]["due"].clone();
    assert!(!due_before.is_null());

    let r = http_request(
        admin,
        "/api/admin/rebind/v1",
        Some(
            &json!({ "domain": "stuck.test", "reason": "policy decides",
                     "data": { "target": "rescue.test" }, "trigger_rebind_event": true })
            .to_string(),
        ),
    );
    assert_eq!(r["status"], 200, "{r}");
    let recs = mta.wait_for_records(Duration::from_secs(20), "a's delivery", |r| {
        count(r, "Delivery") == 1
    });
    assert_eq!(
        count(&recs, "AdminRebind"),
        1,
        "only the moved message logs"
    );
    let moved = recs.iter().find(|r| r["type"] == "Delivery").unwrap();
    assert_eq!(moved["recipient"], "a@stuck.test");
    // b stayed where it was, due when it was
    let b_now = inspect();
    assert_eq!(b_now["message"]["due"], due_before, "{b_now}");
    assert!(b_now["message"]["meta"].get("queue").is_none(), "{b_now}");

    // --always-flush makes it due now: it is tried again at once
    let (ok, out, err) = sluice_cli(
        admin,
        &[
            "rebind",
            "--everything",
            "--always-flush",
            "--reason",
            "try again",
        ],
    );
    assert!(ok, "{out}{err}");
    mta.wait_for_records(Duration::from_secs(20), "b's second attempt", |r| {
        count(r, "TransientFailure") == 3
    });
}

#[test]
fn rebinds_that_would_do_nothing_or_cannot_be_done_are_refused() {
    let (admin, sink) = (free_port(), Sink::start(&[]));
    let mta = mta(admin, sink.port, "");
    let post = |body: Value| http_request(admin, "/api/admin/rebind/v1", Some(&body.to_string()));

    let r = post(json!({ "domain": "stuck.test", "reason": "r", "trigger_rebind_event": true }));
    assert_eq!(r["status"], 400, "{r}");
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("no rebind_message handler"),
        "{r}"
    );
    let r = post(json!({ "domain": "stuck.test", "reason": "r" }));
    assert_eq!(r["status"], 400, "{r}");
    assert!(r["body"].as_str().unwrap().contains("nothing to do"), "{r}");
    let r = post(json!({ "domain": "stuck.test", "data": { "queue": "x" } }));
    assert_eq!(r["status"], 422, "no reason: {r}");

    // the CLI will not rebind everything by accident, nor send a bad --set
    let (ok, _, err) = sluice_cli(admin, &["rebind", "--set", "queue=x", "--reason", "r"]);
    assert!(!ok && err.contains("or --everything"), "{err}");
    let (ok, _, err) = sluice_cli(
        admin,
        &["rebind", "--everything", "--set", "queue", "--reason", "r"],
    );
    assert!(!ok && err.contains("give KEY=VALUE"), "{err}");
    let (ok, _, err) = sluice_cli(
        admin,
        &[
            "rebind",
            "--everything",
            "--data",
            r#"{"n": 1}"#,
            "--reason",
            "r",
        ],
    );
    assert!(!ok && err.contains("not a string"), "{err}");
    drop(mta);
}
