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

/// A webhook receiver (Python's http.server) on a free port.
struct Webhook {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start() -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("requests.jsonl");
        let port = free_port();
        let child = std::process::Command::new("python3")
            .arg(workspace_root().join("tests/clients/webhook_server.py"))
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "webhook server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Webhook {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Webhook delivery from Lua with `kumo.http.build_client`, as KumoMTA's
/// "publishing log events via webhooks" page writes it: a 2xx reply is a
/// Delivery whose disposition carries the HTTP status; a 500 is a Bounce;
/// a receiver that is down is a TransientFailure.
#[test]
fn http_client_delivers_to_a_webhook() {
    let hook = Webhook::start();
    let down = free_port();
    let mta = Mta::start(&policy(
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1 hour',
    protocol = {{ custom_lua = {{ constructor = 'make.webhook' }} }},
  }}
end)
kumo.on('make.webhook', function(domain, tenant, campaign)
  local connection = {{}}
  local client = kumo.http.build_client {{ timeout = '5s' }}
  function connection:send(message)
    local user = message:recipient():match('^[^@]+')
    local url = 'http://127.0.0.1:{port}/log'
    if user == 'refuse' then url = 'http://127.0.0.1:{port}/status/500' end
    if user == 'down' then url = 'http://127.0.0.1:{down}/log' end
    local response = client:post(url)
      :header('Content-Type', 'message/rfc822')
      :body(message:get_data())
      :send()
    local disposition = string.format(
      '%d %s: %s',
      response:status_code(),
      response:status_reason(),
      response:text()
    )
    if response:status_is_success() then
      return disposition
    end
    kumo.reject(500, disposition)
  end
  function connection:close()
    client:close()
  end
  return connection
end)
"#,
            port = hook.port,
        ),
    ));
    for to in [
        "a@example.com",
        "b@example.com",
        "refuse@example.com",
        "down@example.com",
    ] {
        let o = swaks(
            mta.port,
            &["--to", to, "--header", &format!("Subject: to {to}")],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let recs = mta.wait_for_records(Duration::from_secs(20), "outcomes", |r| {
        count(r, "Delivery") == 2 && count(r, "Bounce") == 1 && count(r, "TransientFailure") == 1
    });
    let of = |to: &str| {
        recs.iter()
            .find(|r| r["recipient"] == to && r["type"] != "Reception")
            .unwrap()
    };
    assert_eq!(of("a@example.com")["type"], "Delivery");
    assert_eq!(
        of("a@example.com")["response"]["content"],
        "200 OK: accepted"
    );
    assert_eq!(of("refuse@example.com")["type"], "Bounce");
    assert_eq!(
        of("refuse@example.com")["response"]["content"],
        "500 Internal Server Error: refused"
    );
    assert_eq!(of("down@example.com")["type"], "TransientFailure");
    let requests = hook.requests();
    assert_eq!(requests.len(), 3, "two deliveries and the refused one");
    for r in &requests {
        assert_eq!(r["headers"]["content-type"], "message/rfc822");
        assert!(r["body"].as_str().unwrap().contains("Subject: to "));
    }
}

/// `batch_size > 1`: `send_batch` gets up to `batch_size` messages at once,
/// and its one disposition (or rejection) applies to every message in it.
#[test]
fn send_batch_gets_batches_and_its_result_applies_to_each() {
    let mta = Mta::start(&policy(
        "",
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 hour',
    protocol = { custom_lua = {
      constructor = 'make.batch', batch_size = 10, min_batch_size = 5, max_batch_latency = '2s',
    } },
  }
end)
kumo.on('make.batch', function(domain)
  local conn = {}
  function conn:send_batch(msgs)
    local f = io.open('{DIR}/batches', 'a')
    f:write(domain .. ' ' .. #msgs .. '\n')
    f:close()
    if domain == 'refused.example' then kumo.reject(550, 'not wanted') end
    return 'batched ' .. #msgs
  end
  return conn
end)
"#,
    ));
    for (domain, n) in [("example.com", "25"), ("refused.example", "3")] {
        let out = python_client(
            "smtp_send.py",
            &[
                "--port",
                &mta.port.to_string(),
                "--count",
                n,
                "--domain",
                domain,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let recs = mta.wait_for_records(Duration::from_secs(20), "outcomes", |r| {
        count(r, "Delivery") == 25 && count(r, "Bounce") == 3
    });
    let batches = std::fs::read_to_string(mta.path("batches")).unwrap();
    let sizes: Vec<(String, usize)> = batches
        .lines()
        .map(|l| {
            let (d, n) = l.split_once(' ').unwrap();
            (d.to_string(), n.parse().unwrap())
        })
        .collect();
    let ok: Vec<usize> = sizes
        .iter()
        .filter(|(d, _)| d == "example.com")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(ok.iter().sum::<usize>(), 25, "{batches}");
    assert!(ok.iter().all(|n| *n <= 10), "{batches}");
    assert!(
        ok.iter().any(|n| *n > 1),
        "messages were batched: {batches}"
    );
    for d in recs.iter().filter(|r| r["type"] == "Delivery") {
        assert!(
            d["response"]["content"]
                .as_str()
                .unwrap()
                .starts_with("batched ")
        );
    }
    for b in recs.iter().filter(|r| r["type"] == "Bounce") {
        assert_eq!(b["response"]["code"], 550);
    }
}
