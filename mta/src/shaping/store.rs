//! Where automation keeps what it counted and what it enacted: in the
//! fleet's Redis when one is configured (so a threshold counts every
//! node's matches and every node applies every action), else in this
//! node's memory with the actions in a file beside the spool (so they
//! survive a restart either way).

use super::Enacted;
use crate::throttle::Throttles;
use crate::throttle::redis::RedisError;
use redis::{Script, Value};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hash of enacted actions in Redis, by key.
const ACTIONS_KEY: &str = "sluice.shaping.actions";

/// Add one match (ARGV: member, window in ms) and count the matches of the
/// window, on the server's clock.
const COUNT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
";

/// The counts and actions.
pub struct Store {
    throttles: Arc<Throttles>,
    count: Script,
    /// This node's windows, when Redis is not configured or not answering.
    windows: parking_lot::Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Where this node keeps its actions without Redis.
    file: Option<PathBuf>,
    serial: std::sync::atomic::AtomicU64,
}

impl Store {
    /// A store sharing through `throttles`' Redis when it has one; actions
    /// kept in `file` otherwise.
    pub fn new(throttles: Arc<Throttles>, file: Option<PathBuf>) -> Store {
        Store {
            throttles,
            count: Script::new(COUNT),
            windows: Default::default(),
            file,
            serial: Default::default(),
        }
    }

    /// Whether actions are shared by the fleet.
    pub fn is_fleet(&self) -> bool {
        self.throttles.is_fleet()
    }

    /// Count one match under `key`: how many fell within `window`. Fleet
    /// wide through Redis; this node's alone while Redis does not answer.
    pub async fn count(&self, key: &str, window: Duration, node: &str) -> u64 {
        if let Some(redis) = self.throttles.shared_store() {
            let n = self
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut inv = self.count.key(format!("sluice.shaping.count.{key}"));
            inv.arg(format!("{node}-{n}"))
                .arg(window.as_millis().max(1) as u64);
            match redis.invoke(&inv).await {
                Ok(Value::Int(c)) => return c.max(0) as u64,
                Ok(other) => tracing::warn!("shaping count: unexpected reply {other:?}"),
                Err(e) => tracing::warn!("shaping count in Redis failed, counting here: {e}"),
            }
        }
        let now = Instant::now();
        let mut windows = self.windows.lock();
        let w = windows.entry(key.to_string()).or_default();
        while w.front().is_some_and(|t| now.duration_since(*t) > window) {
            w.pop_front();
        }
        w.push_back(now);
        w.len() as u64
    }

    /// Record `action` for the fleet (Redis) or this node (the file, with
    /// the others in force, `all`).
    pub async fn put(&self, action: &Enacted, all: &[Enacted]) {
        if self.is_fleet() {
            if let Some(redis) = self.throttles.shared_store() {
                let json = serde_json::to_string(action).unwrap_or_default();
                let cmd = redis::cmd("HSET")
                    .arg(ACTIONS_KEY)
                    .arg(&action.key)
                    .arg(json)
                    .to_owned();
                if let Err(e) = redis.query(&cmd).await {
                    tracing::error!(key = %action.key, "shaping action not shared: {e}");
                }
                return;
            }
            tracing::error!(key = %action.key, "shaping action not shared: Redis is down");
        }
        self.save(all);
    }

    /// What the fleet has enacted (Redis), dropping what has expired; `None`
    /// without Redis or while it does not answer.
    pub async fn fleet_actions(&self) -> Option<Vec<Enacted>> {
        let redis = self.throttles.shared_store()?;
        let reply = redis
            .query(redis::cmd("HGETALL").arg(ACTIONS_KEY))
            .await
            .map_err(|e: RedisError| tracing::warn!("shaping actions from Redis: {e}"))
            .ok()?;
        let now = chrono::Utc::now();
        let mut out = vec![];
        let mut expired = vec![];
        if let Value::Array(items) = reply {
            for pair in items.chunks(2) {
                let [Value::BulkString(k), Value::BulkString(v)] = pair else {
                    continue;
                };
                match serde_json::from_slice::<Enacted>(v) {
                    Ok(a) if a.expires > now => out.push(a),
                    _ => expired.push(k.clone()),
                }
            }
        }
        if !expired.is_empty() {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(ACTIONS_KEY);
            for k in expired {
                cmd.arg(k);
            }
            let _ = redis.query(&cmd).await;
        }
        Some(out)
    }

    /// The actions this node kept in its file, unexpired.
    pub fn load(&self) -> Vec<Enacted> {
        let Some(path) = &self.file else {
            return vec![];
        };
        let now = chrono::Utc::now();
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Enacted>>(&bytes)
                .unwrap_or_else(|e| {
                    tracing::error!("{}: unreadable, ignored: {e}", path.display());
                    vec![]
                })
                .into_iter()
                .filter(|a| a.expires > now)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => {
                tracing::error!("{}: {e}", path.display());
                vec![]
            }
        }
    }

    /// Keep `all` in the file (written aside, then renamed over it).
    pub fn save(&self, all: &[Enacted]) {
        let Some(path) = &self.file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, serde_json::to_vec_pretty(all).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::error!("{}: shaping actions not saved: {e}", path.display());
        }
    }
}
