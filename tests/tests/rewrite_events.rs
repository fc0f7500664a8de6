//! The events that rewrite SMTP replies. `smtp_client_rewrite_delivery_status`:
//! a destination's `452 4.2.2` read as a 500 for one domain bounces there
//! (the record says it was rewritten) and stays transient elsewhere.
//! `smtp_server_rewrite_response`: the DATA reply gains a line, a relay
//! refusal another text, a NOOP answered 421 closes the session, as
//! KumoMTA's reference describes.

use serde_json::Value;
use sluice_tests::reply_sink::ReplySink;
use sluice_tests::*;
use std::time::Duration;

#[test]
fn a_refusal_rewritten_to_a_500_bounces_and_says_so() {
    let sink = ReplySink::start(|_, _| Some("452 4.2.2 The email account is over quota".into()));
    let mta = Mta::start(&policy(
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
    retry_interval = '1 hour',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
kumo.on('smtp_client_rewrite_delivery_status', function(response, domain, tenant, campaign, routing_domain)
  if domain == 'notify.example' and response:find('^452 4%.2%.2 ') then
    return 500
  end
end)
"#,
            port = sink.port
        ),
    ));
    for to in ["a@notify.example", "b@keep.example"] {
        let reply = RawSmtp::send_message(mta.port, to, "Subject: x\r\n\r\nx");
        assert!(reply.starts_with("250"), "{reply}");
    }
    let recs = mta.wait_for_records(Duration::from_secs(20), "a bounce and a deferral", |r| {
        count(r, "Bounce") == 1 && count(r, "TransientFailure") == 1
    });
    let bounce = recs.iter().find(|r| r["type"] == "Bounce").unwrap();
    assert_eq!(bounce["recipient"], "a@notify.example", "{bounce}");
    assert_eq!(bounce["response"]["code"], 500, "{bounce}");
    let text = bounce["response"]["content"].as_str().unwrap();
    assert!(
        text.ends_with("over quota (kumomta: status was rewritten from 452 -> 500)"),
        "{bounce}"
    );
    let kept = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure")
        .unwrap();
    assert_eq!(kept["recipient"], "b@keep.example", "{kept}");
    assert_eq!(kept["response"]["code"], 452, "{kept}");
}

fn session(port: u16, source: &str, lines: &[&str]) -> Vec<Value> {
    let mut args = vec![port.to_string(), "--source".into(), source.to_string()];
    args.extend(lines.iter().map(|l| l.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = python_client("raw_session.py", &args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_server_sends_what_the_rewrite_handler_returns() {
    let mta = Mta::start(&maildir_policy("relay_hosts = { '127.0.0.1' }", "").replace(
        "kumo.on('get_queue_config'",
        r#"kumo.on('smtp_server_rewrite_response', function(status, response, command, conn_meta)
  if command == 'DATA' and status == 250 then
    return 250, 'super fantastic!\n' .. response
  end
  if command == 'RCPT' and status == 550 then
    return nil, '5.7.1 ask ' .. conn_meta:get_meta('hostname') .. ' for relaying'
  end
  if command == 'NOOP' then
    return 421, '4.3.0 going away'
  end
end)
kumo.on('get_queue_config'"#,
    ));
    let r = session(
        mta.port,
        "127.0.0.1",
        &[
            "EHLO client.example",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@example.com>",
            "DATA",
            "Subject: x\r\n\r\nhi\r\n.",
            "NOOP",
            "QUIT",
        ],
    );
    assert_eq!(r[0]["code"], 220, "the banner as it was: {r:?}");
    assert_eq!(r[4]["code"], 354, "{r:?}");
    assert_eq!(r[5]["code"], 250, "{r:?}");
    let data = r[5]["text"].as_str().unwrap();
    assert!(data.starts_with("super fantastic!\n"), "{data}");
    assert_eq!(r[6]["code"], 421, "{r:?}");
    assert_eq!(r[6]["text"], "4.3.0 going away", "{r:?}");
    assert_eq!(r.len(), 7, "the 421 closed the session: {r:?}");
    mta.wait_for_records(Duration::from_secs(10), "the delivery", |r| {
        count(r, "Delivery") == 1
    });

    let r = session(
        mta.port,
        "127.0.0.6",
        &[
            "EHLO client.example",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@example.com>",
            "QUIT",
        ],
    );
    assert_eq!(r[3]["code"], 550, "{r:?}");
    let text = r[3]["text"].as_str().unwrap();
    assert!(
        text.starts_with("5.7.1 ask ") && text.ends_with(" for relaying"),
        "{text}"
    );
    assert_eq!(r[4]["code"], 221, "{r:?}");
}
