//! Spool handoff (`sluice-mta --handoff-to`): the spool of a node that is
//! gone (SIGKILLed here, as a pod whose node died) is run by a drainer
//! that accepts nothing, delivers nothing itself, moves every message to
//! the live nodes, spread across them, and exits 0 once the spool is empty.

use sluice_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A node relaying to `[127.0.0.1]:sink`, its admin API on `admin`.
fn node(admin: u16, sink: u16) -> Mta {
    let init = format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}");
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#
    );
    Mta::start(&policy_with_init(&init, "", &rest))
}

#[test]
fn a_dead_nodes_spool_is_handed_to_the_live_ones_and_the_drainer_exits_0() {
    const TOTAL: usize = 300;
    let refusing = Sink::start(&["-r", "RCPT"]);
    let accepting = Sink::start(&[]);
    let (admin_a, admin_b, admin_c) = (free_port(), free_port(), free_port());
    let mut a = node(admin_a, refusing.port);
    let b = node(admin_b, accepting.port);
    let c = node(admin_c, accepting.port);
    // A holds everything (a suspension), then dies with it in its spool
    let suspend = r#"{"domain": "example.com", "reason": "hold", "duration": "10m"}"#;
    assert_eq!(
        http_request(admin_a, "/api/admin/suspend/v1", Some(suspend))["status"],
        200
    );
    let out = a.path("client.jsonl");
    assert!(
        smtp_send(a.port, TOTAL, &[], &out)
            .wait()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.records_of("Delayed").len() < TOTAL {
        assert!(Instant::now() < deadline, "{}", a.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    // what autoscaling and alerts read: all of it queued, the oldest a
    // moment old
    let metrics = http_request(admin_a, "/metrics", None);
    let body = metrics["body"].as_str().unwrap();
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {body}"))
    };
    assert_eq!(value("sluice_queued_messages"), TOTAL as f64);
    assert!(value("sluice_oldest_message_age_seconds") < 60.0);
    a.kill9();

    // the drainer on A's spool, with A's own policy
    let report = a.path("handoff.json");
    let targets = format!("http://127.0.0.1:{admin_b},http://127.0.0.1:{admin_c}");
    let drainer_command = || {
        let mut c = Command::new(binary("sluice-mta"));
        c.arg("--policy")
            .arg(&a.policy_path)
            .args(["--handoff-to", &targets])
            .arg("--handoff-report")
            .arg(&report)
            .current_dir(a.dir.path())
            .env("SLUICE_NODE_ID", "drainer-a")
            .stdout(Stdio::null());
        c
    };
    let mut drainer = drainer_command()
        .stderr(std::fs::File::create(a.path("drainer.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = drainer.try_wait().unwrap() {
            break s;
        }
        // it accepts nothing meanwhile
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", a.port)).is_err(),
            "the drainer listens for mail"
        );
        if Instant::now() >= deadline {
            let _ = drainer.kill();
            panic!(
                "{}",
                std::fs::read_to_string(a.path("drainer.log")).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(a.path("drainer.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        outcome,
        serde_json::json!({"found": TOTAL, "moved": TOTAL, "remaining": 0})
    );
    // spread across both, every message delivered by them, none by A
    let (to_b, to_c) = (b.records_of("XferIn").len(), c.records_of("XferIn").len());
    assert_eq!(to_b + to_c, TOTAL);
    assert!(to_b >= TOTAL / 3 && to_c >= TOTAL / 3, "{to_b} and {to_c}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepting.seqs().len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} delivered",
            accepting.seqs().len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.records_of("Delivery").is_empty());
    assert_eq!(a.records_of("XferOut").len(), TOTAL);

    // an empty spool: nothing to do, done at once
    let status = drainer_command().stderr(Stdio::null()).status().unwrap();
    assert!(status.success());
}
