//! The channel pools of `kumo.amqp.basic_publish`, per policy version.

use super::{AmqpError, CONNECT_TIMEOUT, connect};
use lapin::Channel;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use serde::Deserialize;
use sluice_common::duration;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A secret given inline, as `{ key_data = ... }`, or as a file to read
/// (a mounted Kubernetes Secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Secret {
    Inline(String),
    KeyData { key_data: String },
    Path { path: PathBuf },
}

impl Secret {
    fn read(&self) -> Result<String, AmqpError> {
        match self {
            Secret::Inline(s) | Secret::KeyData { key_data: s } => Ok(s.clone()),
            Secret::Path { path } => {
                crate::config::read_secret_file(path).map_err(|source| AmqpError::Password {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionParams {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) vhost: Option<String>,
    pub(super) heartbeat: Option<u16>,
    #[serde(default)]
    pub(super) enable_tls: bool,
    pub(super) root_ca_cert: Option<PathBuf>,
    pub(super) pool_size: Option<usize>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub(super) connect_timeout: Option<Duration>,
    /// Pool tuning of KumoMTA's deadpool; accepted so its policies load,
    /// unused by this pool (a dead channel is replaced on checkout).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    #[allow(dead_code)]
    pub(super) recycle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    #[allow(dead_code)]
    pub(super) wait_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub(super) publish_timeout: Option<Duration>,
}

/// `kumo.amqp.basic_publish{...}` parameters: the AMQP properties sit at
/// the top level beside the routing keys.
#[derive(Debug, Deserialize)]
pub(super) struct BasicPublishParams {
    pub(super) routing_key: String,
    #[serde(default)]
    pub(super) exchange: String,
    pub(super) connection: ConnectionParams,
    #[serde(default)]
    pub(super) mandatory: bool,
    #[serde(default)]
    pub(super) immediate: bool,
    #[serde(flatten)]
    pub(super) properties: serde_json::Map<String, serde_json::Value>,
}

/// Channels to one broker, reused across `basic_publish` calls.
pub(super) struct Pool {
    pub(super) uri: AMQPUri,
    pub(super) root_ca: Option<String>,
    pub(super) size: usize,
    pub(super) connect_timeout: Duration,
    pub(super) idle: parking_lot::Mutex<Vec<Channel>>,
}

impl Pool {
    pub(super) async fn checkout(&self) -> Result<Channel, AmqpError> {
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

    pub(super) fn give_back(&self, ch: Channel) {
        let mut idle = self.idle.lock();
        if ch.status().connected() && idle.len() < self.size {
            idle.push(ch);
        }
    }
}

/// Which broker, as whom: everything that makes a pool but the password,
/// so no secret is ever a key or in a log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub(super) tls: bool,
    pub(super) username: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) vhost: String,
    pub(super) heartbeat: Option<u16>,
    pub(super) root_ca: Option<PathBuf>,
}

/// The `basic_publish` pools of one policy version: made as its Lua
/// states publish, dropped (their connections closed) with the version
/// when a reload replaces it. A pool whose password changed (a rotated
/// Secret file) is replaced at its next use.
#[derive(Default)]
pub struct Pools {
    pub(super) by_key: parking_lot::Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    pub(super) fn pool_for(&self, c: &ConnectionParams) -> Result<Arc<Pool>, AmqpError> {
        let password = match &c.password {
            Some(s) => s.read()?,
            None => "guest".into(),
        };
        let key = PoolKey {
            tls: c.enable_tls,
            username: c.username.clone().unwrap_or_else(|| "guest".into()),
            host: c.host.clone(),
            port: c.port.unwrap_or(if c.enable_tls { 5671 } else { 5672 }),
            vhost: c.vhost.clone().unwrap_or_else(|| "/".into()),
            heartbeat: c.heartbeat,
            root_ca: c.root_ca_cert.clone(),
        };
        if let Some(pool) = self.by_key.lock().get(&key)
            && pool.uri.authority.userinfo.password == password
        {
            return Ok(pool.clone());
        }
        let root_ca = match &c.root_ca_cert {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| AmqpError::RootCa {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let uri = AMQPUri {
            scheme: if key.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: key.username.clone(),
                    password,
                },
                host: key.host.clone(),
                port: key.port,
            },
            vhost: key.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: key.heartbeat,
                ..Default::default()
            },
        };
        let pool = Arc::new(Pool {
            uri,
            root_ca,
            size: c
                .pool_size
                .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get())),
            connect_timeout: c.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
            idle: Default::default(),
        });
        // a new password replaces the pool; the old one's channels close
        self.by_key.lock().insert(key, pool.clone());
        Ok(pool)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::amqp::redacted;

    fn params(password_file: &std::path::Path) -> ConnectionParams {
        ConnectionParams {
            host: "broker.example".into(),
            port: None,
            username: Some("mta".into()),
            password: Some(Secret::Path {
                path: password_file.to_path_buf(),
            }),
            vhost: None,
            heartbeat: None,
            enable_tls: false,
            root_ca_cert: None,
            pool_size: Some(2),
            connect_timeout: None,
            recycle_timeout: None,
            wait_timeout: None,
            publish_timeout: None,
        }
    }

    #[test]
    fn pools_are_keyed_without_the_password_and_replaced_when_it_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "first\n").unwrap();
        let pools = Pools::default();
        let a = pools.pool_for(&params(&file)).unwrap();
        let again = pools.pool_for(&params(&file)).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "the same broker shares one pool");
        let key = format!("{:?}", pools.by_key.lock().keys().next().unwrap());
        assert!(!key.contains("first"), "no password in the key: {key}");
        std::fs::write(&file, "second").unwrap();
        let b = pools.pool_for(&params(&file)).unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "a rotated password gets a new pool");
        assert_eq!(b.uri.authority.userinfo.password, "second");
        assert_eq!(pools.len(), 1, "the old pool is gone, not leaked");
        assert!(!redacted(&b.uri).contains("second"));
    }

    #[test]
    fn an_unreadable_password_file_is_named() {
        let pools = Pools::default();
        let e = pools
            .pool_for(&params(std::path::Path::new("/nonexistent/amqp-password")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/amqp-password"), "{e}");
    }
}
