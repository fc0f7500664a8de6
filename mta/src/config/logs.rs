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
    pub log_dir: PathBuf,
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub max_segment_duration: Option<Duration>,
    /// Accepted for KumoMTA compatibility. Sluice writes plain JSON lines so
    /// that `tail -f` and cluster log shippers can read live segments.
    #[serde(default)]
    pub compression_level: Option<i32>,
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
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
    pub name: String,
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    /// Queue hook messages without saving them to the spool first.
    #[serde(default)]
    pub deferred_spool: bool,
}
