//! The admin API over HTTP for the command line: JSON in and out, HTTP
//! Basic credentials when given, and the server's own words when it says no.

use serde_json::Value;
use std::path::Path;

/// Why a verb could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The password file could not be read.
    #[error("reading the password from {path}: {source}")]
    Password {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The verb's arguments do not make a request.
    #[error("{0}")]
    Usage(String),
    /// `--user` without a password to go with it.
    #[error("--user needs --password-file or $SLUICE_ADMIN_PASSWORD")]
    NoPassword,
    /// The MTA could not be reached.
    #[error("{url}: {source}")]
    Http {
        /// What was asked.
        url: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// The MTA answered with an error.
    #[error("{url}: HTTP {status}: {text}")]
    Refused {
        /// What was asked.
        url: String,
        /// Its status.
        status: u16,
        /// What it said.
        text: String,
    },
}

/// One MTA's admin API.
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    credentials: Option<(String, String)>,
}

impl Client {
    /// A client for `endpoint`, as `user` when given.
    pub fn new(
        endpoint: &str,
        user: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Client, CliError> {
        let credentials = match user {
            None => None,
            Some(u) => {
                let password = match password_file {
                    Some(p) => {
                        crate::config::read_secret_file(p).map_err(|source| CliError::Password {
                            path: p.display().to_string(),
                            source,
                        })?
                    }
                    None => {
                        std::env::var("SLUICE_ADMIN_PASSWORD").map_err(|_| CliError::NoPassword)?
                    }
                };
                Some((u.to_string(), password))
            }
        };
        Ok(Client {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// `DELETE path` with `body`.
    pub async fn delete(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send(reqwest::Method::DELETE, path, Some(body)).await
    }

    /// `GET path` whose answer is lines arriving over time (a trace):
    /// `each` gets every line as it arrives, until the MTA ends the stream
    /// or `each` answers `false`.
    pub async fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<(), CliError> {
        let (url, mut resp) = self.request(reqwest::Method::GET, path, None).await?;
        let mut pending: Vec<u8> = vec![];
        while let Some(chunk) = resp.chunk().await.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !each(&String::from_utf8_lossy(&line[..end])) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let (url, resp) = self.request(method, path, body).await?;
        let text = resp
            .text()
            .await
            .map_err(|source| CliError::Http { url, source })?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Send a request; the response when it succeeded, else what the MTA
    /// said.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, reqwest::Response), CliError> {
        let url = format!("{}{path}", self.endpoint);
        let mut req = self.http.request(method, &url);
        if let Some((u, p)) = &self.credentials {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let http = |source| CliError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.map_err(http)?;
            return Err(CliError::Refused {
                url,
                status: status.as_u16(),
                text: text.trim().to_string(),
            });
        }
        Ok((url, resp))
    }
}
