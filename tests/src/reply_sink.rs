//! An SMTP receiver whose RCPT replies the test chooses: what a provider's
//! refusal looks like to the sending MTA (`550 5.1.1 ...`, `421 4.7.0
//! [TSS04] ...`), which smtp-sink cannot say (its replies are fixed).
//!
//! It speaks enough ESMTP for Sluice's client — EHLO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT, no PIPELINING — one thread per connection.

use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Decides the reply to the `n`th RCPT (from 0, over every connection) for
/// `recipient`: `None` accepts it with 250.
pub type Rule = dyn Fn(usize, &str) -> Option<String> + Send + Sync;

struct Shared {
    rule: Box<Rule>,
    rcpts: AtomicUsize,
    accepted: Mutex<Vec<String>>,
}

/// The receiver, listening on `port` until dropped (its threads end with
/// their connections).
pub struct ReplySink {
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl ReplySink {
    /// Listen on a free port, replying to RCPT by `rule`.
    pub fn start(
        rule: impl Fn(usize, &str) -> Option<String> + Send + Sync + 'static,
    ) -> ReplySink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            rule: Box::new(rule),
            rcpts: AtomicUsize::new(0),
            accepted: Mutex::new(vec![]),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, &s);
                });
            }
        });
        ReplySink { port, shared }
    }

    /// Recipients of the messages it accepted (after the final dot).
    pub fn accepted(&self) -> Vec<String> {
        self.shared.accepted.lock().clone()
    }

    /// RCPT commands it has answered.
    pub fn rcpts(&self) -> usize {
        self.shared.rcpts.load(Ordering::SeqCst)
    }
}

fn session(stream: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 reply-sink ESMTP\r\n")?;
    let mut rcpts: Vec<String> = vec![];
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let verb = cmd
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => "250-reply-sink\r\n250 8BITMIME".to_string(),
            "HELO" | "NOOP" => "250 ok".into(),
            "MAIL" => {
                rcpts.clear();
                "250 2.1.0 ok".into()
            }
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 ok".into()
            }
            "RCPT" => {
                let n = s.rcpts.fetch_add(1, Ordering::SeqCst);
                let addr = cmd
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default();
                match (s.rule)(n, &addr) {
                    Some(refusal) => refusal,
                    None => {
                        rcpts.push(addr);
                        "250 2.1.5 ok".into()
                    }
                }
            }
            "DATA" if rcpts.is_empty() => "554 5.5.1 no valid recipients".into(),
            "DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                s.accepted.lock().append(&mut rcpts);
                "250 2.0.0 queued".into()
            }
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => "502 5.5.2 unknown command".into(),
        };
        out.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}
