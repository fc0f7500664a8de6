//! The Lua policy engine: a pool of Lua states that each ran the policy, the
//! `kumo` module, events (`kumo.on`) and typed config constructors. This is
//! the only module that touches Lua.

mod amqp;
mod http;
pub(crate) mod kumo;
mod lua_connection;
mod lua_message;

pub use lua_connection::LuaConnection;

pub use lua_message::{ConnMeta, LuaConnMeta, LuaMessage};

use crate::listener::config::ListenerSpec;
use crate::log::LocalLogConfig;
use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Table, Value};
use parking_lot::Mutex;
use serde::Deserialize;
use sluice_common::egress::{EgressPathConfig, EgressPool, EgressSource};
use sluice_common::queue_config::QueueConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Events that may have several handlers, run in registration order (§9.1).
const MULTI_HANDLER_EVENTS: &[&str] = &[
    "get_queue_config",
    "requeue_message",
    "throttle_insert_ready_queue",
    "should_enqueue_log_record",
    "get_acl_definition",
    "pre_init",
    "validate_config",
];

const EVENTS_KEY: &str = "sluice.events";
const EVENT_SITES_KEY: &str = "sluice.event_sites";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Load(String),
    #[error("{event}: {message}")]
    Event { event: String, message: String },
}

/// What a handler's failure means to the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum EventError {
    /// `kumo.reject(code, text)`.
    Rejected { code: u16, text: String },
    /// Any other error, with the message (file:line where Lua gave one).
    Failed(String),
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            EventError::Rejected { code, text } => write!(f, "rejected with {code} {text}"),
            EventError::Failed(m) => f.write_str(m),
        }
    }
}

/// The error `kumo.reject` raises; found again by downcasting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("kumo.reject({code}, {text:?})")]
pub struct Rejection {
    pub code: u16,
    pub text: String,
}

/// The innermost, most useful message of a Lua error.
pub fn describe(err: &mlua::Error) -> String {
    match err {
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        mlua::Error::ExternalError(e) => e.to_string(),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        other => other.to_string(),
    }
}

fn find_rejection(err: &mlua::Error) -> Option<&Rejection> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            find_rejection(cause)
        }
        mlua::Error::ExternalError(e) => e.downcast_ref::<Rejection>(),
        _ => None,
    }
}

fn event_error(err: mlua::Error) -> EventError {
    match find_rejection(&err) {
        Some(r) => EventError::Rejected {
            code: r.code,
            text: r.text.clone(),
        },
        None => EventError::Failed(describe(&err)),
    }
}

/// `kumo.define_spool{...}` (spec §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolDefinition {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub kind: Option<SpoolKind>,
    /// Accepted for compatibility: Sluice always syncs before replying 250.
    #[serde(default)]
    pub flush: Option<bool>,
    #[serde(default)]
    pub rocks_params: Option<serde_json::Value>,
    #[serde(default)]
    pub min_free_space: Option<serde_json::Value>,
    #[serde(default)]
    pub min_free_inodes: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum SpoolKind {
    LocalDisk,
    RocksDB,
}

/// `kumo.dns.configure_resolver{ name_servers = {'ip:port', ...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverDefinition {
    pub name_servers: Vec<String>,
}

impl ResolverDefinition {
    /// The servers as socket addresses (port 53 when none is given).
    pub fn servers(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        self.name_servers
            .iter()
            .map(|s| {
                s.parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("name server {s:?} is not ip or ip:port"))
            })
            .collect()
    }
}

/// What the `init` event configured.
#[derive(Debug, Default, Clone)]
pub struct InitConfig {
    pub listeners: Vec<ListenerSpec>,
    pub spools: Vec<SpoolDefinition>,
    pub logs: Vec<LocalLogConfig>,
    pub resolver: Option<ResolverDefinition>,
    pub http_listeners: Vec<crate::admin::HttpListenerConfig>,
    pub log_hooks: Vec<crate::log::LogHookConfig>,
}

/// Per-state flags that decide which `kumo` functions may be called now.
#[derive(Default)]
struct Phase {
    loading: bool,
    init: Option<InitConfig>,
}

#[derive(Clone)]
pub struct PolicySource {
    /// File name shown in errors and used for the chunk name.
    pub name: String,
    pub code: String,
    pub dir: Option<PathBuf>,
}

impl PolicySource {
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let code = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Load(format!("{}: {e}", path.display())))?;
        Ok(PolicySource {
            name: path.display().to_string(),
            code,
            dir: path.parent().map(Path::to_path_buf),
        })
    }

    pub fn embedded(name: &str, code: &str) -> Self {
        PolicySource {
            name: name.into(),
            code: code.into(),
            dir: None,
        }
    }
}

