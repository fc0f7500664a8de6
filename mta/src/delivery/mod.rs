//! Delivery protocols. Each hands messages to a destination and reports
//! what happened to every recipient; none of them knows about queues,
//! retries or throttles. Protocols that keep a session (SMTP, custom_lua,
//! the deferred-inject dispatcher) implement [`Deliver`], which the egress
//! dispatcher drives for every ready queue alike; maildir delivers a
//! message in one call.

pub mod custom_lua;
pub mod deferred_inject;
pub mod maildir;
pub mod smtp;
pub mod xfer;

use crate::log::{PeerAddress, Response};
use crate::message::MessageRef;
use sluice_common::egress::{EgressPathConfig, EgressSource};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A future a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of one delivery attempt of one message.
#[derive(Debug)]
pub struct Attempt {
    /// The log records' `delivery_protocol` (`ESMTP`, `Lua`, `Maildir`, ...).
    pub protocol: &'static str,
    /// The host the session talked to, for the log records; `None` when there
    /// is no network peer.
    pub peer: Option<PeerAddress>,
    /// (protocol version, cipher suite) when the session used TLS.
    pub tls: Option<(String, String)>,
    /// What happened to each recipient of the message (empty with a
    /// `rebind`).
    pub results: Vec<RecipientResult>,
    /// The message now belongs in this queue instead (the deferred-inject
    /// dispatcher's answer): the queue engine moves it there.
    pub rebind: Option<String>,
}

impl Attempt {
    /// The same outcome for every recipient.
    pub fn for_all(
        protocol: &'static str,
        peer: Option<PeerAddress>,
        recipients: Vec<String>,
        outcome: Outcome,
    ) -> Attempt {
        Attempt {
            protocol,
            peer,
            tls: None,
            results: recipients
                .into_iter()
                .map(|recipient| RecipientResult {
                    recipient,
                    outcome: outcome.clone(),
                })
                .collect(),
            rebind: None,
        }
    }
}

/// What one attempt did for one recipient.
#[derive(Debug)]
pub struct RecipientResult {
    /// The recipient's address, as in the message's envelope.
    pub recipient: String,
    /// Whether it was delivered, failed for now, or bounced.
    pub outcome: Outcome,
}

/// What became of one recipient, with the response that says so.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the destination: logged as a Delivery and dropped from the
    /// message.
    Delivered(Response),
    /// Failed for now: the recipient stays, and the message is retried with
    /// backoff.
    Transient(Response),
    /// Failed for good: logged as a Bounce and dropped from the message.
    Bounced(Response),
}

/// The egress path a session is for: the names in the ready queue's name,
/// the source, and the path's config.
pub struct Path {
    /// The ready queue's name, `source->site@protocol`.
    pub name: String,
    /// The egress source the session sends from (its local address, EHLO
    /// name, ...).
    pub source: Arc<EgressSource>,
    /// The egress path config (`get_egress_path_config`) for this source and
    /// site.
    pub config: Arc<EgressPathConfig>,
}

/// A session could not be opened: `code` decides (5xx bounces what waits,
/// anything else is a transient failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The SMTP-style reply code.
    pub code: u16,
    /// Why the session could not be opened.
    pub text: String,
}

/// What one send did: an attempt per message, in order, and whether the
/// session must be closed now (a 421, an error that leaves it unusable).
pub struct Sent {
    /// One attempt per message sent, in the order given.
    pub attempts: Vec<Attempt>,
    /// The session is unusable now and must be closed.
    pub close: bool,
}

/// How many messages one send takes: one, or custom_lua's `send_batch` with
/// `min..=size` messages, waiting up to `max_latency` for the minimum.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// At most this many messages per send.
    pub size: usize,
    /// At least this many messages per send, unless `max_latency` runs out
    /// first.
    pub min: usize,
    /// How long to wait for `min` messages before sending fewer.
    pub max_latency: Duration,
}

impl Batch {
    /// One message per send, without waiting: every protocol but a batching
    /// custom_lua.
    pub const ONE: Batch = Batch {
        size: 1,
        min: 1,
        max_latency: Duration::ZERO,
    };
}

/// A protocol that delivers through sessions, for one ready queue.
pub trait Deliver: Send + Sync + 'static {
    /// Names the protocol in the ready queue's name (`smtp_client`, ...).
    fn label(&self) -> String;

    /// How many messages a send takes.
    fn batch(&self) -> Batch {
        Batch::ONE
    }

    /// Open a session (SMTP: connect to the first reachable host; custom_lua:
    /// run the constructor).
    fn connect<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Box<dyn Session>, Refused>>;
}

/// An open session: it sends messages until it is closed.
pub trait Session: Send {
    /// Send `msgs` (bodies loaded) and report each one's attempt.
    fn send<'a>(&'a mut self, msgs: &'a [MessageRef]) -> BoxFuture<'a, Sent>;

    /// End the session politely.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}
