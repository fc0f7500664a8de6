//! Live SMTP transcripts with the `sluice` command line
//! (`trace-smtp-server`, `trace-smtp-client`, as kcli's) against a real
//! sluice-mta: a swaks session shows up line by line as it happens, the
//! body as its size and first line; the delivery it causes shows up on the
//! client side; `--source` keeps only the peers asked for (and one that is
//! not a network is refused); `--json` gives the API's events.

use serde_json::Value;
use sluice_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A `sluice trace-…` process and the lines it has printed.
struct Watcher {
    child: Child,
    lines: Receiver<String>,
}

impl Watcher {
    /// Start `sluice <args>` and wait for its first line (it is watching).
    fn start(admin: u16, args: &[&str]) -> Watcher {
        let mut child = Command::new(binary("sluice"))
            .args(["--endpoint", &format!("http://127.0.0.1:{admin}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut w = Watcher { child, lines };
        let first = w.until(Duration::from_secs(10), |_| true);
        assert!(!first.is_empty(), "the trace did not start");
        w
    }

    /// Lines until one satisfies `done` (included); panics after `timeout`.
    fn until(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let stop = done(&line);
                    got.push(line);
                    if stop {
                        return got;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out; got {got:#?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the trace ended; got {got:#?}"),
            }
        }
    }

    /// Stop it; what it printed since the last `until`.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.try_iter().collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_swaks_session_and_its_delivery_are_traced_live() {
    let sink = Sink::start(&[]);
    let admin = free_port();
    let mta = Mta::start(&policy_with_init(
        &admin_listener(admin),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, idle_timeout = '0s' }}
end)
"#,
            sink.port
        ),
    ));
    let mut server = Watcher::start(admin, &["trace-smtp-server"]);
    let mut loopback = Watcher::start(
        admin,
        &["--json", "trace-smtp-server", "--source", "127.0.0.0/8"],
    );
    let elsewhere = Watcher::start(admin, &["trace-smtp-server", "--source", "10.0.0.0/8"]);
    let mut client = Watcher::start(admin, &["trace-smtp-client"]);

    let o = swaks(
        mta.port,
        &["--to", "u@example.com", "--header", "Subject: traced"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let seen = server.until(Duration::from_secs(10), |l| l.ends_with("=== closed"));
    let transcript = seen.join("\n");
    let mut at = 0;
    for want in [
        "=== connected",
        "-> 220 ",
        "<- EHLO ",
        "-> 250-",
        "<- MAIL FROM:<",
        "<- RCPT TO:<u@example.com>",
        "<- DATA",
        "-> 354 ",
        "<- [",
        "-> 250 ",
        "<- QUIT",
        "-> 221 ",
        "=== closed",
    ] {
        match transcript[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("{want:?} (in order) in\n{transcript}"),
        }
    }
    // the body as its size and first line, the client's address on each line
    let body = seen.iter().find(|l| l.contains("<- [")).unwrap();
    assert!(body.contains(" bytes] "), "{body}");
    assert!(
        seen.iter().all(|l| l.contains(" 127.0.0.1:")),
        "{transcript}"
    );

    // --json: the API's events, the same session
    let events: Vec<Value> = loopback
        .until(Duration::from_secs(10), |l| l.contains("\"Closed\""))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ehlo = events.iter().find_map(|e| {
        e["payload"]["Read"]
            .as_str()
            .filter(|r| r.starts_with("EHLO"))
    });
    assert!(ehlo.is_some(), "{events:#?}");
    assert!(events.iter().all(|e| e["id"] == events[0]["id"]));

    // the delivery: this end writes the commands and reads the sink's replies
    let out = client.until(Duration::from_secs(20), |l| l.ends_with("=== closed"));
    let transcript = out.join("\n");
    for want in [
        "=== connected",
        "<- 220 ",
        "-> EHLO ",
        "-> MAIL FROM:<",
        "-> RCPT TO:<u@example.com>",
        "-> [",
        "-> QUIT",
    ] {
        assert!(transcript.contains(want), "{want:?} in\n{transcript}");
    }
    assert!(
        transcript.contains(&format!("127.0.0.1:{}", sink.port)),
        "{transcript}"
    );

    // nothing from 127.0.0.1 reached the watcher of 10.0.0.0/8
    assert_eq!(elsewhere.stop(), Vec::<String>::new());

    // a source that is not a network is refused, saying which
    let r = http_request(
        admin,
        "/api/admin/trace-smtp-server/v1?source=10.0.0.0/8,mars",
        None,
    );
    assert_eq!(r["status"], 400, "{r}");
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("\"mars\" is not an address"),
        "{r}"
    );
}

#[test]
fn a_trace_ends_cleanly_when_the_mta_drains() {
    let admin = free_port();
    let mut mta = Mta::start(&policy_with_init(&admin_listener(admin), "", ""));
    let mut watcher = Watcher::start(admin, &["trace-smtp-server"]);
    mta.sigterm();
    // the trace ends when the drain begins (not with a broken connection),
    // and the MTA exits well before its 60 s drain timeout
    let exited = mta.wait_exit(Duration::from_secs(30));
    assert!(exited.is_some(), "the MTA did not exit\n{}", mta.stderr());
    let last = watcher.until(Duration::from_secs(10), |l| l.starts_with("trace ended"));
    assert_eq!(last, ["trace ended: the MTA is draining"]);
    let status = watcher.child.wait().unwrap();
    assert!(status.success(), "the trace ends cleanly: {status}");
}
