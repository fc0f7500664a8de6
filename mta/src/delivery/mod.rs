//! Delivery protocols. Each knows how to hand a message to its destination
//! and reports per-recipient results; none of them knows about queues.

pub mod maildir;
pub mod smtp;

use crate::log::Response;

/// The result of one delivery attempt for a set of recipients.
#[derive(Debug)]
pub struct Attempt {
    pub protocol: &'static str,
    pub peer: Option<crate::log::PeerAddress>,
    /// (protocol version, cipher suite) when the session used TLS.
    pub tls: Option<(String, String)>,
    pub results: Vec<RecipientResult>,
}

impl Attempt {
    /// The same outcome for every recipient.
    pub fn for_all(
        protocol: &'static str,
        peer: Option<crate::log::PeerAddress>,
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
