//! Live SMTP transcripts for operators (`/api/admin/trace-smtp-server/v1`
//! and `-client/v1`, `sluice trace-smtp-server` / `trace-smtp-client`, as
//! kcli's): what each session reads and writes, as it happens, for someone
//! asking "what is this client (or that provider) saying to us right now?".
//!
//! Sessions publish on a broadcast channel per direction; publishing costs
//! one atomic load while nobody watches, so the tracing is always compiled
//! in and always available. Credentials never appear: an AUTH line keeps
//! its mechanism only, and the lines that answer an AUTH challenge are
//! published as `****`. A message body appears as its length and first
//! line. A watcher that cannot keep up loses events, and is told how many.

use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::broadcast;

/// Events kept for a slow watcher before it starts losing them.
const BACKLOG: usize = 4096;

/// Inbound sessions (the ESMTP listeners).
pub static SERVER: LazyLock<Arc<TraceHub>> = LazyLock::new(|| Arc::new(TraceHub::new()));
/// Outbound sessions (SMTP delivery).
pub static CLIENT: LazyLock<Arc<TraceHub>> = LazyLock::new(|| Arc::new(TraceHub::new()));

/// One direction's sessions and their watchers.
pub struct TraceHub {
    tx: broadcast::Sender<Arc<TraceEvent>>,
    next_id: AtomicU64,
    /// Watchers now: read on every line a session reads or writes, so an
    /// atomic (the channel's own count takes a lock).
    watchers: Arc<AtomicUsize>,
}

