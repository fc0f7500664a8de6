//! `kumo.amqp` (spec §5.4) over lapin: `build_client(uri)` with
//! `publish`/`publish_with_timeout`/`close` and `confirm:wait()`, and the
//! pooled `basic_publish{...}`.
//!
//! One deliberate difference from KumoMTA: channels are put in confirm mode,
//! so `wait()` reports the broker's real `Ack` or `Nack` (KumoMTA's is always
//! `NotRequested`) and `basic_publish` returns only once the broker has the
//! message. Policies that accept `Ack` or `NotRequested` run unchanged.
//!
//! Credentials come from the URI or a `password = { path = ... }` file and
//! never appear in errors or logs: every message names the broker by
//! [`redacted`].

use super::kumo::from_table;
use super::located_error;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};
use serde::Deserialize;
use sluice_common::duration;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The broker as it may appear in messages: no password.
pub fn redacted(uri: &AMQPUri) -> String {
    format!(
        "{}://{}@{}:{}/{}",
        uri.scheme,
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost
    )
}

async fn connect(
    uri: &AMQPUri,
    tls: Option<OwnedTLSConfig>,
    timeout: Duration,
) -> Result<Channel, String> {
    let name = redacted(uri);
    let props = ConnectionProperties::default().with_connection_name("sluice-mta".into());
    let connecting = async {
        let conn = match tls {
            Some(tls) => {
                let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
                Connection::connect_uri_with_config(uri.clone(), props, tls, runtime).await
            }
            None => Connection::connect_uri(uri.clone(), props).await,
        }
        .map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(channel)
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("AMQP connection to {name} failed: {e}")),
        Err(_) => Err(format!(
            "AMQP connection to {name} timed out after {timeout:?}"
        )),
    }
}

/// AMQP message properties, as named in KumoMTA's API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Properties {
    content_type: Option<String>,
    content_encoding: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<String>,
    message_id: Option<String>,
    timestamp: Option<u64>,
    #[serde(rename = "type", alias = "kind")]
    kind: Option<String>,
    user_id: Option<String>,
    app_id: Option<String>,
    cluster_id: Option<String>,
}

fn amqp_value(v: &serde_json::Value) -> AMQPValue {
    match v {
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        serde_json::Value::Null => AMQPValue::Void,
        other => AMQPValue::LongString(LongString::from(other.to_string().as_bytes())),
    }
}

impl Properties {
    fn build(self) -> BasicProperties {
        let mut p = BasicProperties::default();
        let short = |s: String| ShortString::from(s);
        if let Some(v) = self.content_type {
            p = p.with_content_type(short(v));
        }
        if let Some(v) = self.content_encoding {
            p = p.with_content_encoding(short(v));
        }
        if let Some(h) = self.headers {
            let mut table = FieldTable::default();
            for (k, v) in &h {
                table.insert(short(k.clone()), amqp_value(v));
            }
            p = p.with_headers(table);
        }
        if let Some(v) = self.delivery_mode {
            p = p.with_delivery_mode(v);
        }
        if let Some(v) = self.priority {
            p = p.with_priority(v);
        }
        if let Some(v) = self.correlation_id {
            p = p.with_correlation_id(short(v));
        }
        if let Some(v) = self.reply_to {
            p = p.with_reply_to(short(v));
        }
        if let Some(v) = self.expiration {
            p = p.with_expiration(short(v));
        }
        if let Some(v) = self.message_id {
            p = p.with_message_id(short(v));
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        if let Some(v) = self.kind {
            p = p.with_type(short(v));
        }
        if let Some(v) = self.user_id {
            p = p.with_user_id(short(v));
        }
        if let Some(v) = self.app_id {
            p = p.with_app_id(short(v));
        }
        if let Some(v) = self.cluster_id {
            p = p.with_cluster_id(short(v));
        }
        p
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishOptions {
    #[serde(default)]
    mandatory: bool,
    #[serde(default)]
    immediate: bool,
}

/// `client:publish{...}` parameters (the payload is taken out first: it may
/// be binary).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    routing_key: String,
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    options: PublishOptions,
    #[serde(default)]
    properties: Properties,
}

/// Split `payload` (raw bytes) from the other keys of a parameter table.
fn take_payload(lua: &Lua, what: &str, params: Value) -> mlua::Result<(Vec<u8>, Value)> {
    let Value::Table(t) = params else {
        return Err(located_error(lua, format!("{what}: expected a table")));
    };
    let rest = lua.create_table()?;
    let mut payload = None;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        if let Value::String(s) = &k
            && s.as_bytes().as_ref() == b"payload"
        {
            payload = Some(match v {
                Value::String(s) => s.as_bytes().to_vec(),
                other => {
                    return Err(located_error(
                        lua,
                        format!(
                            "{what}: key 'payload': expected a string, not a {}",
                            other.type_name()
                        ),
                    ));
                }
            });
        } else {
            rest.raw_set(k, v)?;
        }
    }
    let payload =
        payload.ok_or_else(|| located_error(lua, format!("{what}: missing key 'payload'")))?;
    Ok((payload, Value::Table(rest)))
}

fn confirmation_table(lua: &Lua, c: Confirmation) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let (status, returned) = match c {
        Confirmation::Ack(r) => ("Ack", r),
        Confirmation::Nack(r) => ("Nack", r),
        Confirmation::NotRequested => ("NotRequested", None),
    };
    t.set("status", status)?;
    if let Some(r) = returned {
        t.set("reply_code", r.reply_code)?;
        t.set("reply_text", r.reply_text.as_str())?;
    }
    Ok(t)
}

