//! Every key of KumoMTA's config constructors (`make_egress_path`,
//! `start_esmtp_listener`, ...) and what Sluice does with it, from
//! `keys.toml`. A KumoMTA policy sets keys that cannot apply here (OpenSSL
//! cipher lists, RocksDB tuning) and keys Sluice has not built yet; before
//! this table such a key failed the typed config, and a handler that set one
//! failed every delivery it was asked about. Now a key that cannot apply is
//! accepted and logged once as ignored, a key not built yet is accepted when
//! its value asks for what Sluice does anyway and refused otherwise (never a
//! silent downgrade of what the policy asked for), and a key KumoMTA does not
//! have is still an error, from the typed config.

use super::located_error;
use mlua::{Lua, LuaSerdeExt, Table, Value};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::LazyLock;

#[cfg(test)]
mod tests;

/// What Sluice does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The typed config reads it, with KumoMTA's meaning.
    Implemented,
    /// Accepted and logged once: it cannot apply to Sluice.
    Ignored,
    /// Not built yet: values in `accepts` are accepted, others refused.
    Pending,
}

/// The shape a set-aside key's value must have, so that a malformed value
/// is an error even for a key Sluice does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `true` or `false`.
    Bool,
    /// A string.
    String,
    /// A list of strings.
    Strings,
    /// Seconds, or a humantime string.
    Duration,
    /// A table.
    Table,
    /// A number.
    Number,
    /// Anything (a KeySource, for instance).
    Any,
}

/// One row of `keys.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// The constructor, e.g. `make_egress_path`.
    #[serde(rename = "fn")]
    pub constructor: String,
    /// The key, as KumoMTA spells it.
    pub key: String,
    /// What Sluice does with it.
    pub status: Status,
    /// The typed config parses the key (and so checks its value) although
    /// it does not act on it.
    #[serde(default)]
    pub typed: bool,
    /// For keys the typed config does not parse: the value's shape.
    #[serde(default, rename = "type")]
    pub shape: Option<Shape>,
    /// For pending keys: the values accepted (none given: any value).
    #[serde(default)]
    pub accepts: Option<Vec<serde_json::Value>>,
    /// Why the key is ignored or not built.
    #[serde(default)]
    pub reason: Option<String>,
    /// A Lua value the `kumo_keys` test sets the key to.
    pub example: String,
    /// The integration test (`tests/tests/<name>.rs`) showing what the key does.
    #[serde(default)]
    pub test: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    key: Vec<Key>,
}

static KEYS: LazyLock<Vec<Key>> = LazyLock::new(|| {
    toml::from_str::<File>(include_str!("keys.toml"))
        .expect("keys.toml parses (checked by its unit test)")
        .key
});

/// Every row of the table, in file order.
pub fn keys() -> &'static [Key] {
    &KEYS
}

/// Keys already logged, so each is logged once per process.
static LOGGED: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Default::default);

/// Check the keys of a constructor's table that the typed config does not
/// read, log the accepted ones once, refuse what Sluice cannot do, and
/// return the table the typed config should see. `what` is the constructor
/// name, possibly followed by where in it (`start_esmtp_listener via[...]`).
pub fn screen(lua: &Lua, what: &str, value: Value) -> mlua::Result<Value> {
    let Value::Table(table) = &value else {
        return Ok(value);
    };
    let constructor = what.split_whitespace().next().unwrap_or(what);
    let mut set_aside = vec![];
    for row in keys()
        .iter()
        .filter(|k| k.constructor == constructor && k.status != Status::Implemented)
    {
        let v: Value = table.raw_get(row.key.as_str())?;
        if v.is_nil() {
            continue;
        }
        if let Some(shape) = row.shape {
            check_shape(shape, &v)
                .map_err(|e| located_error(lua, format!("{what}: key '{}': {e}", row.key)))?;
        }
        let reason = row.reason.as_deref().unwrap_or("");
        if row.status == Status::Pending {
            let json: serde_json::Value = lua.from_value(v.clone()).unwrap_or_default();
            if let Some(accepts) = &row.accepts
                && !accepts.iter().any(|a| same(a, &json))
            {
                return Err(located_error(
                    lua,
                    format!(
                        "{what}: key '{}' = {json} is not supported by Sluice yet: {reason}",
                        row.key
                    ),
                ));
            }
            log_once(constructor, &row.key, || {
                tracing::warn!("{what}: key '{}' = {json} accepted, but {reason}", row.key)
            });
        } else {
            log_once(constructor, &row.key, || {
                tracing::info!("{what}: key '{}' accepted and ignored: {reason}", row.key)
            });
        }
        if !row.typed {
            set_aside.push(row.key.as_str());
        }
    }
    if set_aside.is_empty() {
        return Ok(value);
    }
    let copy = lua.create_table()?;
    for pair in table.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let named = k
            .as_string()
            .and_then(|s| s.to_str().ok().map(|s| s.to_owned()));
        if !named.is_some_and(|n| set_aside.contains(&n.as_str())) {
            copy.raw_set(k, v)?;
        }
    }
    copy.set_metatable(table.metatable())?;
    Ok(Value::Table(copy))
}

fn log_once(constructor: &str, key: &str, log: impl FnOnce()) {
    if LOGGED
        .lock()
        .insert((constructor.to_owned(), key.to_owned()))
    {
        log();
    }
}

/// Values equal as KumoMTA would read them: Lua has one empty table for
/// both an empty list and an empty map.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let empty = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    };
    a == b || (empty(a) && empty(b))
}

/// A key's value is not of the shape KumoMTA gives that key.
#[derive(Debug, thiserror::Error)]
#[error("expected {expected}, not {found}")]
struct ShapeMismatch {
    expected: &'static str,
    found: String,
}

fn check_shape(shape: Shape, v: &Value) -> Result<(), ShapeMismatch> {
    let ok = match shape {
        Shape::Any => true,
        Shape::Bool => v.is_boolean(),
        Shape::String => v.is_string(),
        Shape::Number => v.is_number() || v.is_integer(),
        Shape::Table => v.is_table(),
        Shape::Strings => v.as_table().is_some_and(all_strings),
        Shape::Duration => match v {
            Value::Integer(_) | Value::Number(_) => true,
            Value::String(s) => s
                .to_str()
                .is_ok_and(|s| sluice_common::duration::parse_duration(&s).is_ok()),
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(ShapeMismatch {
            expected: shape.describe(),
            found: describe_value(v),
        })
    }
}

fn all_strings(t: &Table) -> bool {
    t.clone()
        .pairs::<Value, Value>()
        .all(|p| p.is_ok_and(|(k, v)| k.is_integer() && v.is_string()))
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
        other => format!("a {}", other.type_name()),
    }
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Bool => "a boolean",
            Shape::String => "a string",
            Shape::Strings => "a list of strings",
            Shape::Duration => "a duration (seconds, or a string such as '5m')",
            Shape::Table => "a table",
            Shape::Number => "a number",
            Shape::Any => "any value",
        }
    }
}