/// A watcher's end: the events, and its place in the count until dropped.
pub struct Watch {
    /// The events from the moment of subscribing.
    pub rx: broadcast::Receiver<Arc<TraceEvent>>,
    watchers: Arc<AtomicUsize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What happened on a session, as the trace endpoints stream it (one JSON
/// object per line).
#[derive(Debug, Clone, Serialize)]
pub struct TraceEvent {
    /// The session, numbered from 1 per direction since the process started.
    pub id: u64,
    /// When: RFC 3339, UTC, microseconds.
    pub when: String,
    /// The remote end: the client (inbound) or the server (outbound).
    pub peer: SocketAddr,
    /// This end's address, when known.
    pub local: Option<SocketAddr>,
    /// The remote host's name: the MX host (outbound); empty inbound.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What happened.
    pub payload: Payload,
}

/// The kinds of event.
#[derive(Debug, Clone, Serialize)]
pub enum Payload {
    /// The session began.
    Connected,
    /// A line this end read (without its line ending).
    Read(String),
    /// A line this end wrote.
    Write(String),
    /// A message body read or written: its length and first line.
    AbbreviatedRead {
        /// The first line.
        snippet: String,
        /// Its length in bytes.
        len: usize,
    },
    /// As `AbbreviatedRead`, for a body this end wrote.
    AbbreviatedWrite {
        /// The first line.
        snippet: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Something the session noted (TLS established, a watcher's loss).
    Diagnostic(String),
    /// The session ended.
    Closed,
}

impl TraceHub {
    fn new() -> Self {
        TraceHub {
            tx: broadcast::channel(BACKLOG).0,
            next_id: AtomicU64::new(1),
            watchers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Watch every session from now on.
    pub fn subscribe(&self) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        }
    }

    /// A new session between `peer` and `local`: `Connected` now, `Closed`
    /// when the tracer is dropped.
    pub fn session(self: &Arc<Self>, peer: SocketAddr, local: Option<SocketAddr>) -> Tracer {
        let t = Tracer {
            hub: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            name: String::new(),
        };
        t.emit(|| Payload::Connected);
        t
    }
}

/// One session's publisher.
pub struct Tracer {
    hub: Arc<TraceHub>,
    id: u64,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    name: String,
}

impl Tracer {
    /// Name the remote host (an MX host's name, for outbound sessions).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Whether anyone watches: what only a watcher needs is not worked out
    /// otherwise.
    pub fn watched(&self) -> bool {
        self.hub.watchers.load(Ordering::Relaxed) > 0
    }

    /// Publish what `payload` makes, if anyone watches (it is not built
    /// otherwise).
    pub fn emit(&self, payload: impl FnOnce() -> Payload) {
        if !self.watched() {
            return;
        }
        let event = TraceEvent {
            id: self.id,
            when: now(),
            peer: self.peer,
            local: self.local,
            name: self.name.clone(),
            payload: payload(),
        };
        // no receiver left since the check: nobody to tell
        let _ = self.hub.tx.send(Arc::new(event));
    }

    /// A line read, with AUTH credentials hidden.
    pub fn read(&self, line: &str) {
        self.emit(|| Payload::Read(redact_auth(line)));
    }

    /// A line written, with AUTH credentials hidden.
    pub fn write(&self, line: &str) {
        self.emit(|| Payload::Write(redact_auth(line)));
    }

    /// A line that answers an AUTH challenge: a credential, never shown.
    pub fn read_secret(&self) {
        self.emit(|| Payload::Read("****".into()));
    }

    /// The session's TLS handshake, done.
    pub fn tls(&self, version: &str, cipher: &str) {
        self.emit(|| Payload::Diagnostic(format!("TLS: {version} {cipher}")));
    }

    /// A message body read.
    pub fn read_body(&self, body: &[u8]) {
        self.emit(|| {
            let (snippet, len) = abbreviate(body);
            Payload::AbbreviatedRead { snippet, len }
        });
    }

    /// A message body written.
    pub fn write_body(&self, body: &[u8]) {
        self.emit(|| {
            let (snippet, len) = abbreviate(body);
            Payload::AbbreviatedWrite { snippet, len }
        });
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.emit(|| Payload::Closed);
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn abbreviate(body: &[u8]) -> (String, usize) {
    let first = body.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    (
        first.trim_end_matches('\r').chars().take(100).collect(),
        body.len(),
    )
}

/// An AUTH line with its credentials replaced by `****`: the mechanism
/// stays.
pub fn redact_auth(line: &str) -> String {
    let mut words = line.split_ascii_whitespace();
    match words.next() {
        Some(verb) if verb.eq_ignore_ascii_case("AUTH") => {
            let mechanism = words.next().unwrap_or("");
            match words.next() {
                Some(_) => format!("AUTH {mechanism} ****"),
                None => format!("AUTH {mechanism}"),
            }
        }
        _ => line.to_string(),
    }
}

/// Which sessions a watcher wants: those whose peer is in one of the
/// networks (all, when none is given).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The networks.
    pub nets: Vec<ipnet::IpNet>,
}

impl Filter {
    /// Whether the watcher wants `event`.
    pub fn wants(&self, event: &TraceEvent) -> bool {
        let ip = crate::config::listener::canonical(event.peer.ip());
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_sees_a_session_in_order_with_credentials_hidden() {
        let hub = Arc::new(TraceHub::new());
        let mut watch = hub.subscribe();
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        {
            let t = hub.session(peer, None);
            t.read("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
            t.read_secret();
            t.write("235 2.7.0 ok");
            t.read_body(b"Subject: hi\r\n\r\nbody\r\n");
        }
        let mut got = vec![];
        while let Ok(e) = watch.rx.try_recv() {
            got.push(serde_json::to_value(&e.payload).unwrap());
        }
        assert_eq!(
            got,
            [
                serde_json::json!("Connected"),
                serde_json::json!({ "Read": "AUTH PLAIN ****" }),
                serde_json::json!({ "Read": "****" }),
                serde_json::json!({ "Write": "235 2.7.0 ok" }),
                serde_json::json!({ "AbbreviatedRead": { "snippet": "Subject: hi", "len": 21 } }),
                serde_json::json!("Closed"),
            ]
        );
    }

    #[test]
    fn nothing_is_built_while_nobody_watches() {
        let hub = Arc::new(TraceHub::new());
        let t = hub.session("192.0.2.7:4000".parse().unwrap(), None);
        t.emit(|| panic!("built without a watcher"));
    }

    #[test]
    fn a_filter_matches_the_peer_network() {
        let hub = Arc::new(TraceHub::new());
        let mut watch = hub.subscribe();
        let _t = hub.session("[::ffff:10.1.2.3]:25".parse().unwrap(), None);
        let e = watch.rx.try_recv().unwrap();
        let f = |n: &str| Filter {
            nets: vec![n.parse().unwrap()],
        };
        assert!(f("10.0.0.0/8").wants(&e));
        assert!(!f("192.168.0.0/16").wants(&e));
        assert!(Filter::default().wants(&e));
    }
}
