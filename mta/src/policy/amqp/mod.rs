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
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod pool;
mod properties;

use pool::BasicPublishParams;
pub use pool::Pools;
use properties::{Properties, PublishParams};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// AMQP failures; each names the broker without its password.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("AMQP connection to {broker} failed: {detail}")]
    Connect { broker: String, detail: String },
    #[error("AMQP connection to {broker} timed out after {after:?}")]
    ConnectTimeout { broker: String, after: Duration },
    #[error("cannot read the password file {}: {source}", path.display())]
    Password {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read root_ca_cert {}: {source}", path.display())]
    RootCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("AMQP publish to {broker} not confirmed within {after:?}")]
    NotConfirmed { broker: String, after: Duration },
    #[error("AMQP publish to {broker} failed: {detail}")]
    Publish { broker: String, detail: String },
    #[error("AMQP broker {broker} refused the message (Nack)")]
    Nack { broker: String },
    #[error("AMQP broker {broker} returned the message: {code} {text}")]
    Returned {
        broker: String,
        code: u16,
        text: String,
    },
}
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
) -> Result<Channel, AmqpError> {
    let broker = redacted(uri);
    let props = ConnectionProperties::default().with_connection_name("sluice-mta".into());
    let connecting = async {
        let conn = match tls {
            Some(tls) => {
                let runtime = lapin::runtime::default_runtime()?;
                Connection::connect_uri_with_config(uri.clone(), props, tls, runtime).await
            }
            None => Connection::connect_uri(uri.clone(), props).await,
        }?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(AmqpError::Connect {
            broker,
            detail: e.to_string(),
        }),
        Err(_) => Err(AmqpError::ConnectTimeout {
            broker,
            after: timeout,
        }),
    }
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
    let pools = lua
        .app_data_ref::<Arc<Pools>>()
        .map(|p| p.clone())
        .ok_or_else(|| located_error(&lua, "amqp.basic_publish: no AMQP pools in this state"))?;
    let pool = pools
        .pool_for(&p.connection)
        .map_err(mlua::Error::external)?;
    let broker = redacted(&pool.uri);
    let channel = pool.checkout().await.map_err(mlua::Error::external)?;
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
        Err(_) => Err(AmqpError::NotConfirmed {
            broker,
            after: publish_timeout,
        }),
        Ok(Err(e)) => Err(AmqpError::Publish {
            broker,
            detail: e.to_string(),
        }),
        Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nack { broker }),
        Ok(Ok(Confirmation::Ack(Some(r)))) => Err(AmqpError::Returned {
            broker,
            code: r.reply_code,
            text: r.reply_text.to_string(),
        }),
        Ok(Ok(_)) => Ok(()),
    }
    .map_err(mlua::Error::external)
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
                .map_err(mlua::Error::external)?;
            Ok(AmqpClient { channel, broker })
        })?,
    )?;
    amqp.set("basic_publish", lua.create_async_function(basic_publish)?)?;
    Ok(amqp)
}
