//! One setting of a path config replaced for a while: shaping automation's
//! `SetConfig{name, value}` (a provider asked for fewer connections or a
//! slower rate). The setting is read as `make_egress_path` reads it, so a
//! rule naming a key paths do not have, or a value of the wrong kind, is
//! refused when the rules load rather than when a provider complains.

use super::EgressPathConfig;
use serde_json::Value;

/// A setting a path config cannot take.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// Secrets are not for automation to set (and are not in the dump the
    /// override is made from).
    #[error("{0} cannot be set by automation")]
    Secret(String),
    /// Not a key of `make_egress_path`, or a value it does not read.
    #[error("{name} = {value}: {source}")]
    Invalid {
        /// The setting.
        name: String,
        /// The value asked for.
        value: Value,
        /// What `make_egress_path` would say.
        source: serde_json::Error,
    },
}

impl EgressPathConfig {
    /// This config with `name` set to `value`.
    pub fn with_setting(&self, name: &str, value: &Value) -> Result<Self, SettingError> {
        if name == "smtp_auth_plain_password" {
            return Err(SettingError::Secret(name.to_string()));
        }
        let invalid = |source| SettingError::Invalid {
            name: name.to_string(),
            value: value.clone(),
            source,
        };
        let mut dump = serde_json::to_value(self).map_err(invalid)?;
        let Value::Object(map) = &mut dump else {
            unreachable!("a path config serialises as a map")
        };
        map.remove("smtp_auth_plain_password");
        map.insert(name.to_string(), value.clone());
        let mut out: EgressPathConfig = serde_json::from_value(dump).map_err(invalid)?;
        // the secret is not in the dump: carry it over as it is
        out.smtp_auth_plain_password = self.smtp_auth_plain_password.clone();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_setting_replaces_one_key_and_keeps_the_rest() {
        let base: EgressPathConfig = serde_json::from_value(json!({
            "connection_limit": 10,
            "max_message_rate": "100/s",
            "idle_timeout": "5s",
            "enable_tls": "Required",
            "smtp_auth_plain_username": "u",
            "smtp_auth_plain_password": {"key_data": "secret"},
            "additional_message_rate_throttles": {"a": "5/m"},
        }))
        .unwrap();
        // every other setting survives the round trip
        assert_eq!(
            base.with_setting("idle_timeout", &json!("5s")).unwrap(),
            base
        );
        let slow = base
            .with_setting("max_message_rate", &json!("1/minute"))
            .unwrap();
        assert_eq!(slow.max_message_rate.unwrap().to_string(), "1/m");
        assert_eq!(
            EgressPathConfig {
                max_message_rate: base.max_message_rate,
                ..slow.clone()
            },
            base
        );
        let one = base.with_setting("connection_limit", &json!(1)).unwrap();
        assert_eq!(one.connection_limit.limit, 1);
    }

    #[test]
    fn an_unknown_key_a_bad_value_or_a_secret_is_refused() {
        let base = EgressPathConfig::default();
        let e = base.with_setting("max_connections", &json!(1)).unwrap_err();
        assert!(
            e.to_string().contains("unknown field `max_connections`"),
            "{e}"
        );
        let e = base
            .with_setting("max_message_rate", &json!("fast"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("max_message_rate = \"fast\": "),
            "{e}"
        );
        let e = base
            .with_setting("smtp_auth_plain_password", &json!("x"))
            .unwrap_err();
        assert!(matches!(e, SettingError::Secret(_)));
    }
}
