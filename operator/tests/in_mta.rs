//! The rendered examples loaded into the real MTA policy engine: the
//! handlers answer sample queues, paths and requeues as the objects say.

mod common;

use common::*;
use sluice_common::queue_config::{MxListEntry, Protocol, RefreshStrategy};
use sluice_mta::message::{Message, MessageId};
use sluice_mta::policy::{Policy, PolicySource};
use sluice_operator::render;
use std::sync::Arc;
use std::time::Duration;

/// The examples rendered next to a policy that loads them the way the
/// chart's does.
fn load_examples() -> (tempfile::TempDir, Arc<Policy>) {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render::render(&examples(), &render::Options::default());
    for (name, content) in &rendered.files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let init = dir.path().join("policy.lua");
    std::fs::write(
        &init,
        "local kumo = require 'kumo'\nrequire 'sluice-generated'\n",
    )
    .unwrap();
    let policy = Policy::load(PolicySource::from_file(&init).unwrap())
        .unwrap_or_else(|e| panic!("the generated policy loads: {e}"));
    (dir, policy)
}

#[tokio::test]
async fn queue_config_follows_the_matching_queue_policy() {
    let (_dir, policy) = load_examples();

    let smarthost = policy
        .get_queue_config("smarthost.example.com", None, None, None)
        .await
        .unwrap();
    assert_eq!(smarthost.egress_pool.as_deref(), Some("relay"));
    match &smarthost.protocol {
        Protocol::Smtp(smtp) => assert_eq!(
            smtp.mx_list,
            vec![
                MxListEntry::Name("smart.host.local".into()),
                MxListEntry::Address {
                    name: "mx.example.com".into(),
                    addr: "10.0.0.1".into()
                },
            ]
        ),
        other => panic!("{other:?}"),
    }

    let maildir = policy
        .get_queue_config("maildir.example.com", None, None, None)
        .await
        .unwrap();
    match &maildir.protocol {
        Protocol::Maildir(m) => {
            assert_eq!(m.maildir_path, "/var/spool/sluice/maildir/{{ domain }}")
        }
        other => panic!("{other:?}"),
    }

    // the catch-all policy
    let other = policy
        .get_queue_config("other.example.com", Some("acme"), Some("receipts"), None)
        .await
        .unwrap();
    assert_eq!(other.egress_pool.as_deref(), Some("outbound"));
    assert_eq!(other.max_age, Duration::from_secs(3 * 86400));
    assert_eq!(other.retry_interval, Duration::from_secs(20 * 60));
    assert_eq!(
        other.max_retry_interval,
        Some(Duration::from_secs(8 * 3600))
    );
    assert!(other.max_message_rate.is_none());

    // tenant + campaign glob: more fields set, so it beats the catch-all
    let news = policy
        .get_queue_config(
            "other.example.com",
            Some("acme"),
            Some("newsletter-june"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(news.retry_interval, Duration::from_secs(300));
    assert_eq!(news.max_message_rate.unwrap().to_string(), "1000/h");
    // a tenant that is absent does not match a tenant list
    let untenanted = policy
        .get_queue_config("other.example.com", None, Some("newsletter-june"), None)
        .await
        .unwrap();
    assert_eq!(untenanted.retry_interval, Duration::from_secs(20 * 60));

    let amqp = policy
        .get_queue_config("amqp", None, None, None)
        .await
        .unwrap();
    match &amqp.protocol {
        Protocol::CustomLua(c) => {
            assert_eq!(c.constructor, "sluice.amqp.default.events-to-amqp");
            assert!(policy.has_handler(&c.constructor));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn egress_pools_sources_and_paths_come_from_their_objects() {
    let (_dir, policy) = load_examples();
    let pool = policy.get_egress_pool("outbound").await.unwrap();
    let entries: Vec<(String, u32)> = pool
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.weight))
        .collect();
    assert_eq!(entries, vec![("ip-1".into(), 2), ("ip-2".into(), 1)]);
    let source = policy.get_egress_source("ip-2").await.unwrap();
    assert_eq!(source.source_address, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(source.ehlo_domain.as_deref(), Some("mta2.example.com"));
    assert!(policy.get_egress_pool("nowhere").await.is_err());

    // google: its own keys, over the default path's
    let google = policy
        .get_egress_path_config(
            "gmail.com",
            "ip-1",
            "(alt1|alt2).gmail-smtp-in.l.google.com",
        )
        .await
        .unwrap();
    assert_eq!(google.connection_limit.limit, 10);
    assert_eq!(google.max_message_rate.unwrap().to_string(), "100/s");
    assert_eq!(google.max_deliveries_per_connection, 100);
    assert_eq!(google.refresh_strategy, RefreshStrategy::Epoch);
    assert_eq!(google.idle_timeout, Duration::from_secs(5));

    // the relay source: the default path plus its own port and TLS
    let relay = policy
        .get_egress_path_config("smarthost.example.com", "relay-1", "smart.host.local")
        .await
        .unwrap();
    assert_eq!(relay.connection_limit.limit, 32);
    assert_eq!(relay.smtp_port, 2525);
    assert!(relay.prohibited_hosts.is_empty());

    // anything else: the default path only
    let plain = policy
        .get_egress_path_config("example.org", "ip-1", "mx.example.org")
        .await
        .unwrap();
    assert_eq!(plain.connection_limit.limit, 32);
    assert_eq!(plain.smtp_port, 25);
    assert!(!plain.prohibited_hosts.is_empty());
}

fn message(rcpt: &str, attempts: u16) -> sluice_mta::message::MessageRef {
    let msg = Message::new(
        MessageId::new(),
        "sender@example.com".into(),
        vec![rcpt.into()],
        Default::default(),
        b"Subject: t\r\n\r\nbody\r\n".to_vec(),
    );
    msg.state().num_attempts = attempts;
    msg
}

/// Seed 003 as data: after the third failed attempt the message moves to
/// the smart host queue (num_attempts does not yet count that attempt).
#[tokio::test]
async fn requeue_rule_moves_the_message_after_the_third_attempt() {
    let (_dir, policy) = load_examples();
    for (attempts, moved) in [(0, false), (1, false), (2, true), (5, true)] {
        let msg = message("u@mx.slow.example.net", attempts);
        policy
            .requeue_message(
                &msg,
                "451 try later",
                &["LoggedTransientFailure"],
                true,
                None,
            )
            .await
            .unwrap();
        let queue = msg.meta_string("queue");
        assert_eq!(
            queue.as_deref() == Some("[10.0.0.1]"),
            moved,
            "attempts {attempts}: {queue:?}"
        );
    }
    // other domains have no rule
    let msg = message("u@example.com", 5);
    policy
        .requeue_message(&msg, "451 try later", &[], true, None)
        .await
        .unwrap();
    assert_eq!(msg.meta_string("queue"), None);
}

/// The DkimSigner example rendered, its keys where the pods mount them, and
/// the generated `dkim_sign` called from smtp_server_message_received as
/// the chart's policy does: mail from a matching domain gets both
/// signatures, other mail none.
#[tokio::test]
async fn generated_dkim_sign_adds_a_signature_per_matching_signer() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let keys = secrets.join("dkim-example");
    std::fs::create_dir_all(&keys).unwrap();
    for (file, args) in [
        (
            "rsa.pem",
            &["genrsa", "-traditional", "-out", "F", "2048"][..],
        ),
        (
            "ed25519.pem",
            &["genpkey", "-algorithm", "ed25519", "-out", "F"][..],
        ),
    ] {
        let out = keys.join(file);
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "F" { out.to_str().unwrap() } else { a })
            .collect();
        assert!(
            std::process::Command::new("openssl")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let (inputs, errors) =
        sluice_operator::manifests::read_dir(&root().join("examples/operator/dkim"), "default");
    assert!(errors.is_empty(), "{errors:?}");
    let options = render::Options {
        secrets_dir: secrets.display().to_string(),
        ..Default::default()
    };
    let rendered = render::render(&inputs, &options);
    for (name, content) in &rendered.files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let init = dir.path().join("policy.lua");
    std::fs::write(
        &init,
        "local kumo = require 'kumo'\nlocal generated = require 'sluice-generated'\n\
         assert(generated.signs)\n\
         kumo.on('smtp_server_message_received', function(msg) generated.dkim_sign(msg) end)\n",
    )
    .unwrap();
    let policy = Policy::load(PolicySource::from_file(&init).unwrap())
        .unwrap_or_else(|e| panic!("the generated policy loads: {e}"));
    let signed = |from: &str| {
        let msg = Message::new(
            MessageId::new(),
            "sender@example.com".into(),
            vec!["u@dest.test".into()],
            Default::default(),
            format!("From: <{from}>\r\nTo: u@dest.test\r\nSubject: t\r\n\r\nbody\r\n").into_bytes(),
        );
        let policy = policy.clone();
        async move {
            policy
                .message_event("smtp_server_message_received", Some(&msg), None)
                .await
                .unwrap();
            String::from_utf8(msg.data().unwrap().to_vec()).unwrap()
        }
    };
    let text = signed("news@Mail.Example.com").await;
    let signatures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(signatures.len(), 2, "{text}");
    assert!(text.contains("a=ed25519-sha256"), "{text}");
    assert!(text.contains("a=rsa-sha256"), "{text}");
    assert!(
        text.contains("s=s2026") && text.contains("s=e2026"),
        "{text}"
    );
    assert!(text.contains("d=example.com"), "{text}");
    let text = signed("news@other.test").await;
    assert!(!text.contains("DKIM-Signature"), "{text}");
}
