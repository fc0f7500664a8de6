//! Per-provider metrics, over real DNS (dnsmasq), real delivery (smtp-sink)
//! and a real scrape parsed by Prometheus' text-format parser: the egress
//! path's `provider_name` groups sites, other sites stand for themselves,
//! and mailing 10,000 distinct domains yields a bounded number of series —
//! at most 101 provider labels (the default limit of 100, and `other`) of
//! 15 series each, 1,515 in all.

use serde_json::{Map, Value, json};
use sluice_tests::*;
use std::time::{Duration, Instant};

const DOMAINS: usize = 10_000;
/// Each site opens its own connection: a batch stays under the thousand
/// sessions smtp-sink serves at once.
const BATCH: usize = 500;
/// 100 provider labels and `other`, × (3 counters + 2 gauges + 10 histogram
/// series).
const BOUND: usize = 101 * 15;

fn scrape(admin: u16) -> Map<String, Value> {
    let m = http_request(admin, "/metrics", None);
    assert_eq!(m["status"], 200, "{m}");
    m["samples"].as_object().unwrap().clone()
}

/// The samples of the per-provider families.
fn provider_samples(samples: &Map<String, Value>) -> Vec<(&String, f64)> {
    samples
        .iter()
        .filter(|(k, _)| k.contains("by_provider"))
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect()
}

/// Delivered messages by provider label.
fn delivered(samples: &Map<String, Value>) -> Vec<(String, f64)> {
    const PREFIX: &str = "total_messages_delivered_by_provider_total{provider=";
    samples
        .iter()
        .filter_map(|(k, v)| {
            let label = k.strip_prefix(PREFIX)?.strip_suffix('}')?;
            Some((label.to_string(), v.as_f64().unwrap()))
        })
        .collect()
}

#[test]
fn ten_thousand_domains_make_a_bounded_number_of_series() {
    // 50 domains of the gmail provider, the rest one site each
    let domains: Vec<String> = (0..DOMAINS)
        .map(|i| match i % 200 {
            0 => format!("g{i}.card.test"),
            _ => format!("d{i}.card.test"),
        })
        .collect();
    // each domain has 127.0.0.1 and no MX: it is its own site
    let hosts = tempfile::NamedTempFile::new().unwrap();
    let lines: String = domains.iter().map(|d| format!("127.0.0.1 {d}\n")).collect();
    std::fs::write(hosts.path(), lines).unwrap();
    let dns = Dnsmasq::start(&[&format!("--addn-hosts={}", hosts.path().display())]);
    let sink = Sink::start(&[]);
    let admin = free_port();
    let mta = Mta::start(&policy_with_init(
        &format!(
            "kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{}' }} }}\n\
             kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}",
            dns.port
        ),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ retry_interval = '2s' }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  -- the g* domains are one provider's
  local provider = nil
  if site_name:match('^g%d') then provider = 'gmail' end
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, smtp_port = {}, provider_name = provider,
    -- one message per site: do not hold its connection open for more
    idle_timeout = '0s',
  }}
end)
"#,
            sink.port
        ),
    ));
    let baseline = scrape(admin).len();
    assert!(provider_samples(&scrape(admin)).is_empty());

    // the first two alone, so that they are sure to be among the first
    // providers seen (which get places); then a batch at a time
    let mut batches = vec![&domains[..2]];
    batches.extend(domains[2..].chunks(BATCH));
    let mut sent = 0;
    for batch in batches {
        let recipients: Vec<Value> = batch
            .iter()
            .map(|d| json!({ "email": format!("u@{d}") }))
            .collect();
        let body = json!({
            "envelope_sender": "news@example.org",
            "content": "Subject: hello\r\n\r\nhi\r\n",
            "recipients": recipients,
        });
        let r = http_request(admin, "/api/inject/v1", Some(&body.to_string()));
        assert_eq!(r["status"], 200, "{r}");
        sent += batch.len();
        // each message is a session of its own: the sink's count is cheap
        // to poll, a scrape (Python's parser) is not
        let deadline = Instant::now() + Duration::from_secs(120);
        while sink.sessions() < sent {
            assert!(
                Instant::now() < deadline,
                "{} of {sent} delivered\n{}",
                sink.sessions(),
                mta.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // the sink counts a session before the MTA logs its delivery
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: f64 = delivered(&scrape(admin)).iter().map(|(_, n)| n).sum();
        if got >= DOMAINS as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "{got} deliveries counted");
        std::thread::sleep(Duration::from_millis(200));
    }

    let samples = scrape(admin);
    let by_provider = provider_samples(&samples);
    assert!(
        by_provider.len() <= BOUND,
        "{} per-provider series, over the bound of {BOUND}",
        by_provider.len()
    );
    assert!(
        samples.len() - baseline <= BOUND,
        "10,000 domains added {} series (bound {BOUND})",
        samples.len() - baseline
    );
    let delivered = delivered(&samples);
    assert!(
        delivered.len() <= 101,
        "{} provider labels",
        delivered.len()
    );
    let count = |label: &str| {
        delivered
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0.0, |(_, n)| *n)
    };
    assert_eq!(
        count("gmail"),
        50.0,
        "the gmail sites, grouped: {delivered:?}"
    );
    assert_eq!(
        count("d1.card.test"),
        1.0,
        "an early site keeps its own label"
    );
    assert!(count("other") > 9_000.0, "{delivered:?}");
    let total: f64 = delivered.iter().map(|(_, n)| n).sum();
    assert_eq!(total, DOMAINS as f64, "every delivery is counted once");
    let latency = samples["sluice_delivery_latency_by_provider_seconds_count{provider=gmail}"]
        .as_f64()
        .unwrap();
    assert_eq!(latency, 50.0);
    // the records name the provider as KumoMTA's do
    let records = mta.records_of("Delivery");
    let provider = |rcpt: &str| {
        records
            .iter()
            .find(|r| r["recipient"] == rcpt)
            .map(|r| r["provider_name"].clone())
    };
    assert_eq!(provider("u@g0.card.test"), Some(json!("gmail")));
    assert_eq!(provider("u@d1.card.test"), Some(Value::Null));
}
