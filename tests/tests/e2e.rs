//! End to end: custom resources in, mail out. The chart's operator and two
//! MTA pods (see `sluice_tests::fleet`) against real peers: Postfix's
//! smtp-sink as the smart host, maildirs on the pods' spool volumes,
//! RabbitMQ, dnsmasq. Each scenario asserts what a user would see:
//! deliveries at the peers, log records, CR status and metrics.

use serde_json::Value;
use sluice_tests::fleet::*;
use sluice_tests::rabbit::Rabbit;
use sluice_tests::*;
use std::time::Duration;

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {obj}"))
}

fn deliveries(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "Delivery").collect()
}

fn event_secs(r: &Value) -> f64 {
    rfc3339_secs(r["event_time"].as_str().unwrap())
}

/// Scenario 1: `kubectl apply -f examples/operator` rolls out to both pods
/// (their admin API reports the operator's hash; the objects are Ready with
/// 2/2 pods); then mail for the mxList domain reaches the smart host, the
/// maildir domain lands under each pod's spool volume, and the AMQP domain
/// is published to RabbitMQ with the broker URL from the mounted Secret.
#[test]
fn the_examples_roll_out_to_both_pods_and_mail_reaches_every_destination() {
    let rabbit = Rabbit::start();
    rabbit.declare_queue("logging", &[]);
    let fleet = Fleet::start(&[("rabbitmq", "url", &rabbit.url())]);
    let sink = Sink::start(&[]);

    let empty = fleet.config_hash();
    fleet.kubectl(&["apply", "-f", &root_path("examples/operator")]);
    let hash = fleet.wait_rollout(Some(&empty));
    fleet.wait_ready();
    let qp = fleet.get(&["get", "qp", "smarthost"]);
    assert_eq!(qp["status"]["pods"], "2/2", "{qp}");
    assert_eq!(qp["status"]["configHash"], hash.as_str());
    assert_eq!(condition(&qp, "Ready")["reason"], "RolloutComplete");
    let table = fleet.kubectl(&["get", "queuepolicies"]);
    assert_eq!(table.matches("2/2").count(), 6, "{table}");

    // the examples' relay listens on 2525; this one is the test's sink
    fleet.kubectl(&[
        "patch",
        "egresspool",
        "relay",
        "--type=json",
        "-p",
        &format!(
            r#"[{{"op":"replace","path":"/spec/sources/0/remotePort","value":{}}}]"#,
            sink.port
        ),
    ]);
    fleet.wait_rollout(Some(&hash));

    for pod in &fleet.pods {
        for to in [
            "user@smarthost.example.com",
            "user@maildir.example.com",
            "events@amqp",
        ] {
            let body = format!("Subject: {to} via {}\r\n\r\nhello", pod.name);
            RawSmtp::send_message(pod.smtp, to, &body);
        }
    }
    for pod in &fleet.pods {
        let recs = pod.wait_for_records(Duration::from_secs(30), "3 deliveries", |r| {
            count(r, "Delivery") == 3
        });
        let smart = deliveries(&recs)
            .into_iter()
            .find(|r| r["queue"] == "smarthost.example.com")
            .unwrap();
        assert_eq!(smart["peer_address"]["name"], SMART_HOST, "{smart}");
        assert_eq!(smart["egress_pool"], "relay", "{smart}");
        let maildir = pod.path("/var/spool/sluice/maildir/maildir.example.com");
        let files = maildir_files(&maildir);
        assert_eq!(files.len(), 1, "{}", maildir.display());
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains(&format!("via {}", pod.name)), "{text}");
        // the user's module ran too
        assert!(text.contains("X-Content-Check: inline"), "{text}");
    }
    let relayed = sink.messages();
    assert_eq!(relayed.len(), 2);
    for pod in &fleet.pods {
        assert!(
            relayed
                .iter()
                .any(|m| m.contains(&format!("smarthost.example.com via {}", pod.name))),
            "{relayed:?}"
        );
    }
    let published = rabbit.take("logging", 2, Duration::from_secs(20));
    assert_eq!(published.len(), 2, "{published:?}");
    for pod in &fleet.pods {
        assert!(published.iter().any(|m| {
            String::from_utf8_lossy(&m.payload).contains(&format!("amqp via {}", pod.name))
        }));
    }
}

