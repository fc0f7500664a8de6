//! The message and connection-meta objects handed to Lua handlers (§9.2–9.3).

use super::located_error;
use crate::message::MessageRef;
use crate::message::headers;
use mlua::{Lua, LuaSerdeExt, UserData, UserDataMethods, Value};
use parking_lot::Mutex;
use serde_json::Map;
use std::sync::Arc;

/// Connection meta shared between a session and the policy.
#[derive(Clone, Default, Debug)]
pub struct ConnMeta(pub Arc<Mutex<Map<String, serde_json::Value>>>);

impl ConnMeta {
    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .get(key)
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Set `key` to `value`.
    pub fn set(&self, key: &str, value: serde_json::Value) {
        self.0.lock().insert(key.to_string(), value);
    }

    /// A copy of every key and value as they are now.
    pub fn snapshot(&self) -> Map<String, serde_json::Value> {
        self.0.lock().clone()
    }
}

fn to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    lua.to_value_with(
        v,
        mlua::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false),
    )
}

/// The connection meta as Lua sees it, with `get_meta` and `set_meta`.
pub struct LuaConnMeta(pub ConnMeta);

impl UserData for LuaConnMeta {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get_meta", |lua, this, key: String| {
            match this.0.0.lock().get(&key) {
                Some(v) => to_lua(lua, v),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method("set_meta", |lua, this, (key, value): (String, Value)| {
            let v: serde_json::Value = lua.from_value(value)?;
            this.0.0.lock().insert(key, v);
            Ok(())
        });
    }
}

/// The message as Lua handlers see it: envelope, meta, headers, body and
/// scheduling; the body is read from the spool when first needed.
pub struct LuaMessage(pub MessageRef);

impl LuaMessage {
    fn data(&self, lua: &Lua) -> mlua::Result<Arc<Vec<u8>>> {
        if let Some(data) = self.0.data() {
            return Ok(data);
        }
        let spool = lua
            .app_data_ref::<Arc<crate::spool::Spool>>()
            .map(|s| s.clone())
            .ok_or_else(|| located_error(lua, "message body is not loaded"))?;
        let data = spool
            .read_data(self.0.id)
            .map_err(|e| located_error(lua, format!("reading message body: {e}")))?;
        self.0.set_data(data);
        Ok(self.0.data().expect("just set"))
    }

    fn edit_data(&self, lua: &Lua, f: impl FnOnce(&[u8]) -> Vec<u8>) -> mlua::Result<()> {
        let data = self.data(lua)?;
        self.0.set_data(f(&data));
        Ok(())
    }
}

