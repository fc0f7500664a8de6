//! What each fuzz target checks, as plain functions: the cargo-fuzz
//! targets (`fuzz/fuzz_targets/`) call them on libFuzzer's inputs, and the
//! ordinary test run (`tests/tests/fuzz_corpus.rs`) replays every file of
//! every corpus through them, so a crash once found stays fixed. A check
//! panics when the code under test misbehaves.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

/// The SMTP command parser on any line: a command or a syntax error, never
/// a panic.
pub fn smtp_command(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let _ = sluice_mta::smtp::parse_command(&line);
}

/// The spool's segment reader on any bytes: never a panic; records and
/// skipped ranges tile the input in order, so nothing after a bad record
/// is lost, and no record reaches past the input.
pub fn spool_scan(data: &[u8]) {
    let scan = sluice_mta::spool::scan(data);
    let mut spans: Vec<(u64, u64)> = scan
        .records
        .iter()
        .map(|r| (r.off, r.off + r.span()))
        .collect();
    spans.extend(scan.skipped.iter().map(|r| (r.start, r.end)));
    spans.sort();
    let mut at = 0;
    for (start, end) in spans {
        assert_eq!(start, at, "a gap or an overlap at {start}");
        assert!(end > start && end <= data.len() as u64, "{start}..{end}");
        at = end;
    }
    assert_eq!(at, data.len() as u64, "the whole input is accounted for");
    assert!(scan.valid_end <= data.len() as u64);
}

/// Header parsing and editing on any message: never a panic; an added
/// header is found again by name, a removed one is gone, and the body after
/// the header block is kept by every edit.
pub fn headers(data: &[u8]) {
    use sluice_mta::message::headers::*;
    let block = header_block(data);
    for (name, value) in iter_headers(&block) {
        let _ = (name.len(), value.len());
    }
    let body = &data[header_block_len(data).min(data.len())..];
    let added = prepend_header(data, "X-Fuzz", "1");
    assert_eq!(
        first_named_header_value(&added, "x-fuzz").as_deref(),
        Some("1"),
        "a prepended header is found"
    );
    assert!(added.ends_with(body), "prepend kept the body");
    let appended = append_header(data, "X-Fuzz-End", "2");
    assert!(appended.ends_with(body), "append kept the body");
    let removed = remove_all_named_headers(&added, "X-Fuzz");
    assert_eq!(first_named_header_value(&removed, "X-Fuzz"), None);
}

/// The DATA reader on any bytes (dot-stuffing, bare CR/LF, over-long lines,
/// the size limit): never a panic; an accepted body ends in CRLF and stays
/// within the size limit.
pub fn data_reader(data: &[u8]) {
    const MAX_SIZE: usize = 4096;
    const LINE_LIMIT: usize = 200;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(data.len() + 1);
        client.write_all(data).await.unwrap();
        drop(client);
        let mut conn =
            sluice_mta::listener::io::Conn::new(Box::new(server), Duration::from_secs(1));
        // most inputs end without a lone dot: the reader then reports EOF
        if let Ok(body) = conn.read_data(MAX_SIZE, LINE_LIMIT).await {
            assert!(
                body.data.len() <= MAX_SIZE,
                "{} bytes kept",
                body.data.len()
            );
            assert!(body.data.is_empty() || body.data.ends_with(b"\r\n"));
        }
    });
}

/// The operator's CR validation and rendering on any set of objects (a JSON
/// array of QueuePolicy, EgressPool and EgressPath objects): never a panic;
/// a rejection says what is wrong; and what is accepted renders to Lua that
/// compiles, so no CR can inject code or break the policy the pods load.
pub fn cr_validation(data: &[u8]) {
    use sluice_operator::crd::{EgressPath, EgressPool, QueuePolicy};
    use sluice_operator::render::{Inputs, Options, render};
    let Ok(objects) = serde_json::from_slice::<Vec<serde_json::Value>>(data) else {
        return;
    };
    let mut inputs = Inputs::default();
    for o in objects {
        match o["kind"].as_str() {
            Some("QueuePolicy") => inputs
                .queue_policies
                .extend(serde_json::from_value::<QueuePolicy>(o).ok()),
            Some("EgressPool") => inputs
                .egress_pools
                .extend(serde_json::from_value::<EgressPool>(o).ok()),
            Some("EgressPath") => inputs
                .egress_paths
                .extend(serde_json::from_value::<EgressPath>(o).ok()),
            _ => {}
        }
    }
    let out = render(&inputs, &Options::default());
    for (key, rejection) in out.rejected() {
        assert!(!rejection.message.is_empty(), "{key}: a rejection says why");
    }
    let lua = mlua::Lua::new();
    for (name, text) in &out.files {
        if name.ends_with(".lua")
            && let Err(e) = lua
                .load(text.as_str())
                .set_name(name.as_str())
                .into_function()
        {
            panic!("{name} does not compile: {e}\n{text}");
        }
    }
}

