//! `kumo.configure_local_logs{...}` and `kumo.configure_log_hook{...}`
//! (spec §8).

use serde::Deserialize;
use sluice_common::duration;
use std::path::PathBuf;
use std::time::Duration;

/// `kumo.configure_local_logs{...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLogConfig {
    /// Directory the log segments are written to, created if missing; required.
    pub log_dir: PathBuf,
    /// A segment is closed before a record would take it past this many bytes;
    /// default 1,000,000,000.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    /// A segment is closed once it has been open this long, even if not full (a
    /// duration such as `"1h"`, or seconds); default none, so only size
    /// rotates.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub max_segment_duration: Option<Duration>,
    /// Accepted for KumoMTA compatibility. Sluice writes plain JSON lines so
    /// that `tail -f` and cluster log shippers can read live segments.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Records that may wait for the writer thread before logging blocks the
    /// mail flow; default 128,000.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// Message meta keys whose values each record carries in `meta`
    /// (case-insensitive; a trailing `*` matches a prefix); default none.
    #[serde(default)]
    pub meta: Vec<String>,
    /// Message headers each record carries in `headers`, by lowercase name
    /// (matched as `meta` is); default none.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Free space the log volume must keep (`"10%"`, the default, or bytes):
    /// below it new mail is refused with a 4xx, as for the spool.
    #[serde(default)]
    pub min_free_space: super::MinFree,
    /// Free inodes the log volume must keep (`"10%"`, the default, or a
    /// number).
    #[serde(default)]
    pub min_free_inodes: super::MinFree,
    /// Sluice: the most bytes the segments in `log_dir` may take together:
    /// closed segments are deleted, oldest first, so that the rest plus a
    /// full `max_file_size` segment fit. Default none (KumoMTA keeps every
    /// segment).
    #[serde(default)]
    pub max_total_size: Option<u64>,
    /// Sluice: closed segments older than this (a duration such as `"7d"`)
    /// are deleted. Default none.
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub retention: Option<Duration>,
}

fn default_max_file_size() -> u64 {
    1_000_000_000
}
fn default_back_pressure() -> usize {
    128_000
}

/// `kumo.configure_log_hook{...}` (spec §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHookConfig {
    /// The hook's name, which `should_enqueue_log_record` gets as its second
    /// argument; required.
    pub name: String,
    /// Records that may wait for the hook's worker before logging blocks the
    /// mail flow; default 128,000.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// Message meta keys to carry in the hooked record's `meta`, and so in the
    /// hook message's meta (matched as in `configure_local_logs`); default
    /// none.
    #[serde(default)]
    pub meta: Vec<String>,
    /// Message headers to carry in the hooked record's `headers` (matched as in
    /// `configure_local_logs`); default none.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Queue hook messages without saving them to the spool first.
    #[serde(default)]
    pub deferred_spool: bool,
}
