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
    pub protocol: &'static str,
    pub peer: Option<PeerAddress>,
    /// (protocol version, cipher suite) when the session used TLS.
    pub tls: Option<(String, String)>,
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

#[derive(Debug)]
pub struct RecipientResult {
    pub recipient: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered(Response),
    Transient(Response),
    Bounced(Response),
}

/// The egress path a session is for: the names in the ready queue's name,
/// the source, and the path's config.
pub struct Path {
    pub name: String,
    pub source: Arc<EgressSource>,
    pub config: Arc<EgressPathConfig>,
}

/// A session could not be opened: `code` decides (5xx bounces what waits,
/// anything else is a transient failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub code: u16,
    pub text: String,
}

/// What one send did: an attempt per message, in order, and whether the
/// session must be closed now (a 421, an error that leaves it unusable).
pub struct Sent {
    pub attempts: Vec<Attempt>,
    pub close: bool,
}

/// How many messages one send takes: one, or custom_lua's `send_batch` with
/// `min..=size` messages, waiting up to `max_latency` for the minimum.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub size: usize,
    pub min: usize,
    pub max_latency: Duration,
}

impl Batch {
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
