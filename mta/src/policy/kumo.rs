//! The `kumo` module: the KumoMTA policy API that Sluice implements.

use super::{
    EVENT_SITES_KEY, EVENTS_KEY, MULTI_HANDLER_EVENTS, Phase, Rejection, caller_location,
    located_error,
};
use crate::config::listener::{EsmtpListenerConfig, ListenerSpec};
use crate::config::logs::LocalLogConfig;
use crate::config::{ResolverDefinition, SpoolDefinition};
use ipnet::IpNet;
use mlua::{Function, Lua, LuaSerdeExt, Table, UserData, Value};
use serde::de::DeserializeOwned;
use sluice_common::egress::{EgressPathConfig, EgressPool, EgressSource};
use sluice_common::queue_config::QueueConfig;

/// A validated queue config, as returned by `kumo.make_queue_config`.
#[derive(Clone)]
pub struct QueueConfigUd(pub QueueConfig);
impl UserData for QueueConfigUd {}

/// Validated egress objects, as returned by `kumo.make_egress_*`.
#[derive(Clone)]
pub struct EgressSourceUd(pub EgressSource);
impl UserData for EgressSourceUd {}
#[derive(Clone)]
pub struct EgressPoolUd(pub EgressPool);
impl UserData for EgressPoolUd {}
#[derive(Clone)]
pub struct EgressPathUd(pub EgressPathConfig);
impl UserData for EgressPathUd {}

/// A config object returned by a handler: the constructor's userdata, or a
/// plain table that is validated the same way.
pub fn config_from_value<T, U>(lua: &Lua, what: &str, value: Value) -> mlua::Result<T>
where
    T: DeserializeOwned + Clone,
    U: UserData + 'static + AsRef<T>,
{
    match value {
        Value::UserData(ud) => Ok(ud.borrow::<U>()?.as_ref().clone()),
        Value::Table(_) => from_table(lua, what, value),
        other => Err(mlua::Error::RuntimeError(format!(
            "expected the result of kumo.{what}, not a {}",
            other.type_name()
        ))),
    }
}

impl AsRef<EgressSource> for EgressSourceUd {
    fn as_ref(&self) -> &EgressSource {
        &self.0
    }
}
impl AsRef<EgressPool> for EgressPoolUd {
    fn as_ref(&self) -> &EgressPool {
        &self.0
    }
}
impl AsRef<EgressPathConfig> for EgressPathUd {
    fn as_ref(&self) -> &EgressPathConfig {
        &self.0
    }
}

/// Convert a policy table into a typed config, naming the offending key.
/// KumoMTA keys the typed config does not read are screened first
/// ([`super::kumo_keys`]).
pub fn from_table<T: DeserializeOwned>(lua: &Lua, what: &str, value: Value) -> mlua::Result<T> {
    let value = super::kumo_keys::screen(lua, what, value)?;
    let de = mlua::serde::Deserializer::new(value);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            located_error(lua, format!("{what}: {inner}"))
        } else {
            located_error(lua, format!("{what}: key '{path}': {inner}"))
        }
    })
}

/// What a `get_queue_config` handler returned, as a `QueueConfig`.
pub fn queue_config_from_value(lua: &Lua, value: Value) -> mlua::Result<QueueConfig> {
    match value {
        Value::UserData(ud) => Ok(ud.borrow::<QueueConfigUd>()?.0.clone()),
        Value::Table(_) => from_table(lua, "make_queue_config", value),
        other => Err(mlua::Error::RuntimeError(format!(
            "a queue config (kumo.make_queue_config), not a {}",
            other.type_name()
        ))),
    }
}

fn json_of(lua: &Lua, value: Value) -> mlua::Result<serde_json::Value> {
    lua.from_value(value)
}

fn lua_of(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    lua.to_value_with(
        value,
        mlua::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false),
    )
}

/// Record a value produced by `init`, or explain why it cannot be called now.
pub(super) fn with_init<R>(
    lua: &Lua,
    function: &str,
    f: impl FnOnce(&mut super::InitConfig) -> R,
) -> mlua::Result<R> {
    let mut phase = lua
        .app_data_mut::<Phase>()
        .ok_or_else(|| located_error(lua, "policy state is not initialised"))?;
    match phase.init.as_mut() {
        Some(init) => Ok(f(init)),
        None => Err(located_error(
            lua,
            format!("kumo.{function} can only be called from the 'pre_init' or 'init' event"),
        )),
    }
}

