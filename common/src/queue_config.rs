//! `kumo.make_queue_config` (spec §2): every key KumoMTA accepts, with its
//! default. Unknown keys are errors, so a typo never silently falls back.

use crate::duration;
use crate::throttle::ThrottleSpec;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `kumo.make_queue_config{...}` (spec §2): how one scheduled queue retries,
/// expires, is paced and delivers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Base of the exponential retry backoff.
    #[serde(
        default = "default_retry_interval",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub retry_interval: Duration,

    /// Upper bound for any single retry delay.
    #[serde(
        default,
        deserialize_with = "duration::deserialize_opt",
        serialize_with = "duration::serialize_opt"
    )]
    pub max_retry_interval: Option<Duration>,

    /// How long a message may stay queued before it expires.
    #[serde(
        default = "default_max_age",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub max_age: Duration,

    /// Egress pool used for this queue; `unspecified` when unset.
    #[serde(default)]
    pub egress_pool: Option<String>,

    /// Rate at which messages move from this scheduled queue to a ready queue.
    #[serde(default)]
    pub max_message_rate: Option<ThrottleSpec>,

    /// How messages are delivered; SMTP via MX when unset.
    #[serde(default)]
    pub protocol: Protocol,

    /// Drop the queue object after it has been empty and idle this long.
    #[serde(
        default = "default_reap_interval",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub reap_interval: Duration,

    /// How often a `Ttl` queue re-evaluates its config.
    #[serde(
        default = "default_refresh_interval",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub refresh_interval: Duration,

    /// When the config is asked for again: after `refresh_interval` (`Ttl`, the
    /// default) or after a policy reload (`Epoch`).
    #[serde(default)]
    pub refresh_strategy: RefreshStrategy,

    /// Delayed-message store. Accepted for compatibility; Sluice uses one
    /// global timer for every queue, whichever is named.
    #[serde(default)]
    pub strategy: QueueStrategy,

    /// KumoMTA's memory tuning of waiting messages. Accepted for
    /// compatibility; Sluice always keeps only id, attempts and due time of
    /// a waiting message in memory once its state is on disk.
    #[serde(default)]
    pub shrink_policy: Vec<ShrinkPolicyEntry>,

    /// KumoMTA's timer wheel resolution. Accepted for compatibility; the
    /// one global timer of Sluice is exact to the millisecond.
    #[serde(
        default,
        deserialize_with = "duration::deserialize_opt",
        serialize_with = "duration::serialize_opt"
    )]
    pub timerwheel_tick_interval: Option<Duration>,

    /// Groups the queues of one mailbox provider: shown per scheduled queue
    /// by the queue summary.
    #[serde(default)]
    pub provider_name: Option<String>,
}

fn default_retry_interval() -> Duration {
    Duration::from_secs(20 * 60)
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 86400)
}
fn default_reap_interval() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry_interval: default_retry_interval(),
            max_retry_interval: None,
            max_age: default_max_age(),
            egress_pool: None,
            max_message_rate: None,
            protocol: Protocol::default(),
            reap_interval: default_reap_interval(),
            refresh_interval: default_refresh_interval(),
            refresh_strategy: RefreshStrategy::default(),
            strategy: QueueStrategy::default(),
            shrink_policy: vec![],
            timerwheel_tick_interval: None,
            provider_name: None,
        }
    }
}

impl QueueConfig {
    /// The retry delay after `attempts` earlier failures (spec §3.1), before jitter:
    /// `retry_interval * 2^attempts`, in whole seconds, capped by `max_retry_interval`.
    pub fn delay_for_attempt(&self, attempts: u16) -> Duration {
        let base = self.retry_interval.as_secs();
        let factor = 1u64.checked_shl(u32::from(attempts)).unwrap_or(u64::MAX);
        let mut secs = base.saturating_mul(factor);
        if attempts >= 64 && base > 0 {
            secs = u64::MAX;
        }
        if let Some(cap) = self.max_retry_interval {
            secs = secs.min(cap.as_secs());
        }
        Duration::from_secs(secs)
    }

    /// The jitter bound `J = min(retry_interval / 20, 60)` seconds (spec §3.1).
    pub fn jitter_span_secs(&self) -> f64 {
        (self.retry_interval.as_secs() as f64 / 20.0).min(60.0)
    }

    /// Jitter in whole seconds for a uniform sample `u` in [0, 1):
    /// `trunc(u * J - J/2)`, rounded toward zero.
    pub fn jitter_secs(&self, u: f64) -> i64 {
        let j = self.jitter_span_secs();
        (u * j - j / 2.0).trunc() as i64
    }
}

/// When a cached queue or path config is asked for again (spec §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum RefreshStrategy {
    /// After its `refresh_interval` has passed (the default).
    #[default]
    Ttl,
    /// Only after the policy has been reloaded.
    Epoch,
}

