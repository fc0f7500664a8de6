//! The Lua policy engine: a pool of Lua states that each ran the policy, the
//! `kumo` module, events (`kumo.on`) and typed config constructors. This is
//! the only module that touches Lua.

mod amqp;
pub mod event_latency;
mod events;
mod fetched;
pub mod files;
pub mod hook_errors;
mod http;
pub(crate) mod kumo;
pub mod kumo_keys;
mod lua_connection;
mod lua_dkim;
pub mod lua_listener_domain;
mod lua_message;
mod lua_throttle;
mod lua_xfer;
mod rewrite;

pub use fetched::Fetched;
pub use lua_connection::LuaConnection;

pub use lua_message::{ConnMeta, LuaConnMeta, LuaMessage};

pub use crate::config::InitConfig;
use mlua::{Function, Lua, MultiValue, Table};
use parking_lot::Mutex;
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

/// Why a policy could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read, the Lua failed to load or run, or no Lua
    /// state could be made.
    #[error("{0}")]
    Load(String),
    /// A start-up event (`init`, `validate_config`, a sample
    /// `get_queue_config`) failed.
    #[error("{event}: {message}")]
    Event {
        /// The event's name.
        event: String,
        /// What the handler's failure said.
        message: String,
    },
}

/// What a handler's failure means to the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum EventError {
    /// `kumo.reject(code, text)`.
    Rejected {
        /// The SMTP reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
    /// Any other error, with the message (file:line where Lua gave one).
    Failed(String),
}

impl std::error::Error for EventError {}

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
    /// The SMTP reply code given to `kumo.reject`.
    pub code: u16,
    /// The reply text (empty when none was given).
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

/// Per-state flags that decide which `kumo` functions may be called now.
#[derive(Default)]
struct Phase {
    loading: bool,
    init: Option<InitConfig>,
}

/// A policy's Lua text and where it came from.
#[derive(Clone)]
pub struct PolicySource {
    /// File name shown in errors and used for the chunk name.
    pub name: String,
    /// The Lua text.
    pub code: String,
    /// The file's directory, put first on `package.path` so the policy can
    /// `require` its own modules; `None` when embedded.
    pub dir: Option<PathBuf>,
    /// The Lua modules beside it, read with it: what every state of this
    /// version `require`s.
    pub modules: Arc<files::Snapshot>,
}

impl PolicySource {
    /// Read the policy at `path`.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let code = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Load(format!("{}: {e}", path.display())))?;
        Ok(PolicySource {
            name: path.display().to_string(),
            code,
            dir: path.parent().map(Path::to_path_buf),
            modules: Arc::new(files::Snapshot::take(path)),
        })
    }

    /// A policy compiled into the binary (or written by a test), shown as
    /// `name`.
    pub fn embedded(name: &str, code: &str) -> Self {
        PolicySource {
            name: name.into(),
            code: code.into(),
            dir: None,
            modules: Default::default(),
        }
    }
}

/// The loaded policy. Its Lua states come from the current [`PolicyState`];
/// a reload swaps that state whole (a new epoch), so every caller holding
/// the `Arc<Policy>` sees the new policy at its next event.
pub struct Policy {
    state: parking_lot::RwLock<Arc<PolicyState>>,
    attached: Mutex<Attached>,
    epoch: std::sync::atomic::AtomicU64,
}

/// What the running MTA lends every Lua state: the spool (for
/// `msg:get_data()`) and the throttles (for `kumo.make_throttle`).
#[derive(Clone, Default)]
struct Attached {
    spool: Option<Arc<crate::spool::Spool>>,
    throttles: Option<Arc<crate::throttle::Throttles>>,
}

impl Attached {
    fn install(&self, lua: &Lua) {
        if let Some(s) = &self.spool {
            lua.set_app_data(s.clone());
        }
        if let Some(t) = &self.throttles {
            lua.set_app_data(t.clone());
        }
    }
}

