//! `POST /api/inject/v1` (spec §10): HTTP injection in KumoMTA's request
//! shape. One message per recipient, from raw RFC 5322 `content` or from the
//! builder form (`subject`, `text_body`, `html_body`, `from`, `reply_to`,
//! `headers`); spooled in one group commit, logged as Reception with
//! `reception_protocol = "HTTP"`, then queued.

use crate::log::{RecordType, Response};
use crate::message::{Message, MessageId, MessageRef};
use crate::queue::QueueManager;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The body of `POST /api/inject/v1`, in KumoMTA's shape.
#[derive(Debug, Deserialize)]
pub struct InjectRequest {
    /// The envelope sender (MAIL FROM) of every message, and the `From` of
    /// built content that names none.
    pub envelope_sender: String,
    /// One message is made for each; at least one is required.
    pub recipients: Vec<Recipient>,
    /// The message: raw RFC 5322 text, or the parts to build it from.
    pub content: Content,
    /// Templating (KumoMTA's minijinja substitutions) is not implemented;
    /// a request that asks for it is refused rather than sent unexpanded.
    #[serde(default)]
    pub substitutions: Option<Value>,
    /// KumoMTA's template dialect; refused when present, as templating is not
    /// implemented.
    #[serde(default)]
    pub template_dialect: Option<Value>,
}

/// One recipient of an injection request, with its own message.
#[derive(Debug, Deserialize)]
pub struct Recipient {
    /// The envelope recipient (RCPT TO), also the built `To` address.
    pub email: String,
    /// Display name for the built `To` header.
    pub name: Option<String>,
    /// Template values for this recipient; refused when present, as templating
    /// is not implemented.
    #[serde(default)]
    pub substitutions: Option<Value>,
    /// Meta set on this recipient's message before `http_message_generated`
    /// runs.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// A request's `content`: a string or a builder object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// A complete RFC 5322 message; its line endings are made CRLF.
    Raw(String),
    /// The parts to build the message from.
    Builder(Builder),
}

/// A mailbox in built content.
#[derive(Debug, Deserialize)]
pub struct Address {
    /// The address.
    pub email: String,
    /// The display name, quoted in the header.
    pub name: Option<String>,
}

/// Content to build: headers and a text and/or HTML body (both make a
/// multipart/alternative). `Date`, `Message-ID` and `MIME-Version` are added.
#[derive(Debug, Deserialize)]
pub struct Builder {
    /// The `Subject` header.
    pub subject: Option<String>,
    /// The text/plain part.
    pub text_body: Option<String>,
    /// The text/html part.
    pub html_body: Option<String>,
    /// The `From` header; the envelope sender when absent.
    pub from: Option<Address>,
    /// The `Reply-To` header.
    pub reply_to: Option<Address>,
    /// Further headers, name to value (a non-string value is written as JSON).
    #[serde(default)]
    pub headers: Map<String, Value>,
}

fn mailbox(email: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("\"{}\" <{email}>", n.replace('"', "'")),
        _ => format!("<{email}>"),
    }
}

/// Lines end in CRLF, as on the wire.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

