//! custom_lua delivery (spec §5.3, conformance C13) and the seed example.

use sluice_tests::*;
use std::time::Duration;

/// The seed's `make.webhook` example, unchanged: its send returns 'OK'.
#[test]
fn seed_webhook_example_delivers() {
    let mta = Mta::start(&policy(
        "",
        "dofile('{ROOT}/examples/seeds/queue_custom_lua.lua')",
    ));
    let o = swaks(mta.port, &["--to", "someone@webhook"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = mta.wait_for_records(Duration::from_secs(10), "delivery", |r| {
        count(r, "Delivery") == 1
    });
    let d = recs.iter().find(|r| r["type"] == "Delivery").unwrap();
    assert_eq!(d["response"]["code"], 200);
    assert_eq!(d["response"]["content"], "OK");
    assert_eq!(d["delivery_protocol"], "Lua");
    assert_eq!(d["peer_address"]["name"], "Lua via make.webhook");
    assert_eq!(d["peer_address"]["addr"], "0.0.0.0");
    assert_eq!(d["site"], "unspecified->webhook@lua:make.webhook");
}

#[test]
fn send_results_map_to_delivery_retry_and_bounce() {
    let mta = Mta::start(&policy(
        "",
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 hour',
    protocol = { custom_lua = { constructor = 'make.test' } },
  }
end)
kumo.on('make.test', function(domain, tenant, campaign)
  local f = io.open('{DIR}/constructed', 'a')
  f:write(domain .. '\n')
  f:close()
  local conn = {}
  function conn:send(msg)
    local r = msg:recipient()
    if r:find('^ok') then return 'OK ' .. #msg:get_data() end
    if r:find('^t400') then kumo.reject(400, 'try later') end
    if r:find('^p500') then kumo.reject(500, 'no such thing') end
    if r:find('^t421') then kumo.reject(421, 'closing') end
    error('boom')
  end
  return conn
end)
"#,
    ));
    for to in [
        "ok@example.com",
        "t400@example.com",
        "p500@example.com",
        "t421@example.com",
        "err@example.com",
    ] {
        let o = swaks(mta.port, &["--to", to]);
        assert!(o.status.success(), "{}", text(&o));
        // one at a time, so the constructor count below is deterministic
        mta.wait_for_records(Duration::from_secs(10), to, |r| {
            r.iter()
                .any(|x| x["recipient"] == to && x["type"] != "Reception")
        });
    }
    let recs = mta.records();
    let outcome = |to: &str| {
        let r = recs
            .iter()
            .find(|x| x["recipient"] == to && x["type"] != "Reception")
            .unwrap();
        (
            r["type"].as_str().unwrap().to_string(),
            r["response"]["code"].as_u64().unwrap(),
            r["response"]["content"].as_str().unwrap().to_string(),
        )
    };
    let (kind, code, content) = outcome("ok@example.com");
    assert_eq!((kind.as_str(), code), ("Delivery", 200));
    assert!(content.starts_with("OK "), "{content}");
    assert_eq!(
        outcome("t400@example.com"),
        ("TransientFailure".into(), 400, "try later".into())
    );
    assert_eq!(
        outcome("p500@example.com"),
        ("Bounce".into(), 500, "no such thing".into())
    );
    assert_eq!(
        outcome("t421@example.com"),
        ("TransientFailure".into(), 421, "closing".into())
    );
    let (kind, code, content) = outcome("err@example.com");
    assert_eq!((kind.as_str(), code), ("TransientFailure", 400));
    assert!(
        content.contains("error in deliver_message") && content.contains("boom"),
        "{content}"
    );
    // the constructor ran for the first connection, and again after the 421
    let constructed = std::fs::read_to_string(mta.path("constructed")).unwrap();
    assert!(constructed.lines().count() >= 2, "{constructed}");
    assert!(constructed.lines().all(|l| l == "example.com"));
}
