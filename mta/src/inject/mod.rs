//! `POST /api/inject/v1` (spec §10): HTTP injection in KumoMTA's request
//! shape. One message per recipient, from raw RFC 5322 `content` or from the
//! builder form (`subject`, `text_body`, `html_body`, `from`, `reply_to`,
//! `headers`), expanded as templates (`template`); spooled in one group
//! commit, logged as Reception with `reception_protocol = "HTTP"`, then
//! queued.

pub mod template;

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
    /// Template variables for every recipient (any JSON values).
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// The template engine: Jinja (MiniJinja, the default) or Static.
    #[serde(default)]
    pub template_dialect: template::Dialect,
}

/// One recipient of an injection request, with its own message.
#[derive(Debug, Deserialize)]
pub struct Recipient {
    /// The envelope recipient (RCPT TO), also the built `To` address.
    pub email: String,
    /// Display name for the built `To` header.
    pub name: Option<String>,
    /// Template variables for this recipient, over the request's.
    #[serde(default)]
    pub substitutions: Map<String, Value>,
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
    Builder(Box<Builder>),
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
    /// KumoMTA's attachments: not built, so refused rather than dropped.
    #[serde(default)]
    pub attachments: Option<Value>,
    /// KumoMTA's AMP part: not built, so refused rather than dropped.
    #[serde(default)]
    pub amp_html_body: Option<Value>,
}

pub(crate) fn mailbox(email: &str, name: Option<&str>) -> String {
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
    /// The message for `to`, from the expanded parts.
    fn render(&self, to: &Recipient, id: MessageId, x: &template::Expanded) -> Vec<u8> {
        let mut h = String::new();
        if let Some(from) = x.get("from") {
            h.push_str(&format!("From: {from}\r\n"));
        }
        // a To among the headers replaces the generated one
        if !self.headers.keys().any(|k| k.eq_ignore_ascii_case("to")) {
            h.push_str(&format!(
                "To: {}\r\n",
                mailbox(&to.email, to.name.as_deref())
            ));
        }
        if let Some(r) = x.get("reply_to") {
            h.push_str(&format!("Reply-To: {r}\r\n"));
        }
        if let Some(s) = x.get("subject") {
            h.push_str(&format!("Subject: {s}\r\n"));
        }
        h.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
        h.push_str(&format!("Message-ID: <{id}@{}>\r\n", crate::hostname()));
        for (k, v) in x.headers(self) {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("MIME-Version: 1.0\r\n");
        let part = |ctype: &str, body: &str| {
            format!(
                "Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
                crlf(body)
            )
        };
        let body = match (x.get("text_body.txt"), x.get("html_body.html")) {
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
    /// A template of the content does not compile.
    #[error("failed parsing field '{field}' as template: {error}")]
    Template {
        /// Where in the request (`content.text_body`).
        field: String,
        /// MiniJinja's error, with the line.
        error: String,
    },
    /// A `template_dialect` Sluice does not have.
    #[error("template_dialect {0} is not supported by sluice-mta; use Jinja or Static")]
    Dialect(&'static str),
    /// `recipients` is empty.
    #[error("recipients: at least one is required")]
    NoRecipients,
    /// A part of KumoMTA's request Sluice does not build.
    #[error("{0} is not supported by sluice-mta yet")]
    Unsupported(&'static str),
}

/// Why a recipient's message was not accepted.
#[derive(Debug, thiserror::Error)]
enum RecipientError {
    #[error("{0}")]
    Policy(#[from] crate::policy::EventError),
    #[error("{0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// Refuse a request that cannot be taken at all: one without recipients,
/// or whose templates do not compile.
pub fn check(req: &InjectRequest) -> Result<(), InjectError> {
    if req.recipients.is_empty() {
        return Err(InjectError::NoRecipients);
    }
    if let Content::Builder(b) = &req.content {
        if b.attachments.is_some() {
            return Err(InjectError::Unsupported("content.attachments"));
        }
        if b.amp_html_body.is_some() {
            return Err(InjectError::Unsupported("content.amp_html_body"));
        }
    }
    template::check(req)
}

/// Generate, spool, log and queue one message per recipient.
pub async fn inject(queues: &Arc<QueueManager>, req: InjectRequest, peer: &str) -> Value {
    let mut accepted: Vec<(MessageRef, String)> = vec![];
    let mut failed = vec![];
    let mut errors = vec![];
    let fields = template::fields(&req.content, &req.envelope_sender);
    // checked before the request was taken; a failure here fails them all
    let env = template::compile(req.template_dialect, &fields);
    for rcpt in &req.recipients {
        let id = MessageId::new();
        let expanded = match &env {
            Ok(env) => template::expand(env.as_ref(), &fields, &template::variables(&req, rcpt))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let expanded = match expanded {
            Ok(x) => template::Expanded::new(x),
            Err(e) => {
                failed.push(rcpt.email.clone());
                errors.push(format!("{}: {e}", rcpt.email));
                continue;
            }
        };
        let data = match &req.content {
            Content::Raw(_) => crlf(expanded.get("content").unwrap_or_default()).into_bytes(),
            Content::Builder(b) => b.render(rcpt, id, &expanded),
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