/// The loaded policy. Its Lua states come from the current [`PolicyState`];
/// a reload swaps that state whole (a new epoch), so every caller holding
/// the `Arc<Policy>` sees the new policy at its next event.
pub struct Policy {
    state: parking_lot::RwLock<Arc<PolicyState>>,
    spool: Mutex<Option<Arc<crate::spool::Spool>>>,
    epoch: std::sync::atomic::AtomicU64,
}

/// One version of the policy: its source and its pool of Lua states.
pub struct PolicyState {
    source: PolicySource,
    pool: Mutex<Vec<Lua>>,
    /// Events with at least one handler, so callers can skip the rest cheaply.
    events: std::collections::HashSet<String>,
}

impl PolicyState {
    /// Return a Lua state to this version's pool, keeping at most 256 spare.
    /// States of a replaced version go back to its pool, which is dropped
    /// with the last reference to it.
    fn give_back(&self, lua: Lua) {
        let mut pool = self.pool.lock();
        if pool.len() < 256 {
            pool.push(lua);
        }
    }
}

/// A Lua state borrowed from the pool; it goes back when dropped.
struct Pooled {
    lua: Option<Lua>,
    state: Arc<PolicyState>,
}

impl std::ops::Deref for Pooled {
    type Target = Lua;
    fn deref(&self) -> &Lua {
        self.lua.as_ref().expect("present until drop")
    }
}

impl Pooled {
    /// Keep the state out of the pool (a Lua connection object lives in it).
    fn into_inner(mut self) -> (Lua, Arc<PolicyState>) {
        (
            self.lua.take().expect("present until drop"),
            self.state.clone(),
        )
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(lua) = self.lua.take() {
            self.state.give_back(lua);
        }
    }
}

impl Policy {
    /// Load the policy once (which validates that it runs) and keep that state.
    pub fn load(source: PolicySource) -> Result<Arc<Policy>, PolicyError> {
        let lua = new_state(&source)?;
        let events = registered_events(&lua).map_err(|e| PolicyError::Load(describe(&e)))?;
        Ok(Arc::new(Policy {
            state: parking_lot::RwLock::new(Arc::new(PolicyState {
                source,
                pool: Mutex::new(vec![lua]),
                events,
            })),
            spool: Mutex::new(None),
            epoch: std::sync::atomic::AtomicU64::new(1),
        }))
    }

    fn current(&self) -> Arc<PolicyState> {
        self.state.read().clone()
    }

    /// Serve `candidate`'s policy from now on (a new config epoch); returns
    /// the new epoch. The candidate was loaded and validated on its own.
    pub fn adopt(&self, candidate: &Policy) -> u64 {
        let next = candidate.current();
        if let Some(spool) = self.spool.lock().clone() {
            for lua in next.pool.lock().iter() {
                lua.set_app_data(spool.clone());
            }
        }
        *self.state.write() = next;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
    }