/// KumoMTA's delayed-message store (`strategy`). Every value is accepted;
/// Sluice uses one global timer whichever is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum QueueStrategy {
    /// One timer wheel for all queues, ticking every 3 s (the default).
    #[default]
    SingletonTimerWheel,
    /// KumoMTA's newer implementation of the shared timer wheel.
    SingletonTimerWheelV2,
    /// A timer wheel per queue, ticking every `timerwheel_tick_interval`.
    TimerWheel,
    /// A skip list per queue, ordered by due time.
    SkipList,
}

/// One `shrink_policy` entry: `policy` applies to a message whose next attempt
/// is at least `interval` away (the last such entry wins).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShrinkPolicyEntry {
    /// Least time until the message is due for this entry to apply.
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub interval: Duration,
    /// What KumoMTA drops from memory meanwhile.
    pub policy: ShrinkPolicy,
}

/// How much of a delayed message KumoMTA drops from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ShrinkPolicy {
    /// Body and metadata (the default with no entries).
    ShrinkDataAndMeta,
    /// The body only.
    ShrinkData,
    /// Nothing: the whole message stays in memory.
    NoShrink,
}

/// The delivery protocol; which one is meant is decided by the table's shape.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "ProtocolTable", into = "ProtocolTable")]
pub enum Protocol {
    /// `{smtp = {...}}`: SMTP to the `mx_list` hosts, or to the domain's MX hosts.
    Smtp(SmtpProtocol),
    /// `{maildir_path = ...}`: written into a maildir (spec §5.2).
    Maildir(MaildirProtocol),
    /// `{custom_lua = {...}}`: handed to a connection object built in Lua
    /// (spec §5.3).
    CustomLua(CustomLuaProtocol),
    /// The MTA's internal queue for `deferred_queue` listeners (spec §6.4),
    /// never written in a policy: no table has this shape.
    DeferredInject,
    /// The MTA's internal queue of messages being moved to another node
    /// (`<target>.xfer.kumomta.internal`): its HTTP listener, a URL. Never
    /// written in a policy either.
    Xfer(String),
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::Smtp(SmtpProtocol::default())
    }
}

/// The `smtp` protocol table: where to connect instead of the MX hosts.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpProtocol {
    /// Explicit hosts tried in order; empty means MX resolution.
    #[serde(default)]
    pub mx_list: Vec<MxListEntry>,
    /// KumoMTA: treat the `mx_list` hosts as DNSSEC-validated (for DANE);
    /// default false. Accepted for compatibility; Sluice does no DANE.
    #[serde(default)]
    pub treat_mx_list_as_secure: bool,
}

/// One `mx_list` entry: a host string, or a `{name, addr}` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MxListEntry {
    /// A host name (A/AAAA lookup) or `[ip]` literal, optionally `:port`.
    Name(String),
    /// A name for logs plus the address to connect to (`ip[:port]`).
    Address {
        /// The host's name in logs and for TLS.
        name: String,
        /// The IP address to connect to, optionally with `:port`.
        addr: String,
    },
}

/// The maildir protocol (spec §5.2): one copy per recipient, written into
/// the maildir its expanded `maildir_path` names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MaildirProtocol {
    /// Path template, expanded per recipient (`{{ domain }}`, `{{ local_part }}`, `{{ meta.x }}`...).
    pub maildir_path: String,
    /// Permission bits of the directories created (e.g. `448` = `0o700`); the
    /// process umask decides when unset.
    pub dir_mode: Option<u32>,
    /// Permission bits of the message files written (e.g. `384` = `0o600`); the
    /// process umask decides when unset.
    pub file_mode: Option<u32>,
}

/// The custom_lua protocol (spec §5.3): messages go to a connection object
/// that a Lua event handler builds, once per session.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomLuaProtocol {
    /// Event whose handler returns the connection object.
    pub constructor: String,
    /// Most messages per call; default 1. With 1 the MTA calls
    /// `conn:send(msg)`, with more `conn:send_batch(msgs)`.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Fewest messages per `send_batch` call unless `max_batch_latency` runs out
    /// first; default 1.
    #[serde(default = "one")]
    pub min_batch_size: usize,
    /// How long to wait for `min_batch_size` messages before sending fewer;
    /// default 0 s.
    #[serde(
        default,
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub max_batch_latency: Duration,
}

fn one() -> usize {
    1
}

/// The protocol table as written in Lua: exactly one shape must be present.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ProtocolTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    smtp: Option<SmtpProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maildir_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custom_lua: Option<CustomLuaProtocol>,
}

impl TryFrom<ProtocolTable> for Protocol {
    type Error = String;

    fn try_from(t: ProtocolTable) -> Result<Self, String> {
        let has_mode = t.dir_mode.is_some() || t.file_mode.is_some();
        let is_maildir = t.maildir_path.is_some();
        match (t.smtp, t.maildir_path, t.custom_lua) {
            (Some(smtp), None, None) if !has_mode => Ok(Protocol::Smtp(smtp)),
            (None, Some(maildir_path), None) => Ok(Protocol::Maildir(MaildirProtocol {
                maildir_path,
                dir_mode: t.dir_mode,
                file_mode: t.file_mode,
            })),
            (None, None, Some(lua)) if !has_mode => Ok(Protocol::CustomLua(lua)),
            (None, None, None) if !has_mode => {
                Err("protocol table is empty: set one of smtp, maildir_path or custom_lua".into())
            }
            _ if has_mode && !is_maildir => {
                Err("dir_mode and file_mode only apply with maildir_path".into())
            }
            _ => Err("protocol must set exactly one of smtp, maildir_path or custom_lua".into()),
        }
    }
}

