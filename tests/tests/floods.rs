//! Abuse on the wire: 5,000 idle connections, a 10 MB line, 2,000
//! pipelined commands and a slowloris client. The server keeps serving
//! other clients within its limits, and its memory stays bounded (measured
//! from /proc, printed for the record).

use sluice_tests::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(mta: &Mta) -> u64 {
    let pid = mta.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn idle_floods_long_lines_and_pipelining_leave_other_clients_served() {
    let mta = Mta::start(&maildir_policy(
        "max_connections = 10000, client_timeout = '60 seconds'",
        "",
    ));
    RawSmtp::send_message(mta.port, "warm@example.com", "warm up");
    let before = rss_kib(&mta);

    // 5,000 connections that say nothing after the greeting
    let mut idle = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let mut c = RawSmtp::connect(mta.port);
        assert_eq!(c.reply().0, 220);
        idle.push(c);
    }
    let with_idle = rss_kib(&mta);
    let start = Instant::now();
    RawSmtp::send_message(
        mta.port,
        "other@example.com",
        "served beside 5,000 idle sessions",
    );
    let served_in = start.elapsed();

    // a 10 MB line: refused, the session goes on, nothing of it is kept
    let mut c = RawSmtp::connect(mta.port);
    c.reply();
    c.send(&vec![b'x'; 10 << 20]);
    let (code, text) = c.command("");
    assert_eq!(code, 500, "{text}");
    assert_eq!(c.command("NOOP").0, 250, "the session goes on");
    let after_line = rss_kib(&mta);

    // 2,000 pipelined commands in one write: 2,000 replies, in order
    c.send("NOOP\r\n".repeat(2000).as_bytes());
    for i in 0..2000 {
        assert_eq!(c.reply().0, 250, "reply {i}");
    }
    assert_eq!(c.command("QUIT").0, 221);
    let after_pipeline = rss_kib(&mta);
    eprintln!(
        "RSS {before} KiB idle; {with_idle} KiB with 5,000 idle sessions ({} B each); \
         {after_line} KiB after a 10 MB line; {after_pipeline} KiB after 2,000 pipelined \
         commands; a message beside them took {served_in:?}",
        (with_idle.saturating_sub(before)) * 1024 / 5000
    );
    assert!(
        with_idle - before < 200 * 1024,
        "5,000 idle sessions cost {} KiB",
        with_idle - before
    );
    assert!(
        after_line < with_idle + 16 * 1024,
        "the 10 MB line was not buffered"
    );
    drop(idle);
}

/// A client that sends a byte every half second never lets a read time
/// out; the whole command line must still arrive within the client
/// timeout, so the session ends with 421 instead of lasting for ever.
#[test]
fn a_slowloris_client_is_cut_off_at_the_client_timeout() {
    let mta = Mta::start(&maildir_policy("client_timeout = '2 seconds'", ""));
    let mut s = TcpStream::connect(("127.0.0.1", mta.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let mut closed = false;
    'dribble: while start.elapsed() < Duration::from_secs(20) {
        use std::io::Write;
        if s.write_all(b"N").is_err() {
            closed = true;
            break;
        }
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(500) {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break 'dribble;
                }
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(closed, "still connected after 20 s of dribbling: {text}");
    assert!(text.contains("\r\n421 "), "{text}");
    eprintln!("slowloris cut off after {:?}", start.elapsed());
    RawSmtp::send_message(mta.port, "u@example.com", "still serving");
}