/// What `kumo.amqp.build_client` returns.
struct AmqpClient {
    channel: Channel,
    broker: String,
}

struct Confirm(tokio::sync::Mutex<Option<lapin::PublisherConfirm>>);

impl AmqpClient {
    async fn publish(&self, lua: &Lua, params: Value) -> mlua::Result<lapin::PublisherConfirm> {
        let (payload, rest) = take_payload(lua, "publish", params)?;
        let p: PublishParams = from_table(lua, "publish", rest)?;
        self.channel
            .basic_publish(
                p.exchange.into(),
                p.routing_key.into(),
                BasicPublishOptions {
                    mandatory: p.options.mandatory,
                    immediate: p.options.immediate,
                },
                &payload,
                p.properties.build(),
            )
            .await
            .map_err(|e| {
                mlua::Error::RuntimeError(format!("AMQP publish to {} failed: {e}", self.broker))
            })
    }
}

impl UserData for AmqpClient {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("publish", |lua, this, params: Value| async move {
            let confirm = this.publish(&lua, params).await?;
            Ok(Confirm(tokio::sync::Mutex::new(Some(confirm))))
        });
        methods.add_async_method(
            "publish_with_timeout",
            |lua, this, (params, ms): (Value, u64)| async move {
                let confirm = this.publish(&lua, params).await?;
                match tokio::time::timeout(Duration::from_millis(ms), confirm).await {
                    Ok(Ok(c)) => confirmation_table(&lua, c),
                    Ok(Err(e)) => Err(mlua::Error::RuntimeError(format!(
                        "AMQP confirm from {} failed: {e}",
                        this.broker
                    ))),
                    Err(_) => Err(mlua::Error::RuntimeError(format!(
                        "AMQP publish to {} not confirmed within {ms} ms",
                        this.broker
                    ))),
                }
            },
        );
        methods.add_async_method("close", |_, this, ()| async move {
            let _ = this.channel.close(200, "closed by policy".into()).await;
            Ok(())
        });
    }
}

impl UserData for Confirm {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("wait", |lua, this, ()| async move {
            let confirm = this.0.lock().await.take().ok_or_else(|| {
                mlua::Error::RuntimeError("this confirmation has already been waited for".into())
            })?;
            let c = confirm
                .await
                .map_err(|e| mlua::Error::RuntimeError(format!("AMQP confirm failed: {e}")))?;
            confirmation_table(&lua, c)
        });
    }
}

/// A secret given inline, as `{ key_data = ... }`, or as a file to read
/// (a mounted Kubernetes Secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Secret {
    Inline(String),
    KeyData { key_data: String },
    Path { path: PathBuf },
}