impl Builder {
    fn render(&self, sender: &str, to: &Recipient, id: MessageId) -> Vec<u8> {
        let mut h = String::new();
        let from = match &self.from {
            Some(a) => mailbox(&a.email, a.name.as_deref()),
            None => mailbox(sender, None),
        };
        h.push_str(&format!("From: {from}\r\n"));
        h.push_str(&format!(
            "To: {}\r\n",
            mailbox(&to.email, to.name.as_deref())
        ));
        if let Some(r) = &self.reply_to {
            h.push_str(&format!(
                "Reply-To: {}\r\n",
                mailbox(&r.email, r.name.as_deref())
            ));
        }
        if let Some(s) = &self.subject {
            h.push_str(&format!("Subject: {s}\r\n"));
        }
        h.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
        h.push_str(&format!("Message-ID: <{id}@{}>\r\n", crate::hostname()));
        for (k, v) in &self.headers {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("MIME-Version: 1.0\r\n");
        let part = |ctype: &str, body: &str| {
            format!(
                "Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
                crlf(body)
            )
        };
        let body = match (&self.text_body, &self.html_body) {
            (Some(text), Some(html)) => {
                let boundary = format!("sluice-{id}");
                format!(
                    "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n{}--{boundary}\r\n{}--{boundary}--\r\n",
                    part("text/plain", text),
                    part("text/html", html)
                )
            }
            (None, Some(html)) => part("text/html", html),
            (Some(text), None) => part("text/plain", text),
            (None, None) => part("text/plain", ""),
        };
        h.push_str(&body);
        h.into_bytes()
    }
}

/// Why a request cannot be taken at all (HTTP 422).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    /// The request asks for templating (`substitutions` or `template_dialect`),
    /// which is not implemented.
    #[error(
        "templating (substitutions, template_dialect) is not supported by sluice-mta; send the final content"
    )]
    Templating,
    /// `recipients` is empty.
    #[error("recipients: at least one is required")]
    NoRecipients,
}

/// Why a recipient's message was not accepted.
#[derive(Debug, thiserror::Error)]
enum RecipientError {
    #[error("{0}")]
    Policy(#[from] crate::policy::EventError),
    #[error("{0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// Refuse a request that cannot be taken at all: one that asks for templating
/// or has no recipients.
pub fn check(req: &InjectRequest) -> Result<(), InjectError> {
    if req.substitutions.is_some()
        || req.template_dialect.is_some()
        || req.recipients.iter().any(|r| r.substitutions.is_some())
    {
        return Err(InjectError::Templating);
    }
    if req.recipients.is_empty() {
        return Err(InjectError::NoRecipients);
    }
    Ok(())
}

/// Generate, spool, log and queue one message per recipient.
pub async fn inject(queues: &Arc<QueueManager>, req: InjectRequest, peer: &str) -> Value {
    let mut accepted: Vec<(MessageRef, String)> = vec![];
    let mut failed = vec![];
    let mut errors = vec![];
    for rcpt in &req.recipients {
        let id = MessageId::new();
        let data = match &req.content {
            Content::Raw(text) => crlf(text).into_bytes(),
            Content::Builder(b) => b.render(&req.envelope_sender, rcpt, id),
        };
        let mut meta = rcpt.metadata.clone();
        meta.insert("reception_protocol".into(), "HTTP".into());
        let msg = Message::new(
            id,
            req.envelope_sender.clone(),
            vec![rcpt.email.clone()],
            meta,
            data,
        );
        let queued = async {
            if queues.policy().has_handler("http_message_generated") {
                queues
                    .policy()
                    .message_event("http_message_generated", Some(&msg), None)
                    .await?;
            }
            Ok::<_, RecipientError>(queues.route(&msg).await?)
        }
        .await;
        match queued {
            Ok(queue) => accepted.push((msg, queue)),
            Err(e) => {
                failed.push(rcpt.email.clone());
                errors.push(format!("{}: {e}", rcpt.email));
            }
        }
    }
    if let Err(e) = queues.admit(&accepted, false).await {
        for (msg, _) in &accepted {
            failed.extend(msg.recipients());
        }
        errors.push(format!("spool write failed: {e}"));
        accepted.clear();
    }
    let success_count = accepted.len();
    for (msg, queue) in accepted {
        let mut rec = queues.record(RecordType::Reception, &msg, &queue, Response::new(250, ""));
        rec.peer_address = Some(crate::log::PeerAddress {
            name: String::new(),
            addr: peer.to_string(),
        });
        queues.log(rec);
        if queue != "null" {
            queues.insert(msg, &queue);
        }
    }
    json!({
        "success_count": success_count,
        "fail_count": failed.len(),
        "failed_recipients": failed,
        "errors": errors,
    })
}
