//! Policy hot-reload (spec §11, conventions §5). The daemon fingerprints its
//! policy files by content (so a ConfigMap's atomic `..data` symlink swap is
//! seen, whatever the mtimes say), and on a change loads the new policy in a
//! fresh Lua state, validates it like `--validate`, and only then adopts it
//! as a new config epoch. A policy that fails keeps the old one serving; the
//! error (with file and line) goes to the log, the admin API and metrics.

use crate::metrics::Metrics;
use crate::policy::files::policy_files;
use crate::policy::{Policy, PolicyError, PolicySource};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What `/api/admin/config/v1` reports about the loaded policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigStatus {
    /// The policy's name: its file path, or the embedded default's label.
    pub source: String,
    /// SHA-256 of the serving policy's text, hex.
    pub hash: String,
    /// When the serving policy was loaded: RFC 3339, UTC.
    pub loaded_at: String,
    /// The config epoch, advanced by each successful reload.
    pub epoch: u64,
    /// Why the last reload failed (with file and line); cleared by a successful
    /// one.
    pub last_reload_error: Option<String>,
    /// When that reload failed: RFC 3339, UTC.
    pub last_reload_error_at: Option<String>,
    /// SHA-256 of each policy file (relative to the policy's directory) as
    /// of the last successful load, so an operator can tell which of its
    /// generated files a pod runs.
    pub files: std::collections::BTreeMap<String, String>,
}

/// The status, shared by the reloader and the admin API.
pub type SharedStatus = Arc<parking_lot::Mutex<ConfigStatus>>;

impl ConfigStatus {
    /// The status of a freshly loaded `policy`, with no reload error.
    pub fn new(policy: &Policy) -> SharedStatus {
        Arc::new(parking_lot::Mutex::new(ConfigStatus {
            source: policy.name(),
            hash: policy.content_hash(),
            loaded_at: now_rfc3339(),
            epoch: policy.epoch(),
            last_reload_error: None,
            last_reload_error_at: None,
            files: Default::default(),
        }))
    }
}

/// Hash of the policy file and of every policy-like file beside it (what a
/// policy may `require`, `dofile` or read), read through symlinks.
pub fn fingerprint(policy: &Path) -> String {
    let mut hasher = Sha256::new();
    for f in policy_files(policy) {
        hasher.update(f.to_string_lossy().as_bytes());
        match std::fs::read(&f) {
            Ok(bytes) => hasher.update(&bytes),
            Err(e) => hasher.update(e.to_string().as_bytes()),
        }
    }
    hex(&hasher.finalize())
}

/// SHA-256 of each policy file, by its path relative to the policy's directory.
pub fn file_hashes(policy: &Path) -> std::collections::BTreeMap<String, String> {
    let dir = policy.parent().unwrap_or(Path::new(""));
    policy_files(policy)
        .into_iter()
        .filter_map(|f| {
            let bytes = std::fs::read(&f).ok()?;
            let name = f
                .strip_prefix(dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            Some((name, hex(&Sha256::digest(&bytes))))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reloads the policy: from its file on a change, or on demand.
pub struct Reloader {
    /// The policy file; `None` for the embedded default (reloaded from itself).
    path: Option<PathBuf>,
    embedded: PolicySource,
    policy: Arc<Policy>,
    /// What `/api/admin/config/v1` reports; every reload updates it.
    pub status: SharedStatus,
    metrics: Arc<Metrics>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for `policy`, read again from `path` (or from `embedded` when
    /// there is no file), reporting to `metrics`.
    pub fn new(
        path: Option<PathBuf>,
        embedded: PolicySource,
        policy: Arc<Policy>,
        metrics: Arc<Metrics>,
    ) -> Arc<Reloader> {
        let status = ConfigStatus::new(&policy);
        if let Some(path) = &path {
            status.lock().files = file_hashes(path);
        }
        Arc::new(Reloader {
            path,
            embedded,
            policy,
            status,
            metrics,
            running: Default::default(),
        })
    }

    /// Load, validate and (only if both succeed) adopt the policy as a new
    /// epoch; returns that epoch.
    pub async fn reload(&self) -> Result<u64, PolicyError> {
        let _one = self.running.lock().await;
        let candidate = async {
            let source = match &self.path {
                Some(path) => PolicySource::from_file(path)?,
                None => self.embedded.clone(),
            };
            let candidate = Policy::load(source)?;
            candidate.validate().await?;
            Ok::<_, PolicyError>(candidate)
        }
        .await;
        match candidate {
            Ok(candidate) => {
                let epoch = self.policy.adopt(&candidate);
                let hash = self.policy.content_hash();
                self.metrics.set_config(&hash);
                self.metrics.reloads.with_label_values(&["success"]).inc();
                let mut s = self.status.lock();
                s.hash = hash;
                s.epoch = epoch;
                s.loaded_at = now_rfc3339();
                s.last_reload_error = None;
                s.last_reload_error_at = None;
                if let Some(path) = &self.path {
                    s.files = file_hashes(path);
                }
                tracing::info!(epoch, hash = %s.hash, "policy reloaded");
                Ok(epoch)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                self.metrics.reload_failing.set(1);
                let mut s = self.status.lock();
                s.last_reload_error = Some(e.to_string());
                s.last_reload_error_at = Some(now_rfc3339());
                tracing::error!(
                    epoch = s.epoch,
                    "policy reload failed; the previous policy keeps serving: {e}"
                );
                Err(e)
            }
        }
    }

    /// Check the policy files every `interval`; reload when their content
    /// changes.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut seen = fingerprint(&path);
        loop {
            tokio::time::sleep(interval).await;
            let now = fingerprint(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let _ = self.reload().await;
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