impl Secret {
    fn read(&self) -> Result<String, String> {
        match self {
            Secret::Inline(s) | Secret::KeyData { key_data: s } => Ok(s.clone()),
            Secret::Path { path } => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read the password file {}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionParams {
    host: String,
    port: Option<u16>,
    username: Option<String>,
    password: Option<Secret>,
    vhost: Option<String>,
    heartbeat: Option<u16>,
    #[serde(default)]
    enable_tls: bool,
    root_ca_cert: Option<PathBuf>,
    pool_size: Option<usize>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    connect_timeout: Option<Duration>,
    /// Pool tuning of KumoMTA's deadpool; accepted so its policies load,
    /// unused by this pool (a dead channel is replaced on checkout).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    #[allow(dead_code)]
    recycle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    #[allow(dead_code)]
    wait_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    publish_timeout: Option<Duration>,
}

/// `kumo.amqp.basic_publish{...}` parameters: the AMQP properties sit at
/// the top level beside the routing keys.
#[derive(Debug, Deserialize)]
struct BasicPublishParams {
    routing_key: String,
    #[serde(default)]
    exchange: String,
    connection: ConnectionParams,
    #[serde(default)]
    mandatory: bool,
    #[serde(default)]
    immediate: bool,
    #[serde(flatten)]
    properties: serde_json::Map<String, serde_json::Value>,
}

/// Channels to one broker, reused across `basic_publish` calls.
struct Pool {
    uri: AMQPUri,
    root_ca: Option<String>,
    size: usize,
    connect_timeout: Duration,
    idle: parking_lot::Mutex<Vec<Channel>>,
}

impl Pool {
    async fn checkout(&self) -> Result<Channel, String> {
        while let Some(ch) = self.idle.lock().pop() {
            if ch.status().connected() {
                return Ok(ch);
            }
        }
        let tls = (self.uri.scheme == AMQPScheme::AMQPS).then(|| OwnedTLSConfig {
            identity: None,
            cert_chain: self.root_ca.clone(),
        });
        connect(&self.uri, tls, self.connect_timeout).await
    }

    fn give_back(&self, ch: Channel) {
        let mut idle = self.idle.lock();
        if ch.status().connected() && idle.len() < self.size {
            idle.push(ch);
        }
    }
}

static POOLS: LazyLock<parking_lot::Mutex<HashMap<String, Arc<Pool>>>> =
    LazyLock::new(Default::default);

fn pool_for(c: &ConnectionParams) -> Result<Arc<Pool>, String> {
    let password = match &c.password {
        Some(s) => s.read()?,
        None => "guest".into(),
    };
    let uri = AMQPUri {
        scheme: if c.enable_tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: c.username.clone().unwrap_or_else(|| "guest".into()),
                password,
            },
            host: c.host.clone(),
            port: c.port.unwrap_or(if c.enable_tls { 5671 } else { 5672 }),
        },
        vhost: c.vhost.clone().unwrap_or_else(|| "/".into()),
        query: AMQPQueryString {
            heartbeat: c.heartbeat,
            ..Default::default()
        },
    };
    let root_ca = match &c.root_ca_cert {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read root_ca_cert {}: {e}", p.display()))?,
        ),
        None => None,
    };
    // the key includes the password (kept in memory only) so a rotated
    // secret gets a fresh connection
    let key = format!("{uri:?}|{root_ca:?}");
    let mut pools = POOLS.lock();
    let pool = pools.entry(key).or_insert_with(|| {
        Arc::new(Pool {
            uri,
            root_ca,
            size: c
                .pool_size
                .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get())),
            connect_timeout: c.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
            idle: Default::default(),
        })
    });
    Ok(pool.clone())
}

async fn basic_publish(lua: Lua, params: Value) -> mlua::Result<()> {
    let (payload, rest) = take_payload(&lua, "amqp.basic_publish", params)?;
    let p: BasicPublishParams = from_table(&lua, "amqp.basic_publish", rest)?;
    let properties: Properties =
        serde_path_to_error::deserialize(serde_json::Value::Object(p.properties)).map_err(|e| {
            located_error(
                &lua,
                format!("amqp.basic_publish: key '{}': {}", e.path(), e.inner()),
            )
        })?;
    let publish_timeout = p.connection.publish_timeout.unwrap_or(PUBLISH_TIMEOUT);
    let pool = pool_for(&p.connection).map_err(mlua::Error::RuntimeError)?;
    let broker = redacted(&pool.uri);
    let channel = pool.checkout().await.map_err(mlua::Error::RuntimeError)?;
    let publishing = async {
        let confirm = channel
            .basic_publish(
                p.exchange.into(),
                p.routing_key.into(),
                BasicPublishOptions {
                    mandatory: p.mandatory,
                    immediate: p.immediate,
                },
                &payload,
                properties.build(),
            )
            .await?;
        confirm.await
    };
    let result = tokio::time::timeout(publish_timeout, publishing).await;
    pool.give_back(channel);
    match result {
        Err(_) => Err(format!(
            "AMQP publish to {broker} not confirmed within {publish_timeout:?}"
        )),
        Ok(Err(e)) => Err(format!("AMQP publish to {broker} failed: {e}")),
        Ok(Ok(Confirmation::Nack(_))) => {
            Err(format!("AMQP broker {broker} refused the message (Nack)"))
        }
        Ok(Ok(Confirmation::Ack(Some(r)))) => Err(format!(
            "AMQP broker {broker} returned the message: {} {}",
            r.reply_code, r.reply_text
        )),
        Ok(Ok(_)) => Ok(()),
    }
    .map_err(mlua::Error::RuntimeError)
}

pub fn build_module(lua: &Lua) -> mlua::Result<Table> {
    let amqp = lua.create_table()?;
    amqp.set(
        "build_client",
        lua.create_async_function(|lua, uri: String| async move {
            let parsed: AMQPUri = uri.parse().map_err(|e: String| {
                // the parser's message does not echo the URI, so no secret leaks
                located_error(&lua, format!("amqp.build_client: invalid AMQP URI: {e}"))
            })?;
            let broker = redacted(&parsed);
            let tls = (parsed.scheme == AMQPScheme::AMQPS).then(OwnedTLSConfig::default);
            let channel = connect(&parsed, tls, CONNECT_TIMEOUT)
                .await
                .map_err(mlua::Error::RuntimeError)?;
            Ok(AmqpClient { channel, broker })
        })?,
    )?;
    amqp.set("basic_publish", lua.create_async_function(basic_publish)?)?;
    Ok(amqp)
}
