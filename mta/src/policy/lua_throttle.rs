//! `kumo.make_throttle(name, spec)`: a throttle the policy checks itself,
//! with KumoMTA's methods `:throttle()` (one unit; a result table) and
//! `:sleep_if_throttled()` (wait until one passes). It is the node's
//! throttle, so after `configure_redis_throttles` it is shared by the fleet.

use crate::throttle::{Kind, Throttles};
use mlua::{Lua, Table, UserData, UserDataMethods};
use sluice_common::ThrottleSpec;
use std::sync::Arc;

/// The throttle object.
pub struct LuaThrottle {
    name: String,
    spec: ThrottleSpec,
}

fn throttles(lua: &Lua) -> mlua::Result<Arc<Throttles>> {
    lua.app_data_ref::<Arc<Throttles>>()
        .map(|t| t.clone())
        .ok_or_else(|| {
            mlua::Error::RuntimeError(
                "throttles can only be checked in a running MTA (not while the policy loads)"
                    .into(),
            )
        })
}

impl UserData for LuaThrottle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("throttle", |lua, this, ()| async move {
            let wait = throttles(&lua)?
                .check(Kind::Policy, &this.name, &this.spec)
                .await;
            let result = lua.create_table()?;
            result.set("throttled", wait.is_some())?;
            result.set("limit", this.spec.limit)?;
            if let Some(w) = wait {
                result.set("retry_after", w.as_secs_f64())?;
            }
            Ok(result)
        });
        methods.add_async_method("sleep_if_throttled", |lua, this, ()| async move {
            let t = throttles(&lua)?;
            let mut slept = false;
            while let Some(wait) = t.check(Kind::Policy, &this.name, &this.spec).await {
                tokio::time::sleep(wait).await;
                slept = true;
            }
            Ok(slept)
        });
    }
}

/// Add `make_throttle` to the `kumo` table.
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "make_throttle",
        lua.create_function(|lua, (name, spec): (String, String)| {
            let spec: ThrottleSpec = spec
                .parse()
                .map_err(|e| super::located_error(lua, format!("kumo.make_throttle: {e}")))?;
            Ok(LuaThrottle { name, spec })
        })?,
    )
}
