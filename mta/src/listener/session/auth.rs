//! The AUTH command (RFC 4954): PLAIN and LOGIN, offered and accepted only
//! over TLS, checked by the policy's `smtp_server_auth_plain` event (for
//! LOGIN too, with the user name as both identities). A session that
//! authenticated may relay. Failures close the session after three and
//! lock the client's address out after ten in ten minutes.

use super::{COMMAND_LINE_LIMIT, Flow, Session};
use crate::listener::auth::{Credentials, SESSION_FAILURES, decode_login, decode_plain};
use crate::listener::io::{Line, ReadError};
use serde_json::json;

/// "Username:" and "Password:", the LOGIN prompts.
const USERNAME: &str = "VXNlcm5hbWU6";
const PASSWORD: &str = "UGFzc3dvcmQ6";

/// The command as it may be logged: an AUTH line's credentials never are.
pub(super) fn redact(command: &str) -> String {
    crate::trace::redact_auth(command)
}

impl Session {
    /// AUTH is advertised (after STARTTLS) when the policy checks credentials.
    pub(super) fn auth_offered(&self) -> bool {
        self.services.policy.has_handler("smtp_server_auth_plain")
    }

    pub(super) async fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        line: &str,
    ) -> Result<Flow, ReadError> {
        let refusal = if self.tls.is_none() {
            Some((530, "5.7.0 Must issue a STARTTLS command first"))
        } else if !self.auth_offered() {
            Some((502, "5.5.1 AUTH is not available"))
        } else if self.authz.is_some() {
            Some((503, "5.5.1 Already authenticated"))
        } else if self.tx.is_some() {
            Some((503, "5.5.1 AUTH is not permitted during a mail transaction"))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            self.error(code, text, Some(line));
            return Ok(Flow::Continue);
        }
        let ip = self.peer.ip();
        if self.listener.auth_failures.locked_out(ip) {
            let text = format!("4.7.0 too many failed authentications from {ip}; try again later");
            self.error(454, &text, Some(line));
            return Ok(Flow::Continue);
        }
        let creds = match mechanism {
            "PLAIN" => match self.response(initial, "").await? {
                None => return Ok(self.cancelled(line)),
                Some(b64) => decode_plain(&b64),
            },
            "LOGIN" => {
                let Some(user) = self.response(initial, USERNAME).await? else {
                    return Ok(self.cancelled(line));
                };
                let Some(password) = self.response(None, PASSWORD).await? else {
                    return Ok(self.cancelled(line));
                };
                decode_login(&user).and_then(|user| {
                    Ok(Credentials {
                        authz: user.clone(),
                        authc: user,
                        password: decode_login(&password)?,
                    })
                })
            }
            _ => {
                self.error(504, "5.5.4 Unrecognized authentication type", Some(line));
                return Ok(Flow::Continue);
            }
        };
        let creds = match creds {
            Ok(c) => c,
            Err(e) => {
                self.error(
                    501,
                    &format!("5.5.2 cannot decode response: {e}"),
                    Some(line),
                );
                return Ok(Flow::Continue);
            }
        };
        let verdict = self
            .services
            .policy
            .auth_plain_event(&creds.authz, &creds.authc, &creds.password, &self.meta)
            .await;
        match verdict {
            Ok(true) => {
                self.meta.set("authn_id", json!(creds.authc));
                self.meta.set("authz_id", json!(creds.authz));
                self.authz = Some(creds.authz);
                self.listener.auth_failures.succeeded(ip);
                self.ok(235, "2.7.0 Authentication successful");
                Ok(Flow::Continue)
            }
            Ok(false) => {
                self.auth_failures += 1;
                self.listener.auth_failures.failed(ip);
                self.error(535, "5.7.8 Authentication credentials invalid", Some(line));
                if self.auth_failures >= SESSION_FAILURES {
                    let text = format!(
                        "4.7.0 {} too many failed authentications, closing connection",
                        self.hostname()
                    );
                    self.reply(421, &text, None);
                    return Ok(Flow::Close);
                }
                Ok(Flow::Continue)
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, "smtp_server_auth_plain failed: {e}");
                self.error(454, "4.7.0 Temporary authentication failure", Some(line));
                Ok(Flow::Continue)
            }
        }
    }

    /// The initial response if the client sent one, else its answer to a
    /// 334 challenge; `None` when it cancelled with `*`.
    async fn response(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> Result<Option<String>, ReadError> {
        if let Some(initial) = initial {
            // "=" is an empty initial response (RFC 4954 §4)
            return Ok(Some(if initial == "=" {
                String::new()
            } else {
                initial
            }));
        }
        self.conn.reply(334, challenge);
        let line = self.conn.read_line(COMMAND_LINE_LIMIT).await?;
        if let Some(t) = &self.conn.trace {
            t.read_secret();
        }
        let answer = match line {
            Line::Ok { bytes, .. } => String::from_utf8_lossy(&bytes).trim().to_string(),
            // undecodable: refused as such below
            Line::TooLong => "%".to_string(),
        };
        Ok((answer != "*").then_some(answer))
    }

    fn cancelled(&mut self, line: &str) -> Flow {
        self.error(501, "5.0.0 Authentication cancelled", Some(line));
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(redact("AUTH PLAIN AGRhbmllbAB0aWdlcg=="), "AUTH PLAIN ****");
        assert_eq!(redact("auth login ZGFuaWVs"), "AUTH login ****");
        assert_eq!(redact("AUTH PLAIN"), "AUTH PLAIN");
        assert_eq!(redact("RCPT TO:<a@b.c>"), "RCPT TO:<a@b.c>");
    }
}
