//! `kumo.configure_redis_throttles{...}`: where the fleet's shared throttles
//! and connection leases live. The keys are KumoMTA's (those of
//! `redis.open`); `password_file`, `tls_ca_file`, `fleet_size` and
//! `lease_ttl` are Sluice's, for Kubernetes (a mounted Secret, a private
//! CA, the replica count the operator renders) and for failure behaviour.

use serde::Deserialize;
use sluice_common::duration;
use std::path::PathBuf;
use std::time::Duration;

/// The Redis node, or the cluster's seed nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NodeSpec {
    /// One URL: `redis://host:port/`, `rediss://` for TLS.
    Single(String),
    /// Seed URLs of a Redis Cluster.
    Cluster(Vec<String>),
}

/// `configure_redis_throttles` as given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisThrottleConfig {
    /// The node URL, or a list of cluster seed URLs.
    pub node: NodeSpec,
    /// Treat a single URL as a cluster seed (a list always is one).
    #[serde(default)]
    pub cluster: Option<bool>,
    /// Accepted for KumoMTA compatibility; throttles write, so every
    /// command goes to a primary.
    #[serde(default)]
    pub read_from_replicas: bool,
    /// ACL user name (Redis 6+).
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself; prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (a mounted Secret); read at start-up,
    /// trailing newline trimmed.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The CA certificates (PEM) a `rediss://` server's certificate must
    /// chain to, instead of the system's roots: the private CA of an
    /// in-cluster Redis, mounted from a Secret or ConfigMap.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Connections to open; each pipelines every concurrent command.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// How long connecting may take.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub connect_timeout: Option<Duration>,
    /// Accepted for KumoMTA compatibility (its pool's recycling).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub recycle_timeout: Option<Duration>,
    /// Accepted for KumoMTA compatibility (its pool's checkout wait).
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub wait_timeout: Option<Duration>,
    /// How long a command may take before Redis counts as down.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub response_timeout: Option<Duration>,
    /// How many nodes share this Redis, at least. While Redis cannot be
    /// reached each node enforces its share (limit / nodes) of every shared
    /// limit, so the fleet never exceeds it; the nodes are the larger of
    /// this and those that last announced themselves in Redis (each does
    /// every second). Default 1: the count in Redis alone.
    #[serde(default)]
    pub fleet_size: Option<u32>,
    /// How long a connection lease lasts unrenewed: a node that dies gives
    /// its connections back within it.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub lease_ttl: Option<Duration>,
}

/// What a config's values mean, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Node URLs (one unless a cluster).
    pub nodes: Vec<String>,
    /// Cluster mode.
    pub cluster: bool,
    /// ACL user.
    pub username: Option<String>,
    /// Where the password comes from.
    pub password: Option<Password>,
    /// The private CA for `rediss://`, if not the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Connections (at least 1).
    pub pool_size: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Command timeout.
    pub response_timeout: Duration,
    /// Nodes sharing the limits (at least 1).
    pub fleet_size: u32,
    /// Lease lifetime unrenewed.
    pub lease_ttl: Duration,
}

/// The password, or the file it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Given in the policy.
    Inline(String),
    /// Read from this file at start-up.
    File(PathBuf),
}