impl UserData for LuaMessage {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("id", |_, this, ()| Ok(this.0.id.to_string()));
        methods.add_method("sender", |_, this, ()| Ok(this.0.sender()));
        methods.add_method("set_sender", |_, this, sender: String| {
            this.0.state().sender = sender;
            Ok(())
        });
        methods.add_method("recipient", |lua, this, ()| {
            let rcpts = this.0.recipients();
            match rcpts.as_slice() {
                [one] => Ok(Value::String(lua.create_string(one)?)),
                many => Ok(Value::Table(
                    lua.create_sequence_from(many.iter().cloned())?,
                )),
            }
        });
        methods.add_method("recipient_list", |lua, this, ()| {
            lua.create_sequence_from(this.0.recipients())
        });
        methods.add_method("get_meta", |lua, this, key: String| {
            match this.0.state().meta.get(&key) {
                Some(v) => to_lua(lua, v),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method("set_meta", |lua, this, (key, value): (String, Value)| {
            let v: serde_json::Value = lua.from_value(value)?;
            this.0.set_meta(&key, v);
            Ok(())
        });
        methods.add_method("num_attempts", |_, this, ()| Ok(this.0.num_attempts()));
        methods.add_method("queue_name", |lua, this, ()| {
            crate::message::name::queue_name(&this.0).map_err(|e| located_error(lua, e))
        });
        // The seed page for requeue_message calls it `get_queue_name`.
        methods.add_method("get_queue_name", |lua, this, ()| {
            crate::message::name::queue_name(&this.0).map_err(|e| located_error(lua, e))
        });
        methods.add_method("get_data", |lua, this, ()| {
            lua.create_string(this.data(lua)?.as_slice())
        });
        methods.add_method("set_data", |_, this, data: mlua::String| {
            this.0.set_data(data.as_bytes().to_vec());
            Ok(())
        });
        methods.add_method("get_first_named_header_value", |lua, this, name: String| {
            Ok(headers::first_named_header_value(&this.data(lua)?, &name))
        });
        methods.add_method("get_all_headers", |lua, this, ()| {
            let data = this.data(lua)?;
            let block = headers::header_block(&data);
            let list = lua.create_table()?;
            for (name, value) in headers::iter_headers(&block) {
                list.raw_push(lua.create_sequence_from([name.to_string(), value])?)?;
            }
            Ok(list)
        });
        methods.add_method(
            "prepend_header",
            |lua, this, (name, value): (String, String)| {
                this.edit_data(lua, |d| headers::prepend_header(d, &name, &value))
            },
        );
        methods.add_method(
            "append_header",
            |lua, this, (name, value): (String, String)| {
                this.edit_data(lua, |d| headers::append_header(d, &name, &value))
            },
        );

        methods.add_method("set_scheduling", |lua, this, params: Value| {
            use crate::message::schedule::{Scheduling, SchedulingInput};
            if params.is_nil() {
                this.0.state().schedule = None;
                return Ok(Value::Nil);
            }
            let input: SchedulingInput = super::kumo::from_table(lua, "set_scheduling", params)?;
            let sched = Scheduling::try_from(input)
                .map_err(|e| located_error(lua, format!("set_scheduling: {e}")))?;
            let normalised = serde_json::to_value(&sched).map_err(mlua::Error::external)?;
            this.0.state().schedule = Some(sched);
            to_lua(lua, &normalised)
        });
        methods.add_method("remove_all_named_headers", |lua, this, name: String| {
            this.edit_data(lua, |d| headers::remove_all_named_headers(d, &name))
        });
        methods.add_method(
            "dkim_sign",
            |lua, this, signer: mlua::UserDataRef<super::lua_dkim::LuaSigner>| {
                let data = this.data(lua)?;
                let header = signer.0.sign(&data).map_err(|e| located_error(lua, e))?;
                let mut signed = Vec::with_capacity(header.len() + data.len());
                signed.extend_from_slice(&header);
                signed.extend_from_slice(&data);
                this.0.set_data(signed);
                Ok(())
            },
        );
        methods.add_method("from_header", |lua, this, ()| {
            Ok(AddressHeader::parse(&this.data(lua)?, "From"))
        });
        methods.add_method("to_header", |lua, this, ()| {
            Ok(AddressHeader::parse(&this.data(lua)?, "To"))
        });
        methods.add_method("get_address_header", |lua, this, name: String| {
            Ok(AddressHeader::parse(&this.data(lua)?, &name))
        });
    }
}

/// KumoMTA's addressheader: the mailboxes of an address header (From,
/// To, ...). `domain`, `user`, `email` and `name` need a single mailbox;
/// `list` has them all.
pub struct AddressHeader(Vec<Mailbox>);

/// One mailbox of an address header.
#[derive(Clone)]
struct Mailbox {
    name: Option<String>,
    email: String,
}

impl AddressHeader {
    /// The header `name` of `data` as mailboxes; `None` without one.
    fn parse(data: &[u8], name: &str) -> Option<AddressHeader> {
        let block = &data[..headers::header_block_len(data)];
        let message = mail_parser::MessageParser::new().parse_headers(block)?;
        let value = message.header(name)?.as_address()?;
        let list: Vec<Mailbox> = value
            .iter()
            .filter_map(|a| {
                Some(Mailbox {
                    name: a.name.as_deref().map(str::to_string),
                    email: a.address.as_deref()?.to_string(),
                })
            })
            .collect();
        (!list.is_empty()).then_some(AddressHeader(list))
    }

    fn single(&self, lua: &Lua, field: &str) -> mlua::Result<&Mailbox> {
        match self.0.as_slice() {
            [one] => Ok(one),
            many => Err(located_error(
                lua,
                format!(
                    "addressheader.{field}: the header has {} addresses, not one",
                    many.len()
                ),
            )),
        }
    }
}

impl Mailbox {
    fn user(&self) -> &str {
        self.email.rsplit_once('@').map_or(&self.email, |(u, _)| u)
    }

    fn domain(&self) -> &str {
        self.email.rsplit_once('@').map_or("", |(_, d)| d)
    }

    fn to_table(&self, lua: &Lua) -> mlua::Result<mlua::Table> {
        let t = lua.create_table()?;
        t.set("name", self.name.clone())?;
        t.set("address", self.email.clone())?;
        t.set("email", self.email.clone())?;
        t.set("user", self.user())?;
        t.set("domain", self.domain())?;
        Ok(t)
    }
}

impl UserData for AddressHeader {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("domain", |lua, this| {
            Ok(this.single(lua, "domain")?.domain().to_string())
        });
        fields.add_field_method_get("user", |lua, this| {
            Ok(this.single(lua, "user")?.user().to_string())
        });
        fields.add_field_method_get("email", |lua, this| {
            Ok(this.single(lua, "email")?.email.clone())
        });
        fields.add_field_method_get("name", |lua, this| {
            Ok(this.single(lua, "name")?.name.clone())
        });
        fields.add_field_method_get("list", |lua, this| {
            let list = lua.create_table()?;
            for m in &this.0 {
                list.raw_push(m.to_table(lua)?)?;
            }
            Ok(list)
        });
    }
}