/// The fleet with the sink's pool, path and QueuePolicy (`sink.test`)
/// rolled out; the fixture's other files as given.
fn fleet_with_sink(fixtures: &[(&str, Vec<(&str, String)>)]) -> (Fleet, Sink) {
    let fleet = Fleet::start(&[]);
    let sink = Sink::start(&[]);
    let before = fleet.config_hash();
    fleet.apply_fixture("sink.yaml", &[("SINK_PORT", sink.port.to_string())]);
    for (file, vars) in fixtures {
        fleet.apply_fixture(file, vars);
    }
    fleet.wait_rollout(Some(&before));
    (fleet, sink)
}

/// Sends `n` messages for `domain` into each pod at once (on the port
/// `port_of` picks), the i-th pod's numbered from `seq_offset + i * n`;
/// asserts every one got a 250 and returns each pod's client results.
fn send_to_each(
    fleet: &Fleet,
    port_of: impl Fn(&MtaPod) -> u16,
    n: usize,
    domain: &str,
    seq_offset: usize,
) -> Vec<Vec<Value>> {
    let dir = tempfile::tempdir().unwrap();
    let out = |i: usize| dir.path().join(format!("{i}.jsonl"));
    let clients: Vec<_> = fleet
        .pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let offset = (seq_offset + i * n).to_string();
            let args = ["--domain", domain, "--seq-offset", &offset];
            smtp_send(port_of(pod), n, &args, &out(i))
        })
        .collect();
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.wait().unwrap();
            let results = read_jsonl(&out(i));
            assert_eq!(results.len(), n);
            assert!(results.iter().all(|r| r["code"] == 250), "{results:?}");
            results
        })
        .collect()
}

