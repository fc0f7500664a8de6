//! `sluice-mta --validate`, the seed policies, and the policy API semantics.

use sluice_common::queue_config::{Protocol, QueueConfig};
use sluice_mta::policy::{Policy, PolicySource};
use sluice_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn seed(name: &str) -> std::path::PathBuf {
    workspace_root().join("examples/seeds").join(name)
}

const SEEDS: &[&str] = &[
    "queue_max_age.lua",
    "queue_max_retry_interval.lua",
    "queue_retry_interval.lua",
    "queue_maildir.lua",
    "queue_smtp_mx_list.lua",
    "queue_custom_lua.lua",
];

#[test]
fn every_seed_policy_passes_validate_unchanged() {
    for name in SEEDS {
        let o = validate_policy(&seed(name));
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(": OK"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn the_embedded_default_policy_validates() {
    let o = Command::new(binary("sluice-mta"))
        .arg("--validate")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// (policy body, what the error must contain)
const BROKEN: &[(&str, &[&str])] = &[
    (
        "kumo.on('get_queue_config', function()\n  return kumo.make_queue_config {\n    max_agee = '1 hour',\n  }\nend)\n",
        &["broken.lua:2:", "unknown field `max_agee`"],
    ),
    (
        "kumo.on('get_queue_config', function()\n  return kumo.make_queue_config { retry_interval = 'soon' }\nend)\n",
        &["broken.lua:2:", "key 'retry_interval'", "\"soon\""],
    ),
    (
        "kumo.on('get_queue_config', function()\n  return kumo.make_queue_config { max_message_rate = '10/seconds' }\nend)\n",
        &["broken.lua:2:", "max_message_rate", "\"10/seconds\""],
    ),
    (
        "kumo.on('get_queue_config', function()\n  return kumo.make_queue_config { protocol = { smtp = { mx_lst = {} } } }\nend)\n",
        &["broken.lua:2:", "key 'protocol", "mx_lst"],
    ),
    (
        "kumo.on('get_queue_config', function(domain)\n  error('no config for ' .. domain)\nend)\n",
        &["broken.lua:2:", "no config for example.com"],
    ),
    (
        "kumo.on('init', function()\n  kumo.start_esmtp_listener { listen = '127.0.0.1:25', relay_host = {} }\nend)\n",
        &["broken.lua:2:", "start_esmtp_listener", "relay_host"],
    ),
    (
        "kumo.on('init', function()\n  kumo.start_esmtp_listener { listen = 'nowhere' }\nend)\n",
        &["broken.lua:2:", "'listen'", "nowhere"],
    ),
    (
        "kumo.on('init', function()\n  kumo.start_esmtp_listener { peer = { ['10.0.0.0/8'] = { relay_hostz = {} } } }\nend)\n",
        &["broken.lua:2:", "peer['10.0.0.0/8']", "relay_hostz"],
    ),
    (
        "kumo.on('init', function()\n  kumo.start_esmtp_listener { via = { ['10.1.0.1'] = { listen = '10.1.0.1:25' } } }\nend)\n",
        &[
            "broken.lua:2:",
            "via['10.1.0.1']",
            "'listen' can only be set for the whole listener",
        ],
    ),
    (
        "kumo.on('init', function()\n  kumo.start_esmtp_listener { peer = { ['10.0.0.300'] = {} } }\nend)\n",
        &["broken.lua:2:", "key 'peer'", "10.0.0.300"],
    ),
    (
        "kumo.on('init', function() end)\nkumo.on('init', function() end)\n",
        &[
            "broken.lua:2:",
            "init event already has a handler defined at",
            "broken.lua:1",
        ],
    ),
    (
        "kumo.on('get_queue_config', function()\n  return kumo.make_queue_config {\n",
        &["broken.lua:", "expected"],
    ),
    (
        "kumo.on('smtp_server_ehlo', function()\n  kumo.on('x', function() end)\nend)\nkumo.on('init', function() kumo.on('y', print) end)\n",
        &["broken.lua:4:", "can only be called while the policy loads"],
    ),
];

#[test]
fn broken_policies_fail_validation_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.lua");
    for (body, expected) in BROKEN {
        std::fs::write(&path, body).unwrap();
        let o = validate_policy(&path);
        let out = text(&o);
        assert!(!o.status.success(), "should fail:\n{body}\n{out}");
        for e in *expected {
            assert!(out.contains(e), "expected {e:?} for\n{body}\ngot {out}");
        }
    }
}

fn load(path: &Path) -> std::sync::Arc<Policy> {
    Policy::load(PolicySource::from_file(path).unwrap()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The seeds' queue configs, read back through the real policy engine.
#[test]
fn seed_queue_configs_mean_what_their_comments_say() {
    rt().block_on(async {
        let p = load(&seed("queue_max_age.lua"));
        let c = p
            .get_queue_config("example.com", None, None, None)
            .await
            .unwrap();
        assert_eq!(c.max_age, Duration::from_secs(20 * 60));
        assert_eq!(c.retry_interval, QueueConfig::default().retry_interval);

        let p = load(&seed("queue_max_retry_interval.lua"));
        let c = p
            .get_queue_config("example.com", None, None, None)
            .await
            .unwrap();
        assert_eq!(c.max_retry_interval, Some(Duration::from_secs(3600)));
        // "retry at most every hour": 20m, 40m, then hourly
        let gaps: Vec<u64> = (0..5)
            .map(|n| c.delay_for_attempt(n).as_secs() / 60)
            .collect();
        assert_eq!(gaps, vec![20, 40, 60, 60, 60]);

        let p = load(&seed("queue_retry_interval.lua"));
        let c = p
            .get_queue_config("example.com", None, None, None)
            .await
            .unwrap();
        assert_eq!(c.retry_interval, Duration::from_secs(1200));
        let gaps: Vec<u64> = (0..3)
            .map(|n| c.delay_for_attempt(n).as_secs() / 60)
            .collect();
        assert_eq!(gaps, vec![20, 40, 80], "doubling on each attempt");

        let p = load(&seed("queue_maildir.lua"));
        let c = p
            .get_queue_config("maildir.example.com", None, None, None)
            .await
            .unwrap();
        let Protocol::Maildir(m) = c.protocol else {
            panic!("{c:?}")
        };
        assert_eq!(m.maildir_path, "/var/tmp/kumo-maildir");
        let c = p
            .get_queue_config("other.example.com", None, None, None)
            .await
            .unwrap();
        assert_eq!(c, QueueConfig::default());

        let p = load(&seed("queue_smtp_mx_list.lua"));
        let c = p
            .get_queue_config("smarthost.example.com", None, None, None)
            .await
            .unwrap();
        let Protocol::Smtp(s) = c.protocol else {
            panic!()
        };
        assert_eq!(s.mx_list.len(), 2);
    });
}

#[test]
fn get_queue_config_handler_chain_follows_the_source_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.lua");
    std::fs::write(
        &path,
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'first.example' then
    return kumo.make_queue_config { retry_interval = '1 minute' }
  end
  if domain == 'nil.example' then
    return nil
  end
  -- no value: try the next handler
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'second.example' then
    return kumo.make_queue_config { retry_interval = tenant .. ' minutes' }
  end
end)
"#,
    )
    .unwrap();
    rt().block_on(async {
        let p = load(&path);
        let c = p
            .get_queue_config("first.example", None, None, None)
            .await
            .unwrap();
        assert_eq!(c.retry_interval, Duration::from_secs(60));
        let c = p
            .get_queue_config("second.example", Some("2"), None, None)
            .await
            .unwrap();
        assert_eq!(c.retry_interval, Duration::from_secs(120));
        // no handler returned a value: defaults
        let c = p
            .get_queue_config("third.example", None, None, None)
            .await
            .unwrap();
        assert_eq!(c, QueueConfig::default());
        // an explicit nil stops the chain and is a type error
        let e = p
            .get_queue_config("nil.example", None, None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a nil"), "{e}");
    });
}

/// The maildir seed, unchanged, end to end: mail for maildir.example.com
/// lands in /var/tmp/kumo-maildir.
#[test]
fn maildir_seed_delivers_to_its_path() {
    let mta = Mta::start(&policy(
        "",
        "dofile('{ROOT}/examples/seeds/queue_maildir.lua')",
    ));
    let o = swaks(
        mta.port,
        &[
            "--to",
            "someone@maildir.example.com",
            "--header",
            "Subject: maildir seed",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let id = recs[0]["id"].as_str().unwrap().to_string();
    let found = maildir_files(Path::new("/var/tmp/kumo-maildir"))
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(&id))
        .expect("the message is in /var/tmp/kumo-maildir/new");
    let body = std::fs::read_to_string(&found).unwrap();
    assert!(body.contains("Subject: maildir seed"));
    std::fs::remove_file(found).unwrap();
}

/// The time-based seeds, unchanged, end to end: a first failure is a
/// TransientFailure that leaves the message queued (not retried at once, not
/// expired), as a 20-minute retry / 20-minute max_age implies.
#[test]
fn time_based_seeds_retry_later_instead_of_at_once() {
    for name in [
        "queue_max_age.lua",
        "queue_retry_interval.lua",
        "queue_max_retry_interval.lua",
    ] {
        let mta = Mta::start(&policy(
            "",
            &format!("dofile('{{ROOT}}/examples/seeds/{name}')"),
        ));
        let o = swaks(mta.port, &["--to", "u@example.com"]);
        assert!(o.status.success(), "{}", text(&o));
        mta.wait_for_records(Duration::from_secs(10), "TransientFailure", |r| {
            count(r, "TransientFailure") == 1
        });
        std::thread::sleep(Duration::from_secs(2));
        let recs = mta.records();
        assert_eq!(
            count(&recs, "TransientFailure"),
            1,
            "{name}: retried too soon"
        );
        let expirations: Vec<_> = recs.iter().filter(|r| r["type"] == "Expiration").collect();
        if name == "queue_max_age.lua" {
            // retry 20m (+-30s jitter) vs max_age 20m: the first failure expires
            // the message exactly when its next attempt would be past 20 minutes
            for e in &expirations {
                let content = e["response"]["content"].as_str().unwrap();
                assert!(content.contains("exceeds max_age=20m"), "{content}");
                assert_eq!(e["response"]["code"], 551);
            }
        } else {
            assert!(expirations.is_empty(), "{name}: expired too soon");
        }
    }
}