    /// The config epoch: 1 at start, one more per adopted reload.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn name(&self) -> String {
        self.current().source.name.clone()
    }

    /// SHA-256 of the policy text, hex: what pods report to show which
    /// config they run.
    pub fn content_hash(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.current().source.code.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Give message objects access to spooled bodies (for `msg:get_data()`).
    pub fn attach_spool(&self, spool: Arc<crate::spool::Spool>) {
        *self.spool.lock() = Some(spool.clone());
        for lua in self.current().pool.lock().iter() {
            lua.set_app_data(spool.clone());
        }
    }

    fn checkout(&self) -> Result<Pooled, EventError> {
        let state = self.current();
        let lua = state.pool.lock().pop();
        let lua = match lua {
            Some(lua) => lua,
            None => {
                let lua =
                    new_state(&state.source).map_err(|e| EventError::Failed(e.to_string()))?;
                if let Some(spool) = self.spool.lock().clone() {
                    lua.set_app_data(spool);
                }
                lua
            }
        };
        Ok(Pooled {
            lua: Some(lua),
            state,
        })
    }

    /// Run the `init` event and return what it configured.
    pub async fn run_init(&self) -> Result<InitConfig, PolicyError> {
        let lua = self
            .checkout()
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        lua.set_app_data(Phase {
            loading: false,
            init: Some(InitConfig::default()),
        });
        let result = self
            .call_handlers(&lua, "init", |_| Ok(MultiValue::new()))
            .await;
        let init = lua
            .app_data_mut::<Phase>()
            .and_then(|mut p| p.init.take())
            .unwrap_or_default();
        result.map_err(|e| PolicyError::Event {
            event: "init".into(),
            message: e.to_string(),
        })?;
        Ok(init)
    }

    pub fn has_handler(&self, event: &str) -> bool {
        self.current().events.contains(event)
    }

    /// `requeue_message(msg, smtp_response, insert_context, increment_attempts, delay)`
    /// (spec §3.4); `delay` is in seconds. Handlers run in order until one
    /// returns a value.
    pub async fn requeue_message(
        &self,
        msg: &crate::message::MessageRef,
        response: &str,
        context: &[&str],
        increment_attempts: bool,
        delay: Option<std::time::Duration>,
    ) -> Result<(), EventError> {
        if !self.has_handler("requeue_message") {
            return Ok(());
        }
        let lua = self.checkout()?;
        self.call_handlers(&lua, "requeue_message", |lua| {
            (
                lua.create_userdata(LuaMessage(msg.clone()))?,
                response,
                lua.create_sequence_from(context.iter().copied())?,
                increment_attempts,
                delay.map(|d| d.as_secs_f64()),
            )
                .into_lua_multi(lua)
        })
        .await
        .map(|_| ())
    }

    /// `should_enqueue_log_record(msg, hook_name)` (spec §8): whether the
    /// log record made into `msg` is queued; `false` when no handler answers.
    pub async fn should_enqueue_log_record(
        &self,
        msg: &crate::message::MessageRef,
        hook: &str,
    ) -> Result<bool, EventError> {
        if !self.has_handler("should_enqueue_log_record") {
            return Ok(false);
        }
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, "should_enqueue_log_record", |lua| {
                (lua.create_userdata(LuaMessage(msg.clone()))?, hook).into_lua_multi(lua)
            })
            .await?;
        boolean("should_enqueue_log_record", result)
    }

    /// Call every handler of `event` in order until one returns a value
    /// (§9.1: zero return values pass on; any value, even `nil`, stops).
    async fn call_handlers(
        &self,
        lua: &Lua,
        event: &str,
        args: impl Fn(&Lua) -> mlua::Result<MultiValue>,
    ) -> Result<Option<MultiValue>, EventError> {
        for f in handlers(lua, event).map_err(event_error)? {
            let result: MultiValue = f
                .call_async(args(lua).map_err(event_error)?)
                .await
                .map_err(event_error)?;
            if !result.is_empty() {
                return Ok(Some(result));
            }
        }
        Ok(None)
    }

    /// `get_queue_config(domain, tenant, campaign, routing_domain)`; the
    /// defaults when no handler returns a value.
    pub async fn get_queue_config(
        &self,
        domain: &str,
        tenant: Option<&str>,
        campaign: Option<&str>,
        routing_domain: Option<&str>,
    ) -> Result<QueueConfig, EventError> {
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, "get_queue_config", |lua| {
                (domain, tenant, campaign, routing_domain).into_lua_multi(lua)
            })
            .await?;
        match result {
            None => Ok(QueueConfig::default()),
            Some(values) => {
                let value = values.into_iter().next().unwrap_or(Value::Nil);
                kumo::queue_config_from_value(&lua, value).map_err(|e| {
                    EventError::Failed(format!("get_queue_config returned {}", describe(&e)))
                })
            }
        }
    }

    /// Call a single-handler event that must return a config object; `None`
    /// when no handler is registered.
    async fn config_event<T, U>(
        &self,
        event: &str,
        what: &str,
        args: impl Fn(&Lua) -> mlua::Result<MultiValue>,
    ) -> Result<Option<T>, EventError>
    where
        T: serde::de::DeserializeOwned + Clone,
        U: mlua::UserData + 'static + AsRef<T>,
    {
        if !self.has_handler(event) {
            return Ok(None);
        }
        let lua = self.checkout()?;
        let values = self.call_handlers(&lua, event, args).await?;
        let value = values
            .and_then(|v| v.into_iter().next())
            .unwrap_or(Value::Nil);
        if value.is_nil() {
            return Err(EventError::Failed(format!(
                "{event} returned no value; it must return kumo.{what}{{...}}"
            )));
        }
        kumo::config_from_value::<T, U>(&lua, what, value)
            .map(Some)
            .map_err(|e| EventError::Failed(format!("{event} returned {}", describe(&e))))
    }

    /// `get_egress_pool(name)`; the built-in `unspecified` pool is never asked for.
    pub async fn get_egress_pool(&self, name: &str) -> Result<EgressPool, EventError> {
        if name == "unspecified" {
            return Ok(EgressPool::unspecified());
        }
        self.config_event::<EgressPool, kumo::EgressPoolUd>(
            "get_egress_pool",
            "make_egress_pool",
            |lua| name.into_lua_multi(lua),
        )
        .await?
        .ok_or_else(|| {
            EventError::Failed(format!(
                "egress pool {name:?} is not defined: no get_egress_pool handler"
            ))
        })
    }

    /// `get_egress_source(name)`; the built-in `unspecified` source is never asked for.
    pub async fn get_egress_source(&self, name: &str) -> Result<EgressSource, EventError> {
        if name == "unspecified" {
            return Ok(EgressSource::unspecified());
        }
        self.config_event::<EgressSource, kumo::EgressSourceUd>(
            "get_egress_source",
            "make_egress_source",
            |lua| name.into_lua_multi(lua),
        )
        .await?
        .ok_or_else(|| {
            EventError::Failed(format!(
                "egress source {name:?} is not defined: no get_egress_source handler"
            ))
        })
    }

    /// `get_egress_path_config(routing_domain, egress_source, site_name)`; defaults without a handler.
    pub async fn get_egress_path_config(
        &self,
        routing_domain: &str,
        source: &str,
        site: &str,
    ) -> Result<EgressPathConfig, EventError> {
        Ok(self
            .config_event::<EgressPathConfig, kumo::EgressPathUd>(
                "get_egress_path_config",
                "make_egress_path",
                |lua| (routing_domain, source, site).into_lua_multi(lua),
            )
            .await?
            .unwrap_or_default())
    }

    /// Fire an `smtp_server_*` style event with a message and/or connection meta.
    pub async fn message_event(
        &self,
        event: &str,
        msg: Option<&crate::message::MessageRef>,
        conn: Option<&ConnMeta>,
    ) -> Result<(), EventError> {
        let lua = self.checkout()?;
        self.call_handlers(&lua, event, |lua| {
            let mut args = MultiValue::new();
            if let Some(m) = msg {
                args.push_back(Value::UserData(lua.create_userdata(LuaMessage(m.clone()))?));
            }
            if let Some(c) = conn {
                args.push_back(Value::UserData(
                    lua.create_userdata(LuaConnMeta(c.clone()))?,
                ));
            }
            Ok(args)
        })
        .await
        .map(|_| ())
    }

    /// `smtp_server_ehlo(domain, conn_meta)`; rejections come back as errors.
    pub async fn ehlo_event(&self, domain: &str, conn: &ConnMeta) -> Result<(), EventError> {
        let lua = self.checkout()?;
        self.call_handlers(&lua, "smtp_server_ehlo", |lua| {
            (domain, lua.create_userdata(LuaConnMeta(conn.clone()))?).into_lua_multi(lua)
        })
        .await
        .map(|_| ())
    }

    /// `smtp_server_auth_plain(authz, authc, password, conn_meta)`: whether
    /// the credentials are good; `false` when no handler answers.
    pub async fn auth_plain_event(
        &self,
        authz: &str,
        authc: &str,
        password: &str,
        conn: &ConnMeta,
    ) -> Result<bool, EventError> {
        let event = "smtp_server_auth_plain";
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, event, |lua| {
                let meta = lua.create_userdata(LuaConnMeta(conn.clone()))?;
                (authz, authc, password, meta).into_lua_multi(lua)
            })
            .await?;
        boolean(event, result)
    }

    /// `http_server_validate_auth_basic(user, password)`: whether an admin
    /// API client's HTTP Basic credentials are good; `false` without a handler.
    pub async fn validate_auth_basic(
        &self,
        user: &str,
        password: &str,
    ) -> Result<bool, EventError> {
        let event = "http_server_validate_auth_basic";
        if !self.has_handler(event) {
            return Ok(false);
        }
        let lua = self.checkout()?;
        let result = self
            .call_handlers(&lua, event, |lua| (user, password).into_lua_multi(lua))
            .await?;
        boolean(event, result)
    }

    /// `smtp_server_mail_from(sender, conn_meta)` / `smtp_server_rcpt_to(rcpt, conn_meta)`.
    pub async fn address_event(
        &self,
        event: &str,
        address: &str,
        conn: &ConnMeta,
    ) -> Result<(), EventError> {
        let lua = self.checkout()?;
        self.call_handlers(&lua, event, |lua| {
            (address, lua.create_userdata(LuaConnMeta(conn.clone()))?).into_lua_multi(lua)
        })
        .await
        .map(|_| ())
    }

    /// Exercise what `--validate` can reach without traffic: `init` (every
    /// listener, spool and log table is parsed), `get_queue_config` for a
    /// sample of names, and any `validate_config` handlers.
    pub async fn validate(&self) -> Result<InitConfig, PolicyError> {
        let init = self.run_init().await?;
        // (tenant, campaign, routing_domain) for the sample domain
        let samples = [
            (None, None, None),
            (Some("tenant"), Some("campaign"), None),
            (None, None, Some("routing.example.com")),
        ];
        for (tenant, campaign, routing) in samples {
            self.get_queue_config("example.com", tenant, campaign, routing)
                .await
                .map_err(|e| PolicyError::Event {
                    event: "get_queue_config".into(),
                    message: e.to_string(),
                })?;
        }
        let lua = self
            .checkout()
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        self.call_handlers(&lua, "validate_config", |_| Ok(MultiValue::new()))
            .await
            .map_err(|e| PolicyError::Event {
                event: "validate_config".into(),
                message: e.to_string(),
            })?;
        Ok(init)
    }
}

