//! PROXY protocol inbound behind a real HAProxy (v1 `send-proxy` and v2
//! `send-proxy-v2`): the client HAProxy names is who relay control and the
//! Reception record see, and only the proxy's address may send the header;
//! the chart's `proxyProtocol` values render a listener that does the same.

use serde_json::Value;
use sluice_tests::haproxy::Haproxy;
use sluice_tests::*;
use std::time::Duration;

/// Relaying for 127.0.0.5 only; HAProxy (127.0.0.9) must send a header.
fn proxied_policy(admin: u16) -> String {
    let p = maildir_policy(
        &format!(
            "relay_hosts = {{ '127.0.0.5' }}, \
             peer = {{ ['{}'] = {{ require_proxy_protocol = true }} }}",
            Haproxy::SOURCE
        ),
        "",
    );
    p.replace(
        "kumo.configure_local_logs { log_dir = '{DIR}/logs' }",
        &format!(
            "kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n  \
             kumo.configure_local_logs {{ log_dir = '{{DIR}}/logs', meta = {{ 'received_from', 'received_via' }} }}"
        ),
    )
}

fn swaks_from(port: u16, source: &str, to: &str) -> std::process::Output {
    swaks(port, &["--local-interface", source, "--to", to])
}

#[test]
fn the_client_behind_haproxy_is_who_relay_control_and_the_logs_see() {
    let admin = free_port();
    let mta = Mta::start(&proxied_policy(admin));
    let proxy = Haproxy::start(mta.port);

    // 127.0.0.5 through HAProxy, v1 then v2: relays
    for port in [proxy.v1_port, proxy.v2_port] {
        let o = swaks_from(port, "127.0.0.5", "friend@elsewhere.example");
        assert!(o.status.success(), "{}", text(&o));
    }
    // 127.0.0.6 through HAProxy: its own address, not the proxy's, decides
    let o = swaks_from(proxy.v1_port, "127.0.0.6", "friend@elsewhere.example");
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("550 5.7.1 relaying not permitted for 127.0.0.6"),
        "{}",
        text(&o)
    );

    // the Rejection record may be written after the deliveries' records
    let recs = mta.wait_for_records(
        Duration::from_secs(10),
        "deliveries and the rejection",
        |r| count(r, "Delivery") == 2 && count(r, "Rejection") >= 1,
    );
    let receptions: Vec<&Value> = recs.iter().filter(|r| r["type"] == "Reception").collect();
    assert_eq!(receptions.len(), 2);
    for r in receptions {
        assert_eq!(r["peer_address"]["addr"], "127.0.0.5", "{r}");
        let from = r["meta"]["received_from"].as_str().unwrap();
        assert!(from.starts_with("127.0.0.5:"), "{r}");
        // received_via is the address the client reached: HAProxy's frontend
        let via = r["meta"]["received_via"].as_str().unwrap();
        assert!(
            via == format!("127.0.0.1:{}", proxy.v1_port)
                || via == format!("127.0.0.1:{}", proxy.v2_port),
            "{r}"
        );
    }
    let refused = recs
        .iter()
        .find(|r| r["type"] == "Rejection" && r["response"]["code"] == 550)
        .expect("the refused relay is logged");
    assert_eq!(refused["peer_address"]["addr"], "127.0.0.6");
}

