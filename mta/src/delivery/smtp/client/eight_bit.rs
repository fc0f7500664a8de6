//! 8-bit mail (RFC 6152 `BODY=8BITMIME`) and internationalised envelopes
//! (RFC 6531 `SMTPUTF8`): the MAIL FROM parameters they need, or KumoMTA's
//! refusal when the next hop does not offer them.

use super::{Reply, SmtpClient};

impl SmtpClient {
    /// The MAIL FROM parameters an 8-bit body (`BODY=8BITMIME`) or envelope
    /// (`SMTPUTF8`) needs, or, when the server does not offer them, the
    /// refusal KumoMTA gives (RFC 6152 and RFC 6531 leave no way to send
    /// it), unless the path's `ignore_8bit_checks` says to send anyway.
    pub(super) fn mail_params(
        &self,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> Result<String, Reply> {
        let mut params = String::new();
        let ignore = self.settings.ignore_8bit_checks;
        if !data.is_ascii() {
            if self.extensions.contains("8BITMIME") {
                params.push_str(" BODY=8BITMIME");
            } else if !ignore {
                return Err(Reply {
                    code: 554,
                    text: "5.6.3 KumoMTA internal: DATA is 8bit, destination does not \
                           support 8BITMIME. Conversion via msg:check_fix_conformance \
                           during reception is required"
                        .into(),
                });
            }
        }
        if !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()) {
            if self.extensions.contains("SMTPUTF8") {
                params.push_str(" SMTPUTF8");
            } else if !ignore {
                return Err(Reply {
                    code: 554,
                    text: "5.6.7 KumoMTA internal: envelope is 8bit, destination does not \
                           support SMTPUTF8."
                        .into(),
                });
            }
        }
        Ok(params)
    }
}