/// A handler's answer as a boolean: nothing or `nil` is `false`, anything
/// but a boolean is an error naming the event.
fn boolean(event: &str, result: Option<MultiValue>) -> Result<bool, EventError> {
    match result.and_then(|v| v.into_iter().next()) {
        None | Some(Value::Nil) | Some(Value::Boolean(false)) => Ok(false),
        Some(Value::Boolean(true)) => Ok(true),
        Some(other) => Err(EventError::Failed(format!(
            "{event} returned a {}, not a boolean",
            other.type_name()
        ))),
    }
}

fn registered_events(lua: &Lua) -> mlua::Result<std::collections::HashSet<String>> {
    let events: Table = lua.named_registry_value(EVENTS_KEY)?;
    events
        .pairs::<String, Table>()
        .map(|kv| kv.map(|(k, _)| k))
        .collect()
}

fn handlers(lua: &Lua, event: &str) -> mlua::Result<Vec<Function>> {
    let events: Table = lua.named_registry_value(EVENTS_KEY)?;
    match events.get::<Option<Table>>(event)? {
        Some(list) => list.sequence_values::<Function>().collect(),
        None => Ok(vec![]),
    }
}

/// Build a Lua state: std libs, the `kumo` module, then run the policy.
fn new_state(source: &PolicySource) -> Result<Lua, PolicyError> {
    let lua = Lua::new();
    let setup = || -> mlua::Result<()> {
        lua.set_named_registry_value(EVENTS_KEY, lua.create_table()?)?;
        lua.set_named_registry_value(EVENT_SITES_KEY, lua.create_table()?)?;
        let kumo = kumo::build_module(&lua)?;
        kumo.set("amqp", amqp::build_module(&lua)?)?;
        kumo.set("http", http::build_module(&lua)?)?;
        lua.globals().set("kumo", kumo.clone())?;
        let package: Table = lua.globals().get("package")?;
        let loaded: Table = package.get("loaded")?;
        loaded.set("kumo", kumo)?;
        if let Some(dir) = &source.dir {
            let path: String = package.get("path")?;
            let dir = dir.display();
            package.set("path", format!("{dir}/?.lua;{dir}/?/init.lua;{path}"))?;
        }
        Ok(())
    };
    setup().map_err(|e| PolicyError::Load(describe(&e)))?;
    lua.set_app_data(Phase {
        loading: true,
        init: None,
    });
    lua.load(&source.code)
        .set_name(format!("@{}", source.name))
        .exec()
        .map_err(|e| PolicyError::Load(describe(&e)))?;
    lua.set_app_data(Phase::default());
    Ok(lua)
}