/// Delivery times of rated.test messages in `records`, in order.
fn rated_delivery_times(records: &[Value]) -> Vec<f64> {
    let mut times: Vec<f64> = deliveries(records)
        .into_iter()
        .filter(|d| d["queue"] == "rated.test")
        .map(event_secs)
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Sends `n` messages for rated.test into each pod at once and waits for
/// their deliveries; each pod's delivery times, in order.
fn delivery_times(fleet: &Fleet, n: usize, seq_offset: usize) -> Vec<Vec<f64>> {
    let already: Vec<usize> = fleet
        .pods
        .iter()
        .map(|p| rated_delivery_times(&p.records()).len())
        .collect();
    send_to_each(fleet, |p| p.smtp, n, "rated.test", seq_offset);
    fleet
        .pods
        .iter()
        .zip(already)
        .map(|(pod, already)| {
            let recs = pod.wait_for_records(Duration::from_secs(60), "the batch delivered", |r| {
                rated_delivery_times(r).len() == already + n
            });
            rated_delivery_times(&recs)[already..].to_vec()
        })
        .collect()
}

/// The rate past the throttle's initial burst of `limit` (a GCRA allows
/// `limit` at once, then one every 1/limit s).
fn rate_after_burst(times: &[f64], limit: usize) -> f64 {
    (times.len() - limit) as f64 / (times[times.len() - 1] - times[0])
}

/// Never more than the limit: over any window of L seconds at most
/// limit (the burst) + limit·L deliveries (+1 for clock edges).
fn assert_never_above(times: &[f64], limit: usize) {
    for (i, start) in times.iter().enumerate() {
        for l in 1..=5 {
            let n = times[i..]
                .iter()
                .take_while(|t| **t < start + l as f64)
                .count();
            assert!(
                n <= limit + limit * l + 1,
                "{n} deliveries within {l} s at {limit}/s"
            );
        }
    }
}

/// Scenario 2: editing a QueuePolicy's maxMessageRate reaches both pods
/// within seconds, and each pod's deliveries follow it: never above the
/// limit in force, and faster after the raise than the old limit allowed.
/// (The throttle's own timing is unit-tested with a paused clock.)
#[test]
fn an_edited_max_message_rate_reaches_the_pods_and_the_delivery_rate_follows() {
    let (fleet, sink) = fleet_with_sink(&[("rated.yaml", vec![("RATE", "3/s".into())])]);
    let slow = delivery_times(&fleet, 21, 0);
    for times in &slow {
        assert_never_above(times, 3);
    }

    let before = fleet.config_hash();
    let edited = std::time::Instant::now();
    fleet.apply_fixture("rated.yaml", &[("RATE", "15/s".into())]);
    // one object edited: the first config after it is the whole edit
    fleet.wait_pods_leave(&before);
    let applied = edited.elapsed();
    fleet.wait_rollout(Some(&before));
    assert!(
        applied < Duration::from_secs(10),
        "applied after {applied:?}"
    );
    fleet.wait_ready();

    let fast = delivery_times(&fleet, 105, 42);
    for times in &fast {
        assert_never_above(times, 15);
        let rate = rate_after_burst(times, 15);
        assert!(rate > 3.0 * 1.5, "after the raise to 15/s: {rate:.1}/s");
    }
    let rates = |all: &[Vec<f64>], limit| -> Vec<f64> {
        all.iter().map(|t| rate_after_burst(t, limit)).collect()
    };
    eprintln!(
        "rates: 3/s -> {:?}, 15/s -> {:?}; applied in {applied:?}",
        rates(&slow, 3),
        rates(&fast, 15)
    );
    let seqs = sink.seqs();
    assert_eq!(seqs.len(), 2 * (21 + 105));
    assert!(seqs.values().all(|&n| n == 1));
}

/// Scenario 3: a QueuePolicy with a bad throttle is not accepted (the
/// reason in its status and in `kubectl get`); the operator's ConfigMap and
/// the config the pods run stay the last good one; mail keeps flowing.
#[test]
fn a_bad_throttle_is_rejected_and_the_pods_keep_the_last_good_config() {
    let (fleet, sink) = fleet_with_sink(&[]);
    let good = fleet.config_hash();
    fleet.kubectl(&[
        "apply",
        "-f",
        &root_path("examples/operator/invalid/bad-throttle.yaml"),
    ]);
    fleet
        .api
        .wait_for("the verdict", Duration::from_secs(20), |_| {
            fleet.get(&["get", "qp", "bad-throttle"])["status"]["conditions"].is_array()
        });
    let bad = fleet.get(&["get", "qp", "bad-throttle"]);
    let accepted = condition(&bad, "Accepted");
    assert_eq!(accepted["status"], "False", "{bad}");
    assert_eq!(accepted["reason"], "InvalidThrottle", "{bad}");
    let message = accepted["message"].as_str().unwrap();
    assert!(message.contains("spec.maxMessageRate"), "{message}");
    assert!(message.contains("100 per hour"), "{message}");
    assert_eq!(condition(&bad, "Ready")["status"], "False");
    let table = fleet.kubectl(&["get", "qp", "bad-throttle"]);
    assert!(
        table.contains("InvalidThrottle") || table.contains("False"),
        "{table}"
    );

    // nothing changed for the pods, which keep delivering
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fleet.config_hash(), good);
    for pod in &fleet.pods {
        assert_eq!(pod.running_hash().as_deref(), Some(good.as_str()));
        RawSmtp::send_message(
            pod.smtp,
            "user@sink.test",
            "Subject: still flowing\r\n\r\nhi",
        );
    }
    for pod in &fleet.pods {
        pod.wait_for_records(Duration::from_secs(20), "the delivery", |r| {
            count(r, "Delivery") == 1
        });
    }
    assert_eq!(sink.messages().len(), 2);
    let to_sink = fleet.get(&["get", "qp", "to-sink"]);
    assert_eq!(condition(&to_sink, "Ready")["status"], "True", "{to_sink}");
}

/// Scenario 4: seed 003's rule as a QueuePolicy (`requeue`): a destination
/// that answers 4xx forever; after the third failed attempt the message
/// moves to the smart host's queue and is delivered there.
#[test]
fn after_the_third_failure_the_requeue_rule_hands_mail_to_the_smart_host() {
    let deferring = Sink::start(&["-r", "RCPT"]);
    let (fleet, sink) = fleet_with_sink(&[(
        "requeue.yaml",
        vec![("DEFERRING_PORT", deferring.port.to_string())],
    )]);
    let pod = &fleet.pods[0];
    RawSmtp::send_message(pod.smtp, "user@mx.slow.test", "Subject: requeue\r\n\r\nhi");
    let recs = pod.wait_for_records(Duration::from_secs(30), "the delivery", |r| {
        count(r, "Delivery") == 1
    });
    assert_eq!(
        sequence(&recs),
        vec![
            ("Reception", "mx.slow.test", 0),
            ("TransientFailure", "mx.slow.test", 0),
            ("TransientFailure", "mx.slow.test", 1),
            ("TransientFailure", "mx.slow.test", 2),
            ("Delivery", "sink.test", 3),
        ]
    );
    for failure in recs.iter().filter(|r| r["type"] == "TransientFailure") {
        let code = failure["response"]["code"].as_u64().unwrap();
        assert!((400..500).contains(&code), "{failure}");
    }
    let delivery = recs.last().unwrap();
    assert_eq!(delivery["peer_address"]["name"], SMART_HOST, "{delivery}");
    let relayed = sink.messages();
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].contains("Subject: requeue"), "{}", relayed[0]);
}