/// A config that cannot be used, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisConfigError {
    /// Both `password` and `password_file`.
    #[error("key 'password_file': give either password or password_file, not both")]
    TwoPasswords,
    /// A node that is not a redis URL.
    #[error("key 'node': {0:?} is not a redis://, rediss:// or unix:// URL")]
    Url(String),
    /// No nodes.
    #[error("key 'node': no node given")]
    NoNode,
    /// A zero that must be positive.
    #[error("key '{0}': must be at least 1")]
    Zero(&'static str),
    /// A lease too short to renew.
    #[error("key 'lease_ttl': must be at least 3 seconds, to be renewed in time")]
    LeaseTtl,
    /// A CA file given for a URL that is not `rediss://`.
    #[error("key 'tls_ca_file': {0:?} is not a rediss:// URL; TLS needs rediss://")]
    CaWithoutTls(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("key 'tls_ca_file': {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The password file cannot be read.
    #[error("key 'password_file': cannot read {path}: {reason}")]
    PasswordFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl RedisThrottleConfig {
    /// Check the values and apply the defaults.
    pub fn settings(&self) -> Result<RedisSettings, RedisConfigError> {
        let nodes = match &self.node {
            NodeSpec::Single(n) => vec![n.clone()],
            NodeSpec::Cluster(list) => list.clone(),
        };
        if nodes.is_empty() {
            return Err(RedisConfigError::NoNode);
        }
        for n in &nodes {
            if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|p| n.starts_with(p))
            {
                return Err(RedisConfigError::Url(n.clone()));
            }
        }
        if let Some(n) = nodes
            .iter()
            .find(|n| self.tls_ca_file.is_some() && !n.starts_with("rediss://"))
        {
            return Err(RedisConfigError::CaWithoutTls(n.clone()));
        }
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => return Err(RedisConfigError::TwoPasswords),
            (Some(p), None) => Some(Password::Inline(p.clone())),
            (None, Some(f)) => Some(Password::File(f.clone())),
            (None, None) => None,
        };
        let positive = |v: Option<u32>, key, default| match v {
            Some(0) => Err(RedisConfigError::Zero(key)),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let lease_ttl = self.lease_ttl.unwrap_or(Duration::from_secs(30));
        if lease_ttl < Duration::from_secs(3) {
            return Err(RedisConfigError::LeaseTtl);
        }
        Ok(RedisSettings {
            cluster: self
                .cluster
                .unwrap_or(matches!(self.node, NodeSpec::Cluster(_))),
            nodes,
            username: self.username.clone(),
            password,
            tls_ca_file: self.tls_ca_file.clone(),
            pool_size: positive(self.pool_size, "pool_size", 2)? as usize,
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            response_timeout: self.response_timeout.unwrap_or(Duration::from_millis(500)),
            fleet_size: positive(self.fleet_size, "fleet_size", 1)?,
            lease_ttl,
        })
    }
}

impl RedisSettings {
    /// The CA file's PEM text, checked to hold a certificate, if one is
    /// configured; read at start-up like the password.
    pub fn read_ca(&self) -> Result<Option<Vec<u8>>, RedisConfigError> {
        let Some(path) = &self.tls_ca_file else {
            return Ok(None);
        };
        let fail = |reason: String| RedisConfigError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(fail("holds no PEM certificate".into()));
        }
        Ok(Some(pem))
    }
}

impl Password {
    /// The password, read from its file if it has one.
    pub fn read(&self) -> Result<String, RedisConfigError> {
        match self {
            Password::Inline(p) => Ok(p.clone()),
            Password::File(path) => {
                super::read_secret_file(path).map_err(|e| RedisConfigError::PasswordFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> RedisThrottleConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_url_alone_takes_the_defaults() {
        let s = parse(r#"{"node":"redis://127.0.0.1:6379/"}"#)
            .settings()
            .unwrap();
        assert_eq!(s.nodes, ["redis://127.0.0.1:6379/"]);
        assert!(!s.cluster);
        assert_eq!((s.fleet_size, s.pool_size), (1, 2));
        assert_eq!(s.lease_ttl, Duration::from_secs(30));
        assert_eq!(s.password, None);
    }

    #[test]
    fn a_list_is_a_cluster_and_durations_are_spelled_out() {
        let s = parse(
            r#"{"node":["redis://a:7000","redis://b:7000"],"response_timeout":"2 seconds",
                "fleet_size":3,"lease_ttl":"10s","password_file":"/run/secrets/redis"}"#,
        )
        .settings()
        .unwrap();
        assert!(s.cluster);
        assert_eq!(s.response_timeout, Duration::from_secs(2));
        assert_eq!(s.fleet_size, 3);
        assert_eq!(
            s.password,
            Some(Password::File("/run/secrets/redis".into()))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (r#"{"node":"http://x"}"#, "key 'node'"),
            (r#"{"node":[]}"#, "key 'node'"),
            (r#"{"node":"redis://x","fleet_size":0}"#, "key 'fleet_size'"),
            (
                r#"{"node":"redis://x","lease_ttl":"1s"}"#,
                "key 'lease_ttl'",
            ),
            (
                r#"{"node":"redis://x","password":"a","password_file":"/f"}"#,
                "key 'password_file'",
            ),
            (
                r#"{"node":"redis://x","tls_ca_file":"/ca.pem"}"#,
                "key 'tls_ca_file'",
            ),
        ];
        for (json, key) in cases {
            let err = parse(json).settings().unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
        let err = serde_json::from_str::<RedisThrottleConfig>(r#"{"node":"redis://x","nod":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nod"), "{err}");
    }

    #[test]
    fn a_password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(Password::File(f).read().unwrap(), "s3cret");
        let err = Password::File(dir.path().join("missing"))
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let json = format!(r#"{{"node":"rediss://r:6380/","tls_ca_file":{:?}}}"#, f);
        let s = parse(&json).settings().unwrap();
        let err = s.read_ca().unwrap_err().to_string();
        assert!(
            err.contains("key 'tls_ca_file'") && err.contains("no PEM"),
            "{err}"
        );
        std::fs::write(
            &f,
            "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(s.read_ca().unwrap().is_some());
        assert_eq!(
            parse(r#"{"node":"rediss://r"}"#)
                .settings()
                .unwrap()
                .read_ca()
                .unwrap(),
            None
        );
    }
}