impl From<Protocol> for ProtocolTable {
    fn from(p: Protocol) -> Self {
        let mut t = ProtocolTable {
            smtp: None,
            maildir_path: None,
            dir_mode: None,
            file_mode: None,
            custom_lua: None,
        };
        match p {
            Protocol::Smtp(s) => t.smtp = Some(s),
            Protocol::Maildir(m) => {
                t.maildir_path = Some(m.maildir_path);
                t.dir_mode = m.dir_mode;
                t.file_mode = m.file_mode;
            }
            Protocol::CustomLua(c) => t.custom_lua = Some(c),
            Protocol::DeferredInject | Protocol::Xfer(_) => {}
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<QueueConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_kumomta() {
        let c = parse("{}").unwrap();
        assert_eq!(c, QueueConfig::default());
        assert_eq!(c.retry_interval, Duration::from_secs(1200));
        assert_eq!(c.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(c.protocol, Protocol::Smtp(SmtpProtocol::default()));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(r#"{"max_agee": "1h"}"#).unwrap_err();
        assert!(err.contains("max_agee"), "{err}");
        let err = parse(r#"{"protocol": {"maildir_path": "/x", "smtpp": {}}}"#).unwrap_err();
        assert!(err.contains("smtpp"), "{err}");
    }

    #[test]
    fn protocol_shapes() {
        let c = parse(r#"{"protocol": {"maildir_path": "/tmp/m", "dir_mode": 448}}"#).unwrap();
        assert!(matches!(
            c.protocol,
            Protocol::Maildir(MaildirProtocol {
                dir_mode: Some(448),
                ..
            })
        ));
        let c = parse(
            r#"{"protocol": {"smtp": {"mx_list": ["smart.host.local", {"name": "mx", "addr": "10.0.0.1"}]}}}"#,
        )
        .unwrap();
        let Protocol::Smtp(smtp) = c.protocol else {
            panic!()
        };
        assert_eq!(smtp.mx_list.len(), 2);
        let c = parse(r#"{"protocol": {"custom_lua": {"constructor": "make.webhook"}}}"#).unwrap();
        assert!(matches!(
            c.protocol,
            Protocol::CustomLua(CustomLuaProtocol { batch_size: 1, .. })
        ));
        assert!(parse(r#"{"protocol": {}}"#).unwrap_err().contains("empty"));
        assert!(
            parse(r#"{"protocol": {"maildir_path": "/x", "custom_lua": {"constructor": "c"}}}"#)
                .unwrap_err()
                .contains("exactly one")
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = parse(r#"{"max_message_rate": "10/seconds"}"#).unwrap_err();
        assert!(err.contains("10/seconds"), "{err}");
        let err = parse(r#"{"retry_interval": "soon"}"#).unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }

    /// The whole retry schedule as data (spec §3.1): with the defaults the
    /// attempts happen at 0, 20m, 1h, 2h20m, 5h, 10h20m, 21h, 42h20m, 85h.
    #[test]
    fn default_schedule() {
        let c = QueueConfig::default();
        let mut at = 0;
        let mut times = vec![0];
        for n in 0..8 {
            at += c.delay_for_attempt(n).as_secs();
            times.push(at);
        }
        let m = 60;
        let h = 3600;
        assert_eq!(
            times,
            vec![
                0,
                20 * m,
                h,
                2 * h + 20 * m,
                5 * h,
                10 * h + 20 * m,
                21 * h,
                42 * h + 20 * m,
                85 * h
            ]
        );
        // the 9th failure would schedule past 7 days
        assert!(at + c.delay_for_attempt(8).as_secs() > 7 * 86400);
    }

    #[test]
    fn capped_schedule_and_jitter() {
        let c = parse(r#"{"retry_interval": "10s", "max_retry_interval": "20s"}"#).unwrap();
        let gaps: Vec<u64> = (0..4).map(|n| c.delay_for_attempt(n).as_secs()).collect();
        assert_eq!(gaps, vec![10, 20, 20, 20]);
        // retry 5s => J = 0.25 => jitter always 0
        let c = parse(r#"{"retry_interval": "5s"}"#).unwrap();
        assert!((0..100).all(|i| c.jitter_secs(i as f64 / 100.0) == 0));
        // default: J = 60 => jitter within [-29, 29]
        let c = QueueConfig::default();
        assert_eq!(c.jitter_secs(0.0), -30);
        assert_eq!(c.jitter_secs(0.999_999), 29);
        assert!(c.delay_for_attempt(200) >= Duration::from_secs(u64::MAX / 2));
    }
}