/// Scenario 5: seed 004's deferred_queue listener (the submission port,
/// its shaping as an EgressPath) under load from 20 concurrent clients.
/// The user's content check is held the whole time the clients send, so
/// every 250 they get was given before any policy ran on the message;
/// released, every message is rebound, checked and delivered once.
#[test]
fn a_deferred_queue_listener_answers_at_once_and_delivers_everything() {
    const PER_POD: usize = 300;
    let (fleet, sink) = fleet_with_sink(&[("deferred-inject.yaml", vec![])]);
    for pod in &fleet.pods {
        std::fs::write(pod.path("/tmp/hold"), "").unwrap();
    }
    let mut latencies: Vec<f64> = send_to_each(&fleet, |p| p.submission, PER_POD, "sink.test", 0)
        .iter()
        .flatten()
        .map(|r| r["ms"].as_f64().unwrap())
        .collect();
    for pod in &fleet.pods {
        let recs = pod.records();
        assert_eq!(count(&recs, "Reception"), PER_POD);
        assert!(
            recs.iter()
                .filter(|r| r["type"] == "Reception")
                .all(|r| r["queue"] == "deferred_smtp_inject.kumomta.internal")
        );
        assert_eq!(
            count(&recs, "DeferredInjectionRebind"),
            0,
            "the check is held"
        );
        assert_eq!(count(&recs, "Delivery"), 0);
    }
    assert!(sink.messages().is_empty());

    for pod in &fleet.pods {
        std::fs::remove_file(pod.path("/tmp/hold")).unwrap();
    }
    for pod in &fleet.pods {
        let recs = pod.wait_for_records(Duration::from_secs(60), "every delivery", |r| {
            count(r, "Delivery") == PER_POD
        });
        assert_eq!(count(&recs, "DeferredInjectionRebind"), PER_POD);
        assert!(deliveries(&recs).iter().all(|d| d["queue"] == "sink.test"));
    }
    let messages = sink.messages();
    assert_eq!(messages.len(), 2 * PER_POD);
    assert!(
        messages
            .iter()
            .all(|m| m.contains("X-Content-Check: deferred"))
    );
    let seqs = sink.seqs();
    assert_eq!(seqs.len(), 2 * PER_POD);
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "deferred_queue: {} messages, reply p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
}

/// Scenario 6: one pod is killed with SIGKILL while 20 clients inject into
/// it, and restarted on the same spool volume: every message that got a
/// 250 reaches the sink.
#[test]
fn a_pod_killed_during_injection_loses_nothing_it_accepted() {
    const TOTAL: usize = 3000;
    let (mut fleet, sink) = fleet_with_sink(&[]);
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("client.jsonl");
    let mut client = smtp_send(
        fleet.pods[1].smtp,
        TOTAL,
        &["--domain", "sink.test"],
        &results,
    );
    fleet.pods[1].wait_for_records(Duration::from_secs(60), "injection under way", |r| {
        count(r, "Reception") >= 300
    });
    fleet.pods[1].kill9();
    client.wait().unwrap();
    let outcomes = read_jsonl(&results);
    assert_eq!(outcomes.len(), TOTAL);
    let accepted: Vec<u64> = outcomes
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(
        accepted.len() >= 300 && accepted.len() < TOTAL,
        "{}",
        accepted.len()
    );

    fleet.pods[1].spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let seqs = sink.seqs();
        let missing: Vec<u64> = accepted
            .iter()
            .copied()
            .filter(|s| !seqs.contains_key(s))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        missing.is_empty(),
        "{} of {} accepted messages never arrived: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(20)]
    );
    let seqs = sink.seqs();
    let duplicates = seqs.values().filter(|&&n| n > 1).count();
    eprintln!(
        "killed after {} accepted; all delivered, {duplicates} duplicates (in flight at the kill)",
        accepted.len()
    );
}