/// `file:line` of the Lua code calling into Rust right now.
fn caller_location(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        let file = src.short_src.as_deref().unwrap_or("?").to_string();
        format!("{file}:{}", d.current_line().unwrap_or(0))
    })
    .unwrap_or_else(|| "?".into())
}

/// An error that names where in the policy it happened.
fn located_error(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}: {message}", caller_location(lua)))
}

/// A config the policy produced, with when and in which epoch it was asked
/// for: `Ttl` configs are asked again after `refresh_interval`, `Epoch`
/// ones only after a reload (spec §11).
pub struct Fetched<T> {
    pub value: Arc<T>,
    at: std::time::Instant,
    epoch: u64,
}

impl<T> Fetched<T> {
    pub fn new(value: Arc<T>, epoch: u64) -> Self {
        Fetched {
            value,
            at: std::time::Instant::now(),
            epoch,
        }
    }

    pub fn is_fresh(
        &self,
        strategy: sluice_common::queue_config::RefreshStrategy,
        interval: std::time::Duration,
        epoch: u64,
    ) -> bool {
        match strategy {
            sluice_common::queue_config::RefreshStrategy::Ttl => self.at.elapsed() < interval,
            sluice_common::queue_config::RefreshStrategy::Epoch => self.epoch == epoch,
        }
    }
}
