//! MX resolution against a real DNS server (dnsmasq) and delivery to the
//! hosts it names (Postfix's smtp-sink).

use sluice_tests::*;
use std::time::Duration;

#[test]
fn mx_records_route_mail_and_null_mx_bounces() {
    let dns = Dnsmasq::start(&[
        // preference 10 has no address; 20 does
        "--mx-host=mx.test,mail2.mx.test,10",
        "--mx-host=mx.test,mail1.mx.test,20",
        "--host-record=mail1.mx.test,127.0.0.1",
        // no MX: the domain itself is the mail host
        "--host-record=plain.test,127.0.0.1",
        // RFC 7505 null MX: preference 0, root name
        "--dns-rr=nullmx.test,15,000000",
    ]);
    let sink = Sink::start(&[]);
    let mta = Mta::start(&policy_with_init(
        &format!(
            "kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{}' }} }}",
            dns.port
        ),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ retry_interval = '1 hour' }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, smtp_port = {} }}
end)
"#,
            sink.port
        ),
    ));
    for to in ["u@mx.test", "u@plain.test", "u@nullmx.test", "u@nx.test"] {
        let o = swaks(mta.port, &["--to", to]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let recs = mta.wait_for_records(Duration::from_secs(30), "4 outcomes", |r| {
        count(r, "Delivery") + count(r, "Bounce") + count(r, "TransientFailure") >= 4
    });
    let outcome = |to: &str| {
        recs.iter()
            .find(|r| r["recipient"] == to && r["type"] != "Reception")
            .unwrap()
            .clone()
    };
    let d = outcome("u@mx.test");
    assert_eq!(d["type"], "Delivery", "{d}");
    assert_eq!(d["site"], "unspecified->(mail2|mail1).mx.test@smtp_client");
    assert_eq!(d["peer_address"]["name"], "mail1.mx.test");
    let d = outcome("u@plain.test");
    assert_eq!(d["type"], "Delivery", "{d}");
    assert_eq!(d["site"], "unspecified->plain.test@smtp_client");
    let b = outcome("u@nullmx.test");
    assert_eq!(b["type"], "Bounce", "{b}");
    assert_eq!(b["response"]["code"], 556);
    assert_eq!(b["response"]["content"], "Recipient address has a null MX");
    let t = outcome("u@nx.test");
    assert_eq!(t["type"], "TransientFailure", "{t}");
    assert!(
        t["response"]["content"]
            .as_str()
            .unwrap()
            .contains("NXDOMAIN"),
        "{t}"
    );
    assert_eq!(sink.messages().len(), 2);
}
