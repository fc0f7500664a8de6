//! `kumo.xfer`: KumoMTA's Lua functions for moving a message to another
//! node, and Sluice's `configure_client` for how this node authenticates
//! to the nodes it moves messages to.
//!
//! `kumo.xfer.xfer(msg, target, reason)` binds the message for `target`'s
//! xfer queue (its own queue, attempts, due time and scheduling kept for
//! the target). In `requeue_message` the engine notices the new queue and
//! moves the message there, as for any change of queue; in a reception
//! event the message goes there directly.

use super::kumo::{from_table, with_init};
use super::lua_message::LuaMessage;
use crate::config::xfer::XferClientConfig;
use mlua::{Lua, Table, UserDataRef, Value};

/// Add `kumo.xfer` to `kumo`.
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let xfer = lua.create_table()?;
    xfer.set(
        "xfer",
        lua.create_function(
            |lua, (msg, target, _reason): (UserDataRef<LuaMessage>, String, Option<String>)| {
                let ok = reqwest::Url::parse(&target)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                if !ok {
                    return Err(super::located_error(
                        lua,
                        format!(
                            "kumo.xfer.xfer: target {target:?} is not an http:// or https:// URL"
                        ),
                    ));
                }
                crate::xfer::bind(&msg.0, &target);
                Ok(())
            },
        )?,
    )?;
    xfer.set(
        "cancel_xfer",
        lua.create_function(
            |_, (msg, _reason): (UserDataRef<LuaMessage>, Option<String>)| {
                Ok(crate::xfer::unbind(&msg.0))
            },
        )?,
    )?;
    xfer.set(
        "get_xfer_target",
        lua.create_function(|_, msg: UserDataRef<LuaMessage>| Ok(crate::xfer::target(&msg.0)))?,
    )?;
    xfer.set(
        "configure_client",
        lua.create_function(|lua, params: Value| {
            let what = "xfer.configure_client";
            let config: XferClientConfig = from_table(lua, what, params)?;
            config
                .check()
                .map_err(|e| super::located_error(lua, format!("kumo.{what}: {e}")))?;
            with_init(lua, what, |init| init.xfer_client = config)
        })?,
    )?;
    kumo.set("xfer", xfer)
}