/// `start_esmtp_listener{...}` with its `via` and `peer` blocks (cidr maps
/// of parameter overrides) merged into one validated config per combination,
/// so a block that would fail for a session fails here, at `init`.
fn listener_spec(lua: &Lua, params: Table) -> mlua::Result<ListenerSpec> {
    const WHAT: &str = "start_esmtp_listener";
    let blocks = |key: &str| -> mlua::Result<Vec<(IpNet, Table)>> {
        let mut out = vec![];
        let Some(map) = params.get::<Option<Table>>(key)? else {
            return Ok(out);
        };
        for pair in map.pairs::<String, Table>() {
            let (cidr, overrides) =
                pair.map_err(|e| located_error(lua, format!("{WHAT}: key '{key}': {e}")))?;
            let net = sluice_common::egress::parse_cidr(&cidr)
                .map_err(|e| located_error(lua, format!("{WHAT}: key '{key}': {e}")))?;
            if overrides.contains_key("listen")? {
                return Err(located_error(
                    lua,
                    format!(
                        "{WHAT}: {key}['{cidr}']: 'listen' can only be set for the whole listener"
                    ),
                ));
            }
            out.push((net, overrides));
        }
        // the same order whatever Lua's table order was
        out.sort_by_key(|(net, _)| *net);
        Ok(out)
    };
    let via = blocks("via")?;
    let peer = blocks("peer")?;
    let merged = |layers: &[(&str, &IpNet, &Table)]| -> mlua::Result<EsmtpListenerConfig> {
        let table = lua.create_table()?;
        for pair in params.pairs::<Value, Value>() {
            let (k, v) = pair?;
            let key = k
                .as_string()
                .and_then(|s| s.to_str().ok().map(|s| s.to_string()));
            if !matches!(key.as_deref(), Some("via" | "peer")) {
                table.set(k, v)?;
            }
        }
        let mut what = WHAT.to_string();
        for (key, net, overrides) in layers {
            for pair in overrides.pairs::<Value, Value>() {
                let (k, v) = pair?;
                table.set(k, v)?;
            }
            what.push_str(&format!(" {key}['{net}']"));
        }
        from_table(lua, &what, Value::Table(table))
    };
    let mut configs = vec![];
    for v in std::iter::once(None).chain(via.iter().map(Some)) {
        for p in std::iter::once(None).chain(peer.iter().map(Some)) {
            let layers: Vec<(&str, &IpNet, &Table)> =
                [v.map(|v| ("via", v)), p.map(|p| ("peer", p))]
                    .into_iter()
                    .flatten()
                    .map(|(key, (net, t))| (key, net, t))
                    .collect();
            configs.push(std::sync::Arc::new(merged(&layers)?));
        }
    }
    if configs
        .iter()
        .any(|c| c.tls_certificate.is_some() != c.tls_private_key.is_some())
    {
        return Err(located_error(
            lua,
            format!("{WHAT}: keys 'tls_certificate' and 'tls_private_key' must be set together"),
        ));
    }
    let base = &configs[0];
    if let Err(e) = base.listen.parse::<std::net::SocketAddr>() {
        return Err(located_error(
            lua,
            format!(
                "{WHAT}: key 'listen': {:?} is not ip:port: {e}",
                base.listen
            ),
        ));
    }
    Ok(ListenerSpec {
        via: via.into_iter().map(|(n, _)| n).collect(),
        peer: peer.into_iter().map(|(n, _)| n).collect(),
        configs,
    })
}

