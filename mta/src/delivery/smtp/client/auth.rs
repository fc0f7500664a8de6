//! Outbound SMTP AUTH PLAIN (RFC 4616) with the egress path's credential.

use super::{ClientError, SmtpClient};

impl SmtpClient {
    /// AUTH PLAIN with the path's credential, when it has one; never over a
    /// connection without TLS, or with an unverified certificate, unless the
    /// path allows it (an attacker in the path would get the password).
    pub(super) async fn authenticate(&mut self) -> Result<(), ClientError> {
        let s = self.settings.clone();
        let Some(user) = &s.smtp_auth_plain_username else {
            return Ok(());
        };
        let at = format!("{}:{}", self.name, self.peer.port());
        if self.tls.is_none() && !s.allow_smtp_auth_plain_without_tls {
            return Err(ClientError::Auth(format!(
                "TLS is not enabled and AUTH PLAIN is required. Skipping ({at})"
            )));
        }
        if self.tls.is_some()
            && !self.tls_verified
            && !s.allow_smtp_auth_plain_without_valid_certificate
        {
            return Err(ClientError::Auth(format!(
                "TLS peer certificate was not validated and AUTH PLAIN requires a valid \
                 certificate. Skipping ({at})"
            )));
        }
        let password = match &s.smtp_auth_plain_password {
            None => String::new(),
            Some(source) => source
                .read_secret()
                .map_err(|e| ClientError::Auth(format!("smtp_auth_plain_password: {e}")))?,
        };
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = self
            .command(&format!("AUTH PLAIN {token}"), s.auth_timeout, "AUTH")
            .await?;
        if reply.code != 235 {
            return Err(ClientError::Auth(format!(
                "authenticating as {user} via SMTP AUTH PLAIN to {at}: {}",
                reply.line()
            )));
        }
        Ok(())
    }
}
