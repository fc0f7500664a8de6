//! The events the MTA fires and how their answers are read (spec §9): the
//! config hooks (`get_queue_config`, `get_egress_*`), the SMTP server's
//! events, `requeue_message`, `should_enqueue_log_record`, the credential
//! checks, and what `--validate` exercises.

use super::kumo;
use super::{
    ConnMeta, EventError, InitConfig, LuaConnMeta, LuaMessage, Policy, PolicyError, describe,
};
use mlua::{IntoLuaMulti, Lua, MultiValue, Value};
use sluice_common::egress::{EgressPathConfig, EgressPool, EgressSource};
use sluice_common::queue_config::QueueConfig;

impl Policy {
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

    /// `get_queue_config(domain, tenant, campaign, routing_domain)`; the
    /// defaults when no handler returns a value.
    pub async fn get_queue_config(
        &self,
        domain: &str,
        tenant: Option<&str>,
        campaign: Option<&str>,
        routing_domain: Option<&str>,
    ) -> Result<QueueConfig, EventError> {
        self.queue_config(domain, tenant, campaign, routing_domain)
            .await
            .inspect_err(|e| super::hook_errors::record("get_queue_config", &e.to_string()))
    }

    async fn queue_config(
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
    /// when no handler is registered. A failure is counted for the metrics
    /// and the admin API.
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
        self.config_event_inner::<T, U>(event, what, args)
            .await
            .inspect_err(|e| super::hook_errors::record(event, &e.to_string()))
    }

    async fn config_event_inner<T, U>(
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

    /// `rebind_message(msg, data)`: an admin rebind with
    /// `trigger_rebind_event` hands each message and the request's `data`
    /// to the policy, which edits the message as it sees fit.
    pub async fn rebind_event(
        &self,
        msg: &crate::message::MessageRef,
        data: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), EventError> {
        let lua = self.checkout()?;
        self.call_handlers(&lua, "rebind_message", |lua| {
            let pairs = data.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            Ok(MultiValue::from_iter([
                Value::UserData(lua.create_userdata(LuaMessage(msg.clone()))?),
                Value::Table(lua.create_table_from(pairs)?),
            ]))
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
    /// sample of names, the egress hooks for the pools those configs name,
    /// `should_enqueue_log_record` for each log hook, `get_listener_domain`
    /// for a sample domain, and any `validate_config` handlers: whatever
    /// would fail at run time fails here, naming file, line and key.
    pub async fn validate(&self) -> Result<InitConfig, PolicyError> {
        let init = self.run_init().await?;
        // (tenant, campaign, routing_domain) for the sample domain
        let samples = [
            (None, None, None),
            (Some("tenant"), Some("campaign"), None),
            (None, None, Some("routing.example.com")),
        ];
        let mut pools = std::collections::BTreeSet::new();
        for (tenant, campaign, routing) in samples {
            let config = self
                .get_queue_config(SAMPLE_DOMAIN, tenant, campaign, routing)
                .await
                .map_err(|e| event_error("get_queue_config", e))?;
            pools.insert(config.egress_pool.unwrap_or_else(|| "unspecified".into()));
        }
        for pool in pools {
            self.validate_egress(&pool).await?;
        }
        self.validate_log_hooks(&init).await?;
        // a listener domain for a sample domain, as a session would ask
        self.get_listener_domain("example.com", "0.0.0.0:25", &ConnMeta::default())
            .await
            .map_err(|e| PolicyError::Event {
                event: super::lua_listener_domain::EVENT.into(),
                message: e.to_string(),
            })?;
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

/// The recipient domain `--validate` asks the hooks about.
const SAMPLE_DOMAIN: &str = "example.com";
/// The site name `--validate` asks `get_egress_path_config` about, shaped
/// like one built from MX host names.
const SAMPLE_SITE: &str = "mx.example.com";

fn event_error(event: &str, e: EventError) -> PolicyError {
    PolicyError::Event {
        event: event.into(),
        message: e.to_string(),
    }
}

impl Policy {
    /// `get_egress_pool` for `pool`, `get_egress_source` for each of its
    /// sources, and `get_egress_path_config` from each source to a sample
    /// site, as the first delivery through that pool would ask.
    async fn validate_egress(&self, pool: &str) -> Result<(), PolicyError> {
        let pool = self
            .get_egress_pool(pool)
            .await
            .map_err(|e| event_error("get_egress_pool", e))?;
        for entry in &pool.entries {
            self.get_egress_source(&entry.name)
                .await
                .map_err(|e| event_error("get_egress_source", e))?;
            self.get_egress_path_config(SAMPLE_DOMAIN, &entry.name, SAMPLE_SITE)
                .await
                .map_err(|e| event_error("get_egress_path_config", e))?;
        }
        Ok(())
    }

    /// `should_enqueue_log_record` for each configured log hook, with a
    /// sample Delivery record made into a message as the hook would.
    async fn validate_log_hooks(&self, init: &InitConfig) -> Result<(), PolicyError> {
        for hook in &init.log_hooks {
            let record = serde_json::json!({
                "type": "Delivery",
                "id": "0123456789abcdef0123456789abcdef",
                "sender": "sender@example.net",
                "recipient": format!("recipient@{SAMPLE_DOMAIN}"),
                "queue": SAMPLE_DOMAIN,
                "site": format!("unspecified->{SAMPLE_SITE}@smtp_client"),
                "response": { "code": 250, "content": "OK", "command": null },
                "num_attempts": 0,
            });
            let mut meta = serde_json::Map::new();
            meta.insert("log_record".into(), record.clone());
            meta.insert(
                "reception_protocol".into(),
                crate::log::HOOK_RECEPTION_PROTOCOL.into(),
            );
            let msg = crate::message::Message::new(
                crate::message::MessageId::new(),
                "sender@example.net".into(),
                vec![format!("recipient@{SAMPLE_DOMAIN}")],
                meta,
                serde_json::to_vec(&record).unwrap_or_default(),
            );
            self.should_enqueue_log_record(&msg, &hook.name)
                .await
                .map_err(|e| event_error("should_enqueue_log_record", e))?;
        }
        Ok(())
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
