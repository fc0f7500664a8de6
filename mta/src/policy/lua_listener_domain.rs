//! `kumo.make_listener_domain{...}` and the `get_listener_domain(domain,
//! listener, conn_meta)` event that returns one (or `nil`): relaying to
//! and from a domain, and whether reports sent to it are logged.

use super::kumo::{EgressPathUd, from_table};
use super::{ConnMeta, EventError, LuaConnMeta, Policy, describe};
use crate::config::listener_domain::ListenerDomain;
use mlua::{IntoLuaMulti, Lua, Table, UserData, Value};

/// A validated listener domain, as `kumo.make_listener_domain` returns it.
#[derive(Clone)]
pub struct ListenerDomainUd(pub ListenerDomain);
impl UserData for ListenerDomainUd {}

/// Add `kumo.make_listener_domain` to `kumo`.
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "make_listener_domain",
        lua.create_function(|lua, params: Value| {
            Ok(ListenerDomainUd(from_table(
                lua,
                "make_listener_domain",
                params,
            )?))
        })?,
    )
}

/// The event's name.
pub const EVENT: &str = "get_listener_domain";

impl Policy {
    /// `get_listener_domain(domain, listener, conn_meta)`: what the policy
    /// says about `domain` for a session on `listener`; `None` when there is
    /// no handler or it returns `nil`.
    pub async fn get_listener_domain(
        &self,
        domain: &str,
        listener: &str,
        conn: &ConnMeta,
    ) -> Result<Option<ListenerDomain>, EventError> {
        if !self.has_handler(EVENT) {
            return Ok(None);
        }
        let lua = self.checkout()?;
        let values = self
            .call_handlers(&lua, EVENT, |lua| {
                let meta = lua.create_userdata(LuaConnMeta(conn.clone()))?;
                (domain, listener, meta).into_lua_multi(lua)
            })
            .await?;
        let value = values
            .and_then(|v| v.into_iter().next())
            .unwrap_or(Value::Nil);
        let bad = |e: mlua::Error| EventError::Failed(format!("{EVENT} returned {}", describe(&e)));
        match value {
            Value::Nil => Ok(None),
            Value::UserData(ud) => match ud.borrow::<ListenerDomainUd>() {
                Ok(d) => Ok(Some(d.0.clone())),
                // a common slip: another constructor's object
                Err(_) if ud.borrow::<EgressPathUd>().is_ok() => Err(EventError::Failed(format!(
                    "{EVENT} returned kumo.make_egress_path{{...}}; it must return \
                     kumo.make_listener_domain{{...}} or nil"
                ))),
                Err(e) => Err(bad(e)),
            },
            table @ Value::Table(_) => from_table(&lua, "make_listener_domain", table)
                .map(Some)
                .map_err(bad),
            other => Err(EventError::Failed(format!(
                "{EVENT} returned a {}; it must return kumo.make_listener_domain{{...}} or nil",
                other.type_name()
            ))),
        }
    }
}
