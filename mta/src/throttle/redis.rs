//! The fleet's throttles in Redis: GCRA run atomically by the server (the
//! `CL.THROTTLE` command of redis-cell when loaded, else a script with the
//! same arithmetic, by EVALSHA), on the server's clock so nodes' clocks do
//! not matter; connection leases as sorted-set members that expire unless
//! renewed. Connections are multiplexed: every concurrent command of a node
//! shares `pool_size` sockets, pipelined.

use crate::config::redis::{RedisConfigError, RedisSettings};
use redis::aio::ConnectionManager;
use redis::{IntoConnectionInfo, Script, Value};
use sluice_common::ThrottleSpec;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// No answer within `response_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The client or the server failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The password could not be had.
    #[error(transparent)]
    Config(#[from] RedisConfigError),
}

/// GCRA for `n` units: how many pass now and, for the rest, the wait in µs.
/// ARGV: emission interval and tolerance in µs, units wanted.
const GCRA: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local k = math.floor((now + tau - tat) / t)
if k > n then k = n end
if k < 0 then k = 0 end
if k > 0 then
  tat = tat + k * t
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local wait = 0
if k < n then wait = tat + t - tau - now end
return {k, math.ceil(wait)}
";

/// A lease if fewer than ARGV[1] unexpired ones are held. ARGV: limit, TTL
/// in ms, member.
const ACQUIRE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

/// Extend an unexpired lease; 0 when it is gone. ARGV: TTL in ms, member.
const RENEW: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local until_ms = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]))
if until_ms and until_ms > now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
  return 1
end
return 0
";

/// Register this node as alive for ARGV[2] ms; how many nodes are. ARGV:
/// node name, TTL in ms.
const HEARTBEAT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// Where the nodes sharing this Redis announce themselves.
const NODES_KEY: &str = "sluice.fleet.nodes";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn invoke(&mut self, s: &redis::ScriptInvocation<'_>) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => s.invoke_async(c).await,
            Conn::Cluster(c) => s.invoke_async(c).await,
        }
    }
}

/// The connections to Redis and what the server can do.
pub struct RedisStore {
    settings: RedisSettings,
    conns: parking_lot::RwLock<Vec<Conn>>,
    next: AtomicUsize,
    cell: AtomicBool,
    gcra: Script,
    acquire: Script,
    renew: Script,
    heartbeat: Script,
}