#[test]
fn a_header_is_required_from_the_proxy_and_ignored_from_anyone_else() {
    let admin = free_port();
    let mta = Mta::start(&proxied_policy(admin));

    // the proxy's address without a header: no banner, the session is closed
    let o = python_client(
        "raw_session.py",
        &[
            &mta.port.to_string(),
            "--source",
            Haproxy::SOURCE,
            "--no-banner",
            "EHLO no-header.example",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let replies: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        replies.is_empty(),
        "a session from the proxy must start with a header: {replies:?}"
    );

    // a client that is not the proxy sends a header claiming 127.0.0.5: it
    // is an unknown command, and the client's own address decides
    let o = python_client(
        "raw_session.py",
        &[
            &mta.port.to_string(),
            "--source",
            "127.0.0.6",
            "PROXY TCP4 127.0.0.5 127.0.0.1 40000 25",
            "EHLO forger.example",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@elsewhere.example>",
            "QUIT",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let replies: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        replies[0]["code"], 220,
        "the banner comes first: {replies:?}"
    );
    assert_eq!(
        replies[1]["code"], 502,
        "PROXY is not a command here: {replies:?}"
    );
    assert_eq!(replies[4]["code"], 550, "{replies:?}");
    assert!(
        replies[4]["text"]
            .as_str()
            .unwrap()
            .contains("relaying not permitted for 127.0.0.6"),
        "{replies:?}"
    );

    let m = http_request(admin, "/metrics", None);
    assert_eq!(
        m["samples"]["sluice_proxy_protocol_refused_total{reason=missing}"], 1.0,
        "{m}"
    );
}

/// The chart's `proxyProtocol` values behind a masquerading LoadBalancer:
/// the listener the chart renders, run by a real MTA behind HAProxy,
/// relays for the client HAProxy names and not for the proxy itself; the
/// open-relay refusal gives way only when the header carries the client,
/// and `from` is required.
#[test]
fn the_charts_proxy_protocol_values_put_the_real_client_in_relay_control() {
    use sluice_tests::chart::{documents, find, template};
    let cluster = [
        "mta.service.type=LoadBalancer",
        "mta.service.externalTrafficPolicy=Cluster",
        "mta.listeners.submission.exposed=false",
        "mta.listeners.smtp.relayHosts={127.0.0.5}",
    ];
    // a private relay range behind a masquerading Service: refused without the header
    let mut sets = cluster.to_vec();
    sets[3] = "mta.listeners.smtp.relayHosts={10.1.0.0/16}";
    let err = template(None, &sets).unwrap_err();
    assert!(
        err.contains("refusing an open relay") && err.contains("proxyProtocol"),
        "{err}"
    );
    sets.push("mta.listeners.smtp.proxyProtocol.enabled=true");
    let err = template(None, &sets).unwrap_err();
    assert!(
        err.contains("mta.listeners.smtp.proxyProtocol.enabled needs proxyProtocol.from"),
        "{err}"
    );
    let from = format!(
        "mta.listeners.smtp.proxyProtocol.from={{{}/32}}",
        Haproxy::SOURCE
    );
    sets.push(&from);
    template(None, &sets).expect("renders with the proxies named");

    let mut sets = cluster.to_vec();
    sets.push("mta.listeners.smtp.proxyProtocol.enabled=true");
    sets.push(&from);
    let docs = documents(&template(None, &sets).unwrap());
    let cm = find(&docs, "ConfigMap", "rel-sluice-mta");
    let settings = cm["data"]["sluice-settings.lua"].as_str().unwrap();
    let json = settings
        .split_once("[==[")
        .and_then(|(_, r)| r.split_once("]==]"))
        .unwrap()
        .0;
    let settings: Value = serde_json::from_str(json).unwrap();
    let smtp = settings["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listen"] == "0.0.0.0:2525")
        .unwrap();
    assert_eq!(
        smtp["peer"],
        serde_json::json!({ format!("{}/32", Haproxy::SOURCE): { "require_proxy_protocol": true } })
    );
    // that listener's relay and peer keys, as the chart's init.lua passes them
    let lua = |v: &Value| format!("kumo.json_parse [==[{v}]==]");
    let mta = Mta::start(&maildir_policy(
        &format!(
            "relay_hosts = {}, peer = {}",
            lua(&smtp["relay_hosts"]),
            lua(&smtp["peer"])
        ),
        "",
    ));
    let proxy = Haproxy::start(mta.port);
    for port in [proxy.v1_port, proxy.v2_port] {
        let o = swaks_from(port, "127.0.0.5", "friend@elsewhere.example");
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = swaks_from(proxy.v2_port, "127.0.0.6", "friend@elsewhere.example");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("relaying not permitted for 127.0.0.6"),
        "{}",
        text(&o)
    );
    let recs = mta.wait_for_records(Duration::from_secs(10), "two deliveries", |r| {
        count(r, "Delivery") == 2
    });
    for r in recs.iter().filter(|r| r["type"] == "Reception") {
        assert_eq!(r["peer_address"]["addr"], "127.0.0.5", "{r}");
    }
}