/// One version of the policy: its source and its pool of Lua states.
pub struct PolicyState {
    source: PolicySource,
    pool: Mutex<Vec<Lua>>,
    /// `kumo.amqp.basic_publish` pools of this version, shared by its states.
    amqp: Arc<amqp::Pools>,
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
        let amqp = Arc::new(amqp::Pools::default());
        let lua = new_state(&source, &amqp)?;
        let events = registered_events(&lua).map_err(|e| PolicyError::Load(describe(&e)))?;
        Ok(Arc::new(Policy {
            state: parking_lot::RwLock::new(Arc::new(PolicyState {
                source,
                pool: Mutex::new(vec![lua]),
                amqp,
                events,
            })),
            attached: Mutex::new(Attached::default()),
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
        let attached = self.attached.lock().clone();
        for lua in next.pool.lock().iter() {
            attached.install(lua);
        }
        *self.state.write() = next;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
    }

    /// The config epoch: 1 at start, one more per adopted reload.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current policy's file name, as errors show it.
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
        self.attach(|a| a.spool = Some(spool));
    }

    /// Give `kumo.make_throttle` the node's throttles.
    pub fn attach_throttles(&self, throttles: Arc<crate::throttle::Throttles>) {
        self.attach(|a| a.throttles = Some(throttles));
    }

    fn attach(&self, f: impl FnOnce(&mut Attached)) {
        let attached = {
            let mut a = self.attached.lock();
            f(&mut a);
            a.clone()
        };
        for lua in self.current().pool.lock().iter() {
            attached.install(lua);
        }
    }

    fn checkout(&self) -> Result<Pooled, EventError> {
        let state = self.current();
        let lua = state.pool.lock().pop();
        let lua = match lua {
            Some(lua) => lua,
            None => {
                let lua = new_state(&state.source, &state.amqp)
                    .map_err(|e| EventError::Failed(e.to_string()))?;
                self.attached.lock().install(&lua);
                lua
            }
        };
        Ok(Pooled {
            lua: Some(lua),
            state,
        })
    }

    /// Run the `pre_init` then the `init` event and return what they
    /// configured.
    pub async fn run_init(&self) -> Result<InitConfig, PolicyError> {
        let lua = self
            .checkout()
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        lua.set_app_data(Phase {
            loading: false,
            init: Some(InitConfig::default()),
        });
        // pre_init (KumoMTA: where memory limits are set) then init
        let mut result = self
            .call_handlers(&lua, "pre_init", |_| Ok(MultiValue::new()))
            .await
            .map_err(|e| ("pre_init", e));
        if result.is_ok() {
            result = self
                .call_handlers(&lua, "init", |_| Ok(MultiValue::new()))
                .await
                .map_err(|e| ("init", e));
        }
        let init = lua
            .app_data_mut::<Phase>()
            .and_then(|mut p| p.init.take())
            .unwrap_or_default();
        result.map_err(|(event, e)| PolicyError::Event {
            event: event.into(),
            message: e.to_string(),
        })?;
        Ok(init)
    }

    /// Whether the current policy registered a handler for `event` with
    /// `kumo.on`.
    pub fn has_handler(&self, event: &str) -> bool {
        self.current().events.contains(event)
    }

    /// Call every handler of `event` in order until one returns a value
    /// (§9.1: zero return values pass on; any value, even `nil`, stops).
    async fn call_handlers(
        &self,
        lua: &Lua,
        event: &str,
        args: impl Fn(&Lua) -> mlua::Result<MultiValue>,
    ) -> Result<Option<MultiValue>, EventError> {
        let handlers = handlers(lua, event).map_err(event_error)?;
        if handlers.is_empty() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let result = async {
            for f in handlers {
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
        .await;
        event_latency::observe(event, started.elapsed());
        result
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
fn new_state(source: &PolicySource, amqp: &Arc<amqp::Pools>) -> Result<Lua, PolicyError> {
    let lua = Lua::new();
    lua.set_app_data(amqp.clone());
    let setup = || -> mlua::Result<()> {
        lua.set_named_registry_value(EVENTS_KEY, lua.create_table()?)?;
        lua.set_named_registry_value(EVENT_SITES_KEY, lua.create_table()?)?;
        let kumo = kumo::build_module(&lua)?;
        kumo.set("amqp", amqp::build_module(&lua)?)?;
        kumo.set("http", http::build_module(&lua)?)?;
        lua_throttle::register(&lua, &kumo)?;
        lua_xfer::register(&lua, &kumo)?;
        lua_dkim::register(&lua, &kumo)?;
        lua_listener_domain::register(&lua, &kumo)?;
        lua.globals().set("kumo", kumo.clone())?;
        let package: Table = lua.globals().get("package")?;
        let loaded: Table = package.get("loaded")?;
        loaded.set("kumo", kumo)?;
        if let Some(dir) = &source.dir {
            let path: String = package.get("path")?;
            let dir = dir.display();
            package.set("path", format!("{dir}/?.lua;{dir}/?/init.lua;{path}"))?;
        }
        source.modules.install(&lua)?;
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
