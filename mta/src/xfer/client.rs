//! The HTTP client that hands a message to another node: one POST per
//! message to the target's [`super::INJECT_PATH`], with this node's
//! credentials when it has some. A 2xx whose body names the message is
//! the only success; anything else leaves the message here.

use crate::config::xfer::XferClientConfig;
use std::time::Duration;

/// Sends transfers; one per node, shared by every xfer queue.
pub struct XferClient {
    http: reqwest::Client,
    config: XferClientConfig,
    /// This node's id, sent with each transfer.
    pub nodeid: String,
}

/// A transfer the target did not take.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The target's URL cannot be used.
    #[error("target {0:?} is not an http:// or https:// URL")]
    Url(String),
    /// No connection, a timeout, a broken reply.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The password file cannot be read.
    #[error("cannot read the xfer password file {0}: {1}")]
    Password(String, std::io::Error),
    /// The target answered with an error.
    #[error("the target answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// What it said (the first line).
        body: String,
    },
}

impl XferClient {
    /// A client with `config`'s credentials and timeout.
    pub fn new(config: XferClientConfig, nodeid: String) -> XferClient {
        let http = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a TLS backend is compiled in");
        XferClient {
            http,
            config,
            nodeid,
        }
    }

    /// POST one transfer body to `target`; the id the target gave back.
    pub async fn send(&self, target: &str, body: Vec<u8>) -> Result<String, SendError> {
        let base = reqwest::Url::parse(target).map_err(|_| SendError::Url(target.into()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(SendError::Url(target.into()));
        }
        let url = base
            .join(super::INJECT_PATH)
            .map_err(|_| SendError::Url(target.into()))?;
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(user) = &self.config.username {
            let password = match (&self.config.password, &self.config.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => crate::config::read_secret_file(f)
                    .map_err(|e| SendError::Password(f.display().to_string(), e))?,
                (None, None) => String::new(),
            };
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(SendError::Refused {
                status: status.as_u16(),
                body: text.lines().next().unwrap_or_default().to_string(),
            });
        }
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| SendError::Refused {
                status: status.as_u16(),
                body: format!("not a transfer answer: {text:.200}"),
            })?;
        match answer["id"].as_str() {
            Some(id) => Ok(id.to_string()),
            None => Err(SendError::Refused {
                status: status.as_u16(),
                body: format!("no id in the answer: {text:.200}"),
            }),
        }
    }
}