pub fn build_module(lua: &Lua) -> mlua::Result<Table> {
    let kumo = lua.create_table()?;

    kumo.set(
        "on",
        lua.create_function(|lua, (event, handler): (String, Function)| {
            let loading = lua.app_data_ref::<Phase>().is_some_and(|p| p.loading);
            if !loading {
                return Err(located_error(
                    lua,
                    format!("kumo.on('{event}', ...) can only be called while the policy loads, not from an event handler"),
                ));
            }
            let events: Table = lua.named_registry_value(EVENTS_KEY)?;
            let sites: Table = lua.named_registry_value(EVENT_SITES_KEY)?;
            let list: Table = match events.get::<Option<Table>>(event.as_str())? {
                Some(list) => list,
                None => {
                    let list = lua.create_table()?;
                    events.set(event.as_str(), list.clone())?;
                    list
                }
            };
            if list.raw_len() > 0 && !MULTI_HANDLER_EVENTS.contains(&event.as_str()) {
                let site: String = sites.get(event.as_str())?;
                return Err(located_error(
                    lua,
                    format!("{event} event already has a handler defined at {site}"),
                ));
            }
            list.raw_push(handler)?;
            sites.set(event.as_str(), caller_location(lua))?;
            Ok(())
        })?,
    )?;

    kumo.set(
        "start_esmtp_listener",
        lua.create_function(|lua, params: Table| {
            let spec = listener_spec(lua, params)?;
            with_init(lua, "start_esmtp_listener", |init| {
                init.listeners.push(spec)
            })
        })?,
    )?;

    kumo.set(
        "start_http_listener",
        lua.create_function(|lua, params: Value| {
            let config: crate::config::http::HttpListenerConfig =
                from_table(lua, "start_http_listener", params)?;
            if let Err(e) = config.listen.parse::<std::net::SocketAddr>() {
                return Err(located_error(
                    lua,
                    format!(
                        "start_http_listener: key 'listen': {:?} is not ip:port: {e}",
                        config.listen
                    ),
                ));
            }
            with_init(lua, "start_http_listener", |init| {
                init.http_listeners.push(config)
            })
        })?,
    )?;

    kumo.set(
        "define_spool",
        lua.create_function(|lua, params: Value| {
            let spool: SpoolDefinition = from_table(lua, "define_spool", params)?;
            with_init(lua, "define_spool", |init| init.spools.push(spool))
        })?,
    )?;

    kumo.set(
        "configure_local_logs",
        lua.create_function(|lua, params: Value| {
            let logs: LocalLogConfig = from_table(lua, "configure_local_logs", params)?;
            with_init(lua, "configure_local_logs", |init| init.logs.push(logs))
        })?,
    )?;

    type Setter = fn(&mut crate::memory::Settings, u64);
    let setters: [(&str, Setter); 3] = [
        ("set_memory_hard_limit", |m, n| m.hard = Some(n)),
        ("set_memory_soft_limit", |m, n| m.soft = Some(n)),
        ("set_memory_low_thresh", |m, n| m.low = Some(n)),
    ];
    for (name, set) in setters {
        kumo.set(
            name,
            lua.create_function(move |lua, bytes: u64| {
                with_init(lua, name, |init| set(&mut init.memory, bytes))
            })?,
        )?;
    }

    kumo.set(
        "configure_redis_throttles",
        lua.create_function(|lua, params: Value| {
            let what = "configure_redis_throttles";
            let config: crate::config::redis::RedisThrottleConfig = from_table(lua, what, params)?;
            let settings = config
                .settings()
                .map_err(|e| located_error(lua, format!("{what}: {e}")))?;
            with_init(lua, what, |init| init.redis_throttles = Some(settings))
        })?,
    )?;

    kumo.set(
        "configure_bounce_classifier",
        lua.create_function(|lua, params: Value| {
            let what = "configure_bounce_classifier";
            let params: crate::bounce::Params = from_table(lua, what, params)?;
            // compiled here, so a broken rule fails --validate and start-up
            // at this line, naming the file and the rule
            let classifier = params
                .build()
                .map_err(|e| located_error(lua, format!("{what}: {e}")))?;
            with_init(lua, what, |init| {
                init.bounce_classifier = Some(std::sync::Arc::new(classifier))
            })
        })?,
    )?;

    kumo.set(
        "configure_shaping_automation",
        lua.create_function(|lua, params: Value| {
            let what = "configure_shaping_automation";
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Params {
                files: Vec<std::path::PathBuf>,
            }
            let params: Params = from_table(lua, what, params)?;
            // read here, so a broken rule fails --validate at this line
            crate::shaping::rules::load(&params.files)
                .map_err(|e| located_error(lua, format!("{what}: {e}")))?;
            with_init(lua, what, |init| init.shaping_files = params.files)
        })?,
    )?;

    kumo.set(
        "configure_log_hook",
        lua.create_function(|lua, params: Value| {
            let hook: crate::config::logs::LogHookConfig =
                from_table(lua, "configure_log_hook", params)?;
            with_init(lua, "configure_log_hook", |init| init.log_hooks.push(hook))
        })?,
    )?;

    kumo.set(
        "make_queue_config",
        lua.create_function(|lua, params: Value| {
            let config: QueueConfig = from_table(lua, "make_queue_config", params)?;
            Ok(QueueConfigUd(config))
        })?,
    )?;

    let dns = lua.create_table()?;
    dns.set(
        "configure_resolver",
        lua.create_function(|lua, params: Value| {
            let def: ResolverDefinition = from_table(lua, "dns.configure_resolver", params)?;
            def.servers().map_err(|e| {
                located_error(
                    lua,
                    format!("dns.configure_resolver: key 'name_servers': {e}"),
                )
            })?;
            with_init(lua, "dns.configure_resolver", |init| {
                init.resolver = Some(def)
            })
        })?,
    )?;
    kumo.set("dns", dns)?;

    kumo.set(
        "make_egress_source",
        lua.create_function(|lua, params: Value| {
            Ok(EgressSourceUd(from_table(
                lua,
                "make_egress_source",
                params,
            )?))
        })?,
    )?;
    kumo.set(
        "make_egress_pool",
        lua.create_function(|lua, params: Value| {
            let pool: EgressPool = from_table(lua, "make_egress_pool", params)?;
            Ok(EgressPoolUd(pool))
        })?,
    )?;
    kumo.set(
        "make_egress_path",
        lua.create_function(|lua, params: Value| {
            let path: EgressPathConfig = from_table(lua, "make_egress_path", params)?;
            let unknown = crate::smtp::unknown_cipher_suites(&path.rustls_cipher_suites);
            if !unknown.is_empty() {
                return Err(located_error(
                    lua,
                    format!(
                        "make_egress_path: key 'rustls_cipher_suites': unknown {unknown:?}; known: {}",
                        crate::smtp::cipher_suite_names().join(", ")
                    ),
                ));
            }
            Ok(EgressPathUd(path))
        })?,
    )?;

    kumo.set(
        "reject",
        lua.create_function(
            |_, (code, text): (u16, Option<String>)| -> mlua::Result<()> {
                Err(mlua::Error::external(Rejection {
                    code,
                    text: text.unwrap_or_default(),
                }))
            },
        )?,
    )?;

    let json_encode = lua.create_function(|lua, value: Value| {
        serde_json::to_string(&json_of(lua, value)?).map_err(mlua::Error::external)
    })?;
    let json_encode_pretty = lua.create_function(|lua, value: Value| {
        serde_json::to_string_pretty(&json_of(lua, value)?).map_err(mlua::Error::external)
    })?;
    let json_parse = lua.create_function(|lua, text: mlua::String| {
        let v: serde_json::Value = serde_json::from_slice(&text.as_bytes())
            .map_err(|e| located_error(lua, format!("json_parse: {e}")))?;
        lua_of(lua, &v)
    })?;
    kumo.set("json_encode", json_encode.clone())?;
    kumo.set("json_encode_pretty", json_encode_pretty.clone())?;
    kumo.set("json_parse", json_parse.clone())?;
    // `json_decode` is not in KumoMTA; kept as an alias because policies reach for it.
    kumo.set("json_decode", json_parse.clone())?;
    let serde = lua.create_table()?;
    serde.set("json_encode", json_encode)?;
    serde.set("json_encode_pretty", json_encode_pretty)?;
    serde.set("json_parse", json_parse)?;
    kumo.set("serde", serde)?;

    kumo.set(
        "available_parallelism",
        lua.create_function(|_, ()| {
            Ok(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
        })?,
    )?;

    for level in ["error", "warn", "info", "debug"] {
        kumo.set(
            format!("log_{level}"),
            lua.create_function(move |lua, args: mlua::Variadic<Value>| {
                let text = args
                    .iter()
                    .map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}")))
                    .collect::<Vec<_>>()
                    .join(" ");
                let site = caller_location(lua);
                match level {
                    "error" => tracing::error!(policy = %site, "{text}"),
                    "warn" => tracing::warn!(policy = %site, "{text}"),
                    "info" => tracing::info!(policy = %site, "{text}"),
                    _ => tracing::debug!(policy = %site, "{text}"),
                }
                Ok(())
            })?,
        )?;
    }

    kumo.set(
        "sleep",
        lua.create_async_function(|_, secs: f64| async move {
            tokio::time::sleep(std::time::Duration::from_secs_f64(secs.max(0.0))).await;
            Ok(())
        })?,
    )?;

    Ok(kumo)
}
