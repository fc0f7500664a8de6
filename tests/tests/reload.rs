//! Policy hot-reload under load (spec §11): the policy file is swapped the
//! way the kubelet updates a ConfigMap volume (a new directory, then an
//! atomic rename of the `..data` symlink), three times, once to a broken
//! policy, while 5,000 messages are injected.

use serde_json::Value;
use sluice_tests::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Version `n` of the policy delivers into `maildir-v{n}`; its queues
/// refresh on every epoch, so routing follows the policy at once.
fn version(n: u32, admin: u16) -> String {
    policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "",
        &format!(
            "kumo.on('get_queue_config', function()\n  \
             return kumo.make_queue_config {{ refresh_strategy = 'Epoch', \
             protocol = {{ maildir_path = '{{DIR}}/maildir-v{n}' }} }}\nend)\n"
        ),
    )
}

/// Publish `text` as the ConfigMap's new content, as the kubelet does.
fn publish(config: &Path, name: &str, text: &str) {
    let dir = config.join(format!("..{name}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("policy.lua"), text).unwrap();
    let tmp = config.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, config.join("..data")).unwrap();
}

fn status(admin: u16) -> Value {
    http_json(admin, "/api/admin/config/v1", None)
}

fn wait_status(admin: u16, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(admin);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivered(mta: &Mta, n: u32) -> usize {
    mta.maildir_files(&format!("maildir-v{n}")).len()
}

fn wait_delivered(mta: &Mta, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (1..=3).map(|n| delivered(mta, n)).sum::<usize>() < at_least {
        assert!(Instant::now() < deadline, "deliveries stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Modification times (seconds since the epoch) of a version's deliveries.
fn mtimes(mta: &Mta, n: u32) -> Vec<f64> {
    mta.maildir_files(&format!("maildir-v{n}"))
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        })
        .collect()
}

#[test]
fn reload_under_load_delivers_each_message_once_by_the_policy_in_force() {
    let admin = free_port();
    let mut mta = Mta::prepare(&version(1, admin));
    let config = mta.path("config");
    std::fs::create_dir(&config).unwrap();
    publish(&config, "v1", &mta.render(&version(1, admin)));
    std::os::unix::fs::symlink("..data/policy.lua", config.join("policy.lua")).unwrap();
    mta.policy_path = config.join("policy.lua");
    mta.args = vec!["--reload-interval".into(), "100ms".into()];
    mta.spawn();
    assert_eq!(status(admin)["epoch"], 1);

    let mut client = start_injection(&mta, 5000);
    wait_delivered(&mta, 1000);
    publish(&config, "v2", &mta.render(&version(2, admin)));
    let v2 = wait_status(admin, "epoch 2", |s| s["epoch"] == 2);

    wait_delivered(&mta, 2000);
    // a syntax error on line 3: reported, not applied
    publish(
        &config,
        "broken",
        "local kumo = require 'kumo'\n\nkumo.on('init', function(\n",
    );
    let broken = wait_status(admin, "the reload error", |s| {
        s["last_reload_error"].is_string()
    });
    assert_eq!(broken["epoch"], 2, "{broken}");
    assert_eq!(broken["hash"], v2["hash"]);
    let error = broken["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("policy.lua:"),
        "names file and line: {error}"
    );

    wait_delivered(&mta, 3000);
    publish(&config, "v3", &mta.render(&version(3, admin)));
    let v3 = wait_status(admin, "epoch 3", |s| s["epoch"] == 3);
    assert!(v3["last_reload_error"].is_null(), "{v3}");
    let injected = client.wait().unwrap();
    assert!(injected.success());

    let acked: Vec<u64> = injection_results(&mta)
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(acked.len(), 5000, "every message was accepted");
    wait_delivered(&mta, 5000);
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for n in 1..=3 {
        for (seq, c) in delivered_seqs(&mta, &format!("maildir-v{n}")) {
            *seen.entry(seq).or_default() += c;
        }
    }
    for seq in &acked {
        assert_eq!(seen.get(seq), Some(&1), "message {seq} delivered once");
    }
    assert_eq!(seen.len(), 5000);

    // routing followed the policy in force: nothing reached v1's maildir
    // after v2 was adopted, nor v2's after v3 (a delivery already under way
    // at the swap may finish within a second); nothing reached a version's
    // maildir before it was adopted
    let t2 = rfc3339_secs(v2["loaded_at"].as_str().unwrap());
    let t3 = rfc3339_secs(v3["loaded_at"].as_str().unwrap());
    for (n, from, until) in [(1, 0.0, t2), (2, t2, t3), (3, t3, f64::MAX)] {
        let times = mtimes(&mta, n);
        assert!(!times.is_empty(), "version {n} delivered some");
        for t in times {
            assert!(t >= from - 0.05 && t <= until + 1.0, "v{n} delivery at {t}");
        }
    }

    let m = http_request(admin, "/metrics", None);
    let samples = &m["samples"];
    assert_eq!(samples["sluice_config_reloads_total{result=success}"], 2.0);
    assert_eq!(samples["sluice_config_reloads_total{result=failure}"], 1.0);
    let hash = v3["hash"].as_str().unwrap();
    assert_eq!(samples[format!("sluice_config_info{{hash={hash}}}")], 1.0);
    mta.stop();
}

/// A module the policy `require`s changes on disk, with no reload (the
/// watcher looks once an hour): every Lua state of the running epoch, also
/// those made later because 20 sessions at once need more than the pool
/// holds, runs the module as it was when the epoch was loaded. Before the
/// snapshot, states made after the change ran the new module beside the old.
#[test]
fn states_made_after_a_module_changed_on_disk_run_the_epochs_module() {
    let mut mta = Mta::prepare(&policy(
        "",
        "local route = require 'route'\n\
         kumo.on('smtp_server_message_received', function(msg)\n  \
           msg:prepend_header('X-Route', route.version)\n\
         end)\n\
         kumo.on('get_queue_config', function()\n  \
           return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } }\n\
         end)\n",
    ));
    std::fs::write(mta.path("route.lua"), "return { version = 'loaded' }").unwrap();
    mta.args = vec!["--reload-interval".into(), "1h".into()];
    mta.spawn();
    std::fs::write(mta.path("route.lua"), "return { version = 'edited' }").unwrap();
    let mut client = start_injection(&mta, 600);
    client.wait().unwrap();
    let accepted = injection_results(&mta)
        .iter()
        .filter(|r| r["code"] == 250)
        .count();
    assert_eq!(accepted, 600);
    let deadline = Instant::now() + Duration::from_secs(60);
    while mta.maildir_files("maildir").len() < 600 {
        assert!(Instant::now() < deadline, "deliveries stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut routes: HashMap<String, usize> = HashMap::new();
    for f in mta.maildir_files("maildir") {
        let text = std::fs::read_to_string(f).unwrap();
        let route = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Route: "))
            .unwrap_or("none")
            .to_string();
        *routes.entry(route).or_default() += 1;
    }
    assert_eq!(routes, HashMap::from([("loaded".to_string(), 600)]));
}
