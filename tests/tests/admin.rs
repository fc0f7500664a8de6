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

    // a listener whose trusted_hosts leave loopback out: probes yes, admin no
    assert_eq!(get(other, "/api/check-liveness/v1")["status"], 200);
    assert_eq!(get(other, "/metrics")["status"], 403);
    assert_eq!(get(other, "/api/admin/config/v1")["status"], 403);

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
    assert_eq!(get(admin, "/metrics")["samples"]["sluice_draining{}"], 1.0);
    busy.command("QUIT");
    mta.wait_exit(Duration::from_secs(15))
        .expect("exits after the drain");
}