/// Whole SMTP sessions: any bytes sent to a real listener of an in-process
/// daemon. No panic (a panic in any task aborts the fuzzer), every reply
/// line well formed, and the next session still gets its greeting.
pub fn smtp_session(data: &[u8]) {
    let out = exchange(daemon().smtp, data, true);
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.len() >= 4
            && line[..3].iter().all(u8::is_ascii_digit)
            && (line[3] == b' ' || line[3] == b'-')
            && line.ends_with(b"\r");
        assert!(ok, "malformed reply {:?}", String::from_utf8_lossy(line));
    }
    assert!(
        out.starts_with(b"220 ") || out.starts_with(b"421 "),
        "no greeting: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// The admin API's JSON bodies: any body POSTed to inject, bounce or
/// suspend (the first byte picks which) of an in-process daemon gets an
/// HTTP response below 500 (or the 503 that says new mail is refused for
/// now, on a full disk).
pub fn admin_api(data: &[u8]) {
    const PATHS: &[&str] = &[
        "/api/inject/v1",
        "/api/admin/bounce/v1",
        "/api/admin/suspend/v1",
    ];
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[pick as usize % PATHS.len()];
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // no half-close: an HTTP server may drop a half-closed connection unanswered
    let out = exchange(daemon().admin, &request, false);
    let head = String::from_utf8_lossy(&out[..out.len().min(12)]).to_string();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let text = String::from_utf8_lossy(&out);
    // 503 with Retry-After is the refusal of a full disk or short memory:
    // what cannot be done now, said as such
    let refused_for_now = status == 503 && text.contains("not accepting new mail");
    assert!(
        status < 500 || refused_for_now,
        "{path} answered {status}: {text}"
    );
}

/// Accepted mail goes to the `null` queue (dropped), so a long run does not
/// fill the disk; every event a session can reach still runs.
const POLICY: &str = r#"
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{DIR}/spool' }
  kumo.define_spool { name = 'meta', path = '{DIR}/spool' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:{SMTP}', relay_hosts = { '127.0.0.1' },
    max_message_size = 100000, max_recipients_per_message = 20,
    client_timeout = '2 seconds',
  }
  kumo.start_http_listener { listen = '127.0.0.1:{ADMIN}', trusted_hosts = { '127.0.0.1' } }
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('queue', 'null')
end)
kumo.on('http_message_generated', function(msg)
  msg:set_meta('queue', 'null')
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } }
end)
"#;

/// The ports of the in-process daemon.
pub struct Daemon {
    /// The ESMTP listener.
    pub smtp: u16,
    /// The HTTP (admin) listener.
    pub admin: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon, started on first use, for the life of the process.
pub fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (smtp, admin) = (free_port(), free_port());
        let code = POLICY
            .replace("{DIR}", &dir.display().to_string())
            .replace("{SMTP}", &smtp.to_string())
            .replace("{ADMIN}", &admin.to_string());
        let source = sluice_mta::policy::PolicySource::embedded("fuzz.lua", &code);
        let options = sluice_mta::daemon::Options {
            policy_path: None,
            drain_timeout: Duration::from_secs(1),
            reload_interval: Duration::from_secs(3600),
            handoff_to: vec![],
            handoff_report: None,
            provider_metrics_limit: sluice_mta::metrics::provider::DEFAULT_LIMIT,
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(sluice_mta::daemon::run(source, options)) {
                panic!("the fuzzing daemon did not start: {e}");
            }
        });
        for port in [smtp, admin] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Daemon { smtp, admin }
    })
}

/// Send `input` on a new connection to `port`, close our side if
/// `half_close`, and read what comes back until the server closes (at most
/// 5 s).
pub fn exchange(port: u16, input: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the daemon is up");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(input);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    out
}
