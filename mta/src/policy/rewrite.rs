//! The events that let a policy change an SMTP reply: the client's
//! `smtp_client_rewrite_delivery_status` (a destination's refusal read as
//! another code, e.g. a full mailbox as permanent for mail that will not be
//! missed) and the server's `smtp_server_rewrite_response` (what a client
//! is told). Both are optional; without a handler nothing is called.

use super::{ConnMeta, EventError, LuaConnMeta, Policy};
use mlua::{IntoLuaMulti, Value};

/// A code outside 200..=599 is no SMTP status.
fn status(event: &str, v: Value) -> Result<Option<u16>, EventError> {
    let code = match v {
        Value::Nil => return Ok(None),
        Value::Integer(n) => n,
        Value::Number(n) if n.fract() == 0.0 => n as i64,
        other => {
            return Err(EventError::Failed(format!(
                "{event} returned a {}, not a status code",
                other.type_name()
            )));
        }
    };
    match u16::try_from(code) {
        Ok(c) if (200..=599).contains(&c) => Ok(Some(c)),
        _ => Err(EventError::Failed(format!(
            "{event} returned {code}, not an SMTP status code (200-599)"
        ))),
    }
}

impl Policy {
    /// `smtp_client_rewrite_delivery_status(response, domain, tenant,
    /// campaign, routing_domain)`: the code a refusal should count as, or
    /// `None` to keep it. `response` is the reply on one line.
    pub async fn rewrite_delivery_status(
        &self,
        response: &str,
        queue: &crate::message::name::QueueName,
    ) -> Result<Option<u16>, EventError> {
        let event = "smtp_client_rewrite_delivery_status";
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, event, |lua| {
                (
                    response,
                    queue.domain.as_str(),
                    queue.tenant.as_deref(),
                    queue.campaign.as_deref(),
                    queue.routing_domain.as_deref(),
                )
                    .into_lua_multi(lua)
            })
            .await?;
        status(
            event,
            result
                .and_then(|r| r.into_iter().next())
                .unwrap_or(Value::Nil),
        )
    }

    /// `smtp_server_rewrite_response(status, response, command, conn_meta)`:
    /// the status and text to send instead, each `None` to keep it.
    pub async fn rewrite_response(
        &self,
        code: u16,
        response: &str,
        command: Option<&str>,
        conn: &ConnMeta,
    ) -> Result<(Option<u16>, Option<String>), EventError> {
        let event = "smtp_server_rewrite_response";
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, event, |lua| {
                let meta = lua.create_userdata(LuaConnMeta(conn.clone()))?;
                (code, response, command, meta).into_lua_multi(lua)
            })
            .await?;
        let mut values = result.unwrap_or_default().into_iter();
        let code = status(event, values.next().unwrap_or(Value::Nil))?;
        let text = match values.next().unwrap_or(Value::Nil) {
            Value::Nil => None,
            Value::String(s) => Some(s.to_string_lossy()),
            other => {
                return Err(EventError::Failed(format!(
                    "{event} returned a {} as the response, not a string",
                    other.type_name()
                )));
            }
        };
        Ok((code, text))
    }
}