impl RedisStore {
    /// A store that connects on [`RedisStore::connect`].
    pub fn new(settings: RedisSettings) -> RedisStore {
        RedisStore {
            settings,
            conns: parking_lot::RwLock::new(vec![]),
            next: AtomicUsize::new(0),
            cell: AtomicBool::new(false),
            gcra: Script::new(GCRA),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            heartbeat: Script::new(HEARTBEAT),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Whether `CL.THROTTLE` (redis-cell) does the rate checks.
    pub fn uses_cell(&self) -> bool {
        self.cell.load(Ordering::Relaxed)
    }

    /// Open the connections (replacing any) and learn whether redis-cell is
    /// loaded.
    pub async fn connect(&self) -> Result<(), RedisError> {
        let s = &self.settings;
        let password = s.password.as_ref().map(|p| p.read()).transpose()?;
        let certs = s.read_ca()?.map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        let mut conns = vec![];
        if s.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(s.nodes.clone())
                .connection_timeout(s.connect_timeout)
                .response_timeout(s.response_timeout);
            if let Some(u) = &s.username {
                b = b.username(u);
            }
            if let Some(p) = &password {
                b = b.password(p);
            }
            if let Some(c) = certs {
                b = b.certs(c);
            }
            conns.push(Conn::Cluster(b.build()?.get_async_connection().await?));
        } else {
            let mut info = s.nodes[0].as_str().into_connection_info()?;
            let mut r = info.redis_settings().clone();
            if let Some(u) = &s.username {
                r = r.set_username(u);
            }
            if let Some(p) = &password {
                r = r.set_password(p);
            }
            info = info.set_redis_settings(r);
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(info, c)?,
                None => redis::Client::open(info)?,
            };
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(s.connect_timeout))
                .set_response_timeout(Some(s.response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            for _ in 0..s.pool_size {
                let c = client.get_connection_manager_with_config(config.clone());
                conns.push(Conn::Single(self.timed(c).await??));
            }
        }
        let mut probe = conns[0].clone();
        let info = self
            .timed(probe.query(redis::cmd("COMMAND").arg("INFO").arg("CL.THROTTLE")))
            .await??;
        let cell = matches!(&info, Value::Array(v) if v.first().is_some_and(|c| *c != Value::Nil));
        self.cell.store(cell, Ordering::Relaxed);
        *self.conns.write() = conns;
        Ok(())
    }

    fn conn(&self) -> Result<Conn, RedisError> {
        let conns = self.conns.read();
        if conns.is_empty() {
            return Err(RedisError::NotConnected);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Ok(conns[i].clone())
    }

    async fn timed<T>(&self, f: impl Future<Output = T>) -> Result<T, RedisError> {
        let limit = self
            .settings
            .response_timeout
            .max(self.settings.connect_timeout);
        tokio::time::timeout(limit, f)
            .await
            .map_err(|_| RedisError::Timeout(limit))
    }

    /// Run one command on a pooled connection, within the response timeout.
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let mut c = self.conn()?;
        Ok(self.timed(c.query(cmd)).await??)
    }

    /// Run a script (loaded on first use), within the response timeout.
    pub async fn invoke(&self, inv: &redis::ScriptInvocation<'_>) -> Result<Value, RedisError> {
        let mut c = self.conn()?;
        Ok(self.timed(c.invoke(inv)).await??)
    }

    /// Announce `node` as alive for `ttl`; how many nodes are alive.
    pub async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<u32, RedisError> {
        let mut c = self.conn()?;
        let mut inv = self.heartbeat.key(NODES_KEY);
        inv.arg(node).arg(ttl.as_millis() as u64);
        match self.timed(c.invoke(&inv)).await?? {
            Value::Int(n) => Ok(n.clamp(1, i64::from(u32::MAX)) as u32),
            _ => Ok(1),
        }
    }

    /// `n` units of `spec` under `key`: how many pass, and for the others
    /// the wait for the next unit.
    pub async fn check(
        &self,
        key: &str,
        spec: &ThrottleSpec,
        n: u64,
    ) -> Result<(u64, Option<Duration>), RedisError> {
        let mut c = self.conn()?;
        if self.uses_cell() {
            // CL.THROTTLE's quantity is all or nothing: n checks of one
            let b = spec.max_burst.unwrap_or(spec.limit).min(spec.limit - 1);
            let mut pipe = redis::pipe();
            for _ in 0..n {
                pipe.cmd("CL.THROTTLE")
                    .arg(key)
                    .arg(b)
                    .arg(spec.limit)
                    .arg(spec.period_secs)
                    .arg(1);
            }
            let replies: Vec<Value> = match &mut c {
                Conn::Single(m) => self.timed(pipe.query_async(m)).await??,
                Conn::Cluster(m) => self.timed(pipe.query_async(m)).await??,
            };
            let waits: Vec<_> = replies.iter().map(cell_wait).collect();
            let granted = waits.iter().filter(|w| w.is_none()).count() as u64;
            return Ok((granted, waits.into_iter().flatten().max()));
        }
        let t = (spec.emission_ns() / 1000).max(1) as u64;
        let tau = (spec.tolerance_ns() / 1000) as u64;
        let mut inv = self.gcra.key(key);
        inv.arg(t).arg(tau).arg(n);
        let reply = self.timed(c.invoke(&inv)).await??;
        let (granted, wait_us) = pair(&reply);
        let wait = (granted < n as i64)
            .then(|| whole_seconds(Duration::from_micros(wait_us.max(1) as u64)));
        Ok((granted.max(0) as u64, wait))
    }

    /// Take a lease on `key` if fewer than `limit` are held.
    pub async fn acquire(&self, key: &str, limit: usize, member: &str) -> Result<bool, RedisError> {
        let mut c = self.conn()?;
        let mut inv = self.acquire.key(key);
        inv.arg(limit).arg(self.ttl_ms()).arg(member);
        Ok(self.timed(c.invoke(&inv)).await?? == Value::Int(1))
    }

    /// Extend a lease; `false` when it had expired.
    pub async fn renew(&self, key: &str, member: &str) -> Result<bool, RedisError> {
        let mut c = self.conn()?;
        let mut inv = self.renew.key(key);
        inv.arg(self.ttl_ms()).arg(member);
        Ok(self.timed(c.invoke(&inv)).await?? == Value::Int(1))
    }

    /// Give a lease back.
    pub async fn release(&self, key: &str, member: &str) -> Result<(), RedisError> {
        let mut c = self.conn()?;
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(key).arg(member);
        self.timed(c.query(&cmd)).await??;
        Ok(())
    }

    fn ttl_ms(&self) -> u64 {
        self.settings.lease_ttl.as_millis() as u64
    }
}

/// Throttle waits are whole seconds, as KumoMTA's (and the local ones).
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_nanos().div_ceil(1_000_000_000) as u64)
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

/// The script's `{granted, wait_us}`.
fn pair(v: &Value) -> (i64, i64) {
    match v {
        Value::Array(a) => (int(a.first()), int(a.get(1))),
        _ => (0, 1_000_000),
    }
}

/// `CL.THROTTLE`'s reply: `[limited, limit, remaining, retry_after_s, reset_after_s]`.
fn cell_wait(v: &Value) -> Option<Duration> {
    let Value::Array(a) = v else {
        return Some(Duration::from_secs(1));
    };
    (int(a.first()) == 1).then(|| Duration::from_secs(int(a.get(3)).max(1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_waits() {
        let ok = Value::Array(vec![Value::Int(1), Value::Int(0)]);
        assert_eq!(pair(&ok), (1, 0));
        // redis-cell: limited, retry after 0 s (less than one) waits 1 s
        let limited = Value::Array(vec![1, 10, 0, 0, 5].into_iter().map(Value::Int).collect());
        assert_eq!(cell_wait(&limited), Some(Duration::from_secs(1)));
        let allowed = Value::Array(vec![0, 10, 9, -1, 1].into_iter().map(Value::Int).collect());
        assert_eq!(cell_wait(&allowed), None);
        assert_eq!(
            whole_seconds(Duration::from_micros(1_000_001)),
            Duration::from_secs(2)
        );
    }
}
