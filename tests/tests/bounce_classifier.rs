//! Bounce classification end to end: the chart's shipped rules loaded by
//! `kumo.configure_bounce_classifier`, a receiver that refuses recipients
//! the way providers do, and the label in the log records and /metrics.

use sluice_tests::reply_sink::ReplySink;
use sluice_tests::{
    Mta, RawSmtp, free_port, http_request, policy_with_init, validate_fails, workspace_root,
};
use std::time::Duration;

fn rules(name: &str) -> String {
    workspace_root()
        .join("charts/sluice/files/bounce_classifier")
        .join(name)
        .display()
        .to_string()
}

fn classifier_policy(sink: u16, admin: u16) -> String {
    let init = format!(
        "kumo.configure_bounce_classifier {{ files = {{ '{}', '{}' }} }}\n  \
         kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}",
        rules("providers.toml"),
        rules("rfc3463.toml")
    );
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
    retry_interval = '1s', max_retry_interval = '1s', max_age = '3s',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#
    );
    policy_with_init(&init, "", &rest)
}

#[test]
fn refusals_are_labelled_in_bounce_transient_and_expiration_records() {
    let sink = ReplySink::start(|_, rcpt| {
        match rcpt.split('@').next().unwrap() {
        "gone" => Some(
            "550 5.1.1 <gone@dest.test>: Recipient address rejected: User unknown in virtual mailbox table"
                .into(),
        ),
        "full" => Some("452 4.2.2 Mailbox full".into()),
        _ => None,
    }
    });
    let admin = free_port();
    let mta = Mta::start(&classifier_policy(sink.port, admin));
    for rcpt in ["gone@dest.test", "full@dest.test", "ok@dest.test"] {
        let reply = RawSmtp::send_message(mta.port, rcpt, "Subject: x\r\n\r\nbody");
        assert!(reply.starts_with("250"), "{reply}");
    }
    let records = mta.wait_for_records(Duration::from_secs(30), "the expiration", |r| {
        sluice_tests::count(r, "Expiration") == 1
    });
    let label = |kind: &str, rcpt: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["recipient"] == rcpt)
            .map(|r| r["bounce_classification"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(label("Bounce", "gone@dest.test"), ["InvalidRecipient"]);
    let transient = label("TransientFailure", "full@dest.test");
    assert!(!transient.is_empty());
    assert!(
        transient.iter().all(|l| l == "QuotaIssues"),
        "{transient:?}"
    );
    // max_age ran out while the mailbox stayed full: KumoMTA's 5.4.7
    assert_eq!(label("Expiration", "full@dest.test"), ["MessageExpired"]);
    // delivered mail is not classified
    assert_eq!(label("Delivery", "ok@dest.test"), ["Uncategorized"]);
    assert_eq!(sink.accepted(), ["ok@dest.test"]);

    // Prometheus' own parser reads the exposition
    let metrics = http_request(admin, "/metrics", None);
    let samples = &metrics["samples"];
    let value = |kind: &str, class: &str| -> u64 {
        let key =
            format!("sluice_bounce_classifications_total{{classification={class},type={kind}}}");
        samples[&key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {samples}")) as u64
    };
    assert_eq!(value("Bounce", "InvalidRecipient"), 1);
    assert_eq!(value("Expiration", "MessageExpired"), 1);
    assert_eq!(
        value("TransientFailure", "QuotaIssues"),
        transient.len() as u64
    );
}

#[test]
fn a_broken_rule_fails_validate_naming_the_file_the_label_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("mine.toml");
    std::fs::write(
        &bad,
        "[rules]\nSpamBlock = ['spamhaus']\nInvalidRecipient = ['^550 ', '(no such']\n",
    )
    .unwrap();
    let err = validate_fails(
        dir.path(),
        &format!(
            "local kumo = require 'kumo'\nkumo.on('init', function()\n  \
             kumo.define_spool {{ name = 'data', path = '{d}/spool' }}\n  \
             kumo.configure_bounce_classifier {{ files = {{ '{}' }} }}\nend)\n",
            bad.display(),
            d = dir.path().display()
        ),
    );
    for want in [
        &bad.display().to_string(),
        "InvalidRecipient[2]",
        "(no such",
        "policy.lua:4",
    ] {
        assert!(err.contains(want), "{want} not in: {err}");
    }
}
