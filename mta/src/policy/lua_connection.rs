//! custom_lua delivery (spec §5.3): the constructor event returns a
//! connection object whose `send(msg)` returns a disposition string. The
//! object lives in one Lua state, which the connection keeps until it closes.

use super::{EventError, LuaMessage, Policy, PolicyState, describe, event_error};
use mlua::{Function, IntoLuaMulti, Lua, Table, Value};
use std::sync::Arc;

/// A custom_lua session: the object a constructor returned, with the Lua
/// state it lives in, which goes back to its policy version when this is
/// dropped.
pub struct LuaConnection {
    lua: Option<Lua>,
    conn: Table,
    /// The policy version the state came from, to give it back to.
    state: Arc<PolicyState>,
}

impl Policy {
    /// Call `constructor(domain, tenant, campaign)` and keep what it returns.
    pub async fn lua_connection(
        self: &Arc<Self>,
        constructor: &str,
        domain: &str,
        tenant: Option<&str>,
        campaign: Option<&str>,
    ) -> Result<LuaConnection, EventError> {
        if !self.has_handler(constructor) {
            return Err(EventError::Failed(format!(
                "no handler is registered for the constructor event '{constructor}'"
            )));
        }
        let pooled = self.checkout()?;
        let values = self
            .call_handlers(&pooled, constructor, |lua| {
                (domain, tenant, campaign).into_lua_multi(lua)
            })
            .await?;
        let conn = match values.and_then(|v| v.into_iter().next()) {
            Some(Value::Table(t)) => t,
            other => {
                let got = other.map(|v| v.type_name()).unwrap_or("nothing");
                return Err(EventError::Failed(format!(
                    "constructor '{constructor}' returned {got}, not a connection table"
                )));
            }
        };
        let (lua, state) = pooled.into_inner();
        Ok(LuaConnection {
            lua: Some(lua),
            conn,
            state,
        })
    }
}

impl LuaConnection {
    fn lua(&self) -> &Lua {
        self.lua.as_ref().expect("present until drop")
    }

    /// `conn:send(msg)`: the disposition string, or why it failed.
    pub async fn send(&self, msg: &crate::message::MessageRef) -> Result<String, EventError> {
        let send: Option<Function> = self.conn.get("send").map_err(event_error)?;
        let send = send
            .ok_or_else(|| EventError::Failed("the connection object has no send method".into()))?;
        let ud = self
            .lua()
            .create_userdata(LuaMessage(msg.clone()))
            .map_err(event_error)?;
        disposition(send.call_async::<Value>((self.conn.clone(), ud)).await)
    }

    /// `conn:send_batch(msgs)`: one disposition (or rejection) for the batch.
    pub async fn send_batch(
        &self,
        msgs: &[crate::message::MessageRef],
    ) -> Result<String, EventError> {
        let send: Option<Function> = self.conn.get("send_batch").map_err(event_error)?;
        let send = send.ok_or_else(|| {
            EventError::Failed(
                "batch_size > 1 needs a send_batch method on the connection object".into(),
            )
        })?;
        let list = self
            .lua()
            .create_sequence_from(msgs.iter().map(|m| LuaMessage(m.clone())))
            .map_err(event_error)?;
        disposition(send.call_async::<Value>((self.conn.clone(), list)).await)
    }

    /// `conn:close()`, when the object has one.
    pub async fn close(&self) {
        if let Ok(Some(close)) = self.conn.get::<Option<Function>>("close")
            && let Err(e) = close.call_async::<()>(self.conn.clone()).await
        {
            tracing::warn!("connection close() failed: {}", describe(&e));
        }
    }
}

/// What `send` or `send_batch` returned, as a disposition string.
fn disposition(returned: mlua::Result<Value>) -> Result<String, EventError> {
    match returned {
        Ok(Value::String(s)) => Ok(s.to_string_lossy()),
        Ok(Value::Integer(n)) => Ok(n.to_string()),
        Ok(other) => Err(EventError::Failed(format!(
            "send returned {}, not a disposition string",
            other.type_name()
        ))),
        Err(e) => Err(event_error(e)),
    }
}

impl Drop for LuaConnection {
    fn drop(&mut self) {
        if let Some(lua) = self.lua.take() {
            self.state.give_back(lua);
        }
    }
}
