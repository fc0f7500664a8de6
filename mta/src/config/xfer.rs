//! `kumo.xfer.configure_client{...}` (Sluice's): how this node's xfer
//! client authenticates to the nodes it transfers messages to. A target
//! takes transfers from its trusted hosts, or from a client whose HTTP
//! Basic credentials its `http_server_validate_auth_basic` accepts: in a
//! fleet, the credentials every pod's admin API already shares.

use serde::Deserialize;
use sluice_common::duration;
use std::path::PathBuf;
use std::time::Duration;

/// `configure_client` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XferClientConfig {
    /// HTTP Basic user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself; prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (a mounted Secret), read at each send so
    /// a rotated Secret is picked up; trailing newline trimmed.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How long one transfer may take (default 60 s).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub timeout: Option<Duration>,
}

/// A client config that cannot be used, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XferConfigError {
    /// Both `password` and `password_file`.
    #[error("key 'password_file': give either password or password_file, not both")]
    TwoPasswords,
    /// A password without a user.
    #[error("key 'username': a password needs a username")]
    NoUser,
}

impl XferClientConfig {
    /// Check the keys go together.
    pub fn check(&self) -> Result<(), XferConfigError> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err(XferConfigError::TwoPasswords);
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            return Err(XferConfigError::NoUser);
        }
        Ok(())
    }

    /// The timeout, defaulted.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_do_not_go_together_name_the_key() {
        let parse = |j: &str| serde_json::from_str::<XferClientConfig>(j).unwrap();
        assert!(
            parse(r#"{"username":"u","password_file":"/p"}"#)
                .check()
                .is_ok()
        );
        let err = parse(r#"{"username":"u","password":"a","password_file":"/p"}"#)
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("password_file"), "{err}");
        let err = parse(r#"{"password":"a"}"#).check().unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");
        assert_eq!(parse("{}").timeout(), Duration::from_secs(60));
        assert!(serde_json::from_str::<XferClientConfig>(r#"{"user":"u"}"#).is_err());
    }
}
