//! Free space on the volumes the MTA writes: the spool and each log
//! directory (spec §7, `min_free_space`/`min_free_inodes`). A full volume is
//! a temporary condition: while any volume is short, or shortly after a
//! spool write failed for lack of space, new mail is refused with a 4xx and
//! readiness fails (so a Service stops sending this pod connections), while
//! deliveries go on, free space, and acceptance resumes by itself.

use crate::config::MinFree;
use crate::spool::Spool;
use parking_lot::Mutex;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long reception stays refused after a spool write failed with ENOSPC
/// or EDQUOT, unless a later spool write has succeeded and the volume has
/// [`RECOVERED`] bytes free. A quota is invisible to statvfs, so there only
/// a later write can tell that space is back; the hold spaces those tries
/// out.
pub const WRITE_FAILURE_HOLD: Duration = Duration::from_secs(10);

/// Free space the spool volume must have, after a failed write, to lift the
/// hold early.
pub const RECOVERED: u64 = 1 << 20;

/// A volume the MTA writes, and the floor it must keep free.
#[derive(Debug, Clone)]
pub struct Volume {
    /// What lives there: `spool` or `logs`.
    pub kind: &'static str,
    /// The directory (its file system is what is measured).
    pub path: PathBuf,
    /// Free bytes to keep.
    pub min_free_space: MinFree,
    /// Free inodes to keep.
    pub min_free_inodes: MinFree,
}

/// A volume's free and total bytes and inodes, as unprivileged users see
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes free.
    pub free_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Inodes free.
    pub free_inodes: u64,
    /// Inodes in all (0 on file systems without a fixed count).
    pub total_inodes: u64,
}

/// Measure the file system holding `path`. Totals are what `df` shows as
/// Used + Avail: blocks reserved for root are neither free nor part of the
/// whole a percentage is taken of.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let s = rustix::fs::statvfs(path)?;
    let used_blocks = s.f_blocks.saturating_sub(s.f_bfree);
    let used_inodes = s.f_files.saturating_sub(s.f_ffree);
    Ok(Usage {
        free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        total_bytes: (used_blocks + s.f_bavail).saturating_mul(s.f_frsize),
        free_inodes: s.f_favail,
        total_inodes: used_inodes + s.f_favail,
    })
}

/// Why new mail is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortage {
    /// A volume has less free space than its `min_free_space`.
    Space {
        /// `spool` or `logs`.
        kind: &'static str,
        /// The volume's directory.
        path: PathBuf,
        /// Bytes free.
        free: u64,
        /// Bytes that must stay free.
        required: u64,
    },
    /// A volume has fewer free inodes than its `min_free_inodes`.
    Inodes {
        /// `spool` or `logs`.
        kind: &'static str,
        /// The volume's directory.
        path: PathBuf,
        /// Inodes free.
        free: u64,
        /// Inodes that must stay free.
        required: u64,
    },
    /// A spool write failed for lack of space within the last
    /// [`WRITE_FAILURE_HOLD`].
    WriteFailed(io::ErrorKind),
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortage::Space {
                kind,
                path,
                free,
                required,
            } => write!(
                f,
                "{kind} volume {} has {free} bytes free, below min_free_space ({required})",
                path.display()
            ),
            Shortage::Inodes {
                kind,
                path,
                free,
                required,
            } => write!(
                f,
                "{kind} volume {} has {free} inodes free, below min_free_inodes ({required})",
                path.display()
            ),
            Shortage::WriteFailed(kind) => write!(f, "a spool write failed recently: {kind}"),
        }
    }
}

/// Whether `volume`, measured as `usage`, is short of space or inodes.
pub fn shortage(volume: &Volume, usage: &Usage) -> Option<Shortage> {
    let required = volume.min_free_space.required(usage.total_bytes);
    if usage.free_bytes < required {
        return Some(Shortage::Space {
            kind: volume.kind,
            path: volume.path.clone(),
            free: usage.free_bytes,
            required,
        });
    }
    // file systems without a fixed inode count (btrfs) report 0 in all
    if usage.total_inodes > 0 {
        let required = volume.min_free_inodes.required(usage.total_inodes);
        if usage.free_inodes < required {
            return Some(Shortage::Inodes {
                kind: volume.kind,
                path: volume.path.clone(),
                free: usage.free_inodes,
                required,
            });
        }
    }
    None
}

/// Whether a spool write error means the volume is full.
pub fn is_out_of_space(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The shortage the spool's last failed write stands for now, if any: it
/// failed for lack of space less than [`WRITE_FAILURE_HOLD`] ago, and no
/// write has succeeded since with `RECOVERED` bytes free.
pub fn write_failure(
    failed: Option<(io::ErrorKind, Instant)>,
    succeeded: Option<Instant>,
    now: Instant,
    free_now: u64,
) -> Option<Shortage> {
    let (kind, at) = failed?;
    let held = now.saturating_duration_since(at) < WRITE_FAILURE_HOLD;
    let recovered = succeeded.is_some_and(|ok| ok > at) && free_now >= RECOVERED;
    (is_out_of_space(kind) && held && !recovered).then_some(Shortage::WriteFailed(kind))
}

/// How old a measurement may be when a new message asks: a second of
/// writes would overshoot a floor by too much on a small volume.
const FRESH: Duration = Duration::from_millis(100);

/// Closer to a floor than this, every new message measures again: within
/// [`FRESH`] a fast client (tmpfs, loopback) writes tens of megabytes,
/// enough to go from above `min_free_space` to a full volume and fail a
/// write (451) instead of being refused at MAIL (452).
const TIGHT: u64 = 256 << 20;

/// Whether `volume`, measured as `usage`, is near enough a floor that a
/// cached measurement could let a burst through.
fn tight(volume: &Volume, usage: &Usage) -> bool {
    let required = volume.min_free_space.required(usage.total_bytes);
    usage.free_bytes < required.saturating_add(TIGHT)
}

/// The watched volumes and what they were last found to be.
pub struct Storage {
    volumes: Vec<Volume>,
    spool: Arc<Spool>,
    usage: Mutex<Vec<Option<Usage>>>,
    measured: Mutex<Option<Instant>>,
    /// A volume was near a floor at the last measurement.
    tight: std::sync::atomic::AtomicBool,
    state: watch::Sender<Option<Shortage>>,
}

impl Storage {
    /// Watch these volumes and the spool's writes; nothing is short until the
    /// first check.
    pub fn new(volumes: Vec<Volume>, spool: Arc<Spool>) -> Storage {
        Storage {
            usage: Mutex::new(vec![None; volumes.len()]),
            volumes,
            spool,
            measured: Mutex::new(None),
            tight: Default::default(),
            state: watch::channel(None).0,
        }
    }

    /// Why new mail is refused now, if it is: measured again when the last
    /// measurement is older than 100 ms or a volume is near its floor
    /// (statvfs is cheap), and a spool write that failed for lack of space
    /// counts at once.
    pub fn shortage(&self) -> Option<Shortage> {
        let measured = *self.measured.lock();
        let stale = measured.is_none_or(|t| t.elapsed() >= FRESH)
            || self.tight.load(std::sync::atomic::Ordering::Relaxed);
        let failed_since = self
            .spool
            .last_write_failure()
            .is_some_and(|(_, at)| measured.is_none_or(|t| at > t));
        if stale || failed_since {
            return self.check();
        }
        self.state.borrow().clone()
    }

    /// The volumes, each with its last measurement (for metrics).
    pub fn volumes(&self) -> Vec<(Volume, Option<Usage>)> {
        let usage = self.usage.lock();
        self.volumes
            .iter()
            .cloned()
            .zip(usage.iter().copied())
            .collect()
    }

    /// Measure every volume and take in the spool's last write failure;
    /// tell the spool whether space is short (it then rolls an emptied
    /// segment early, so the space comes back). Returns the new state.
    pub fn check(&self) -> Option<Shortage> {
        let now = Instant::now();
        *self.measured.lock() = Some(now);
        let mut found = None;
        let mut near = false;
        let mut usage = self.usage.lock();
        for (volume, slot) in self.volumes.iter().zip(usage.iter_mut()) {
            match self::usage(&volume.path) {
                Ok(u) => {
                    *slot = Some(u);
                    near |= tight(volume, &u);
                    if found.is_none() {
                        found = shortage(volume, &u);
                    }
                }
                Err(e) => {
                    *slot = None;
                    tracing::warn!(path = %volume.path.display(), "cannot measure free space: {e}");
                }
            }
        }
        self.tight.store(near, std::sync::atomic::Ordering::Relaxed);
        // the spool's volume comes first (see `daemon`)
        let spool_free = usage.first().copied().flatten().map_or(0, |u| u.free_bytes);
        drop(usage);
        found = write_failure(
            self.spool.last_write_failure(),
            self.spool.last_write_success(),
            now,
            spool_free,
        )
        .or(found);
        self.spool.set_space_short(found.is_some());
        let before = self.state.send_replace(found.clone());
        match (&before, &found) {
            (None, Some(s)) => tracing::warn!("refusing new mail: {s}"),
            (Some(_), None) => tracing::info!("space is back: accepting new mail again"),
            _ => {}
        }
        found
    }

    /// Check every `every` for as long as the process runs (so readiness
    /// and metrics follow the volumes when no mail arrives).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(space: MinFree, inodes: MinFree) -> Volume {
        Volume {
            kind: "spool",
            path: "/spool".into(),
            min_free_space: space,
            min_free_inodes: inodes,
        }
    }

    fn usage(free_bytes: u64, free_inodes: u64, total_inodes: u64) -> Usage {
        Usage {
            free_bytes,
            total_bytes: 1000,
            free_inodes,
            total_inodes,
        }
    }

    #[test]
    fn near_a_floor_every_message_measures_again() {
        let v = volume(MinFree::Absolute(1 << 30), MinFree::Absolute(0));
        let at = |free: u64| Usage {
            free_bytes: free,
            total_bytes: 100 << 30,
            free_inodes: 0,
            total_inodes: 0,
        };
        assert!(!tight(&v, &at(2 << 30)), "a GiB above the floor");
        assert!(tight(&v, &at((1 << 30) + (100 << 20))), "100 MiB above it");
        assert!(tight(&v, &at(0)));
    }

    #[test]
    fn a_volume_is_short_below_either_floor() {
        let pct = MinFree::Percent(10.0);
        let v = volume(pct, pct);
        // (free bytes, free inodes, total inodes) -> short of what
        let cases: &[(u64, u64, u64, Option<&str>)] = &[
            (100, 10, 100, None),
            (99, 10, 100, Some("space")),
            (0, 0, 100, Some("space")),
            (500, 9, 100, Some("inodes")),
            (500, 0, 0, None), // no fixed inode count
        ];
        for &(fb, fi, ti, want) in cases {
            let got = shortage(&v, &usage(fb, fi, ti)).map(|s| match s {
                Shortage::Space { .. } => "space",
                Shortage::Inodes { .. } => "inodes",
                Shortage::WriteFailed(_) => "write",
            });
            assert_eq!(got, want, "free {fb} bytes, {fi}/{ti} inodes");
        }
        let off = volume(MinFree::Absolute(0), MinFree::Percent(0.0));
        assert_eq!(shortage(&off, &usage(0, 0, 100)), None);
        let abs = volume(MinFree::Absolute(200), MinFree::Absolute(0));
        assert!(shortage(&abs, &usage(199, 0, 100)).is_some());
    }

    #[test]
    fn an_enospc_refuses_for_the_hold_or_until_a_write_succeeds_with_room() {
        let t0 = Instant::now();
        let full = Some((io::ErrorKind::StorageFull, t0));
        let later = Some(t0 + Duration::from_millis(5));
        let earlier = Some(t0 - Duration::from_millis(5));
        assert!(write_failure(full, None, t0, 0).is_some());
        let almost = t0 + WRITE_FAILURE_HOLD - Duration::from_millis(1);
        assert!(write_failure(full, earlier, almost, RECOVERED).is_some());
        assert!(write_failure(full, None, t0 + WRITE_FAILURE_HOLD, 0).is_none());
        // a write succeeded since, with room: lifted before the hold ends
        assert!(write_failure(full, later, t0, RECOVERED).is_none());
        // a write succeeded since, yet the volume is nearly full: held
        assert!(write_failure(full, later, t0, RECOVERED - 1).is_some());
        let quota = Some((io::ErrorKind::QuotaExceeded, t0));
        assert!(write_failure(quota, None, t0, u64::MAX).is_some());
        let other = Some((io::ErrorKind::PermissionDenied, t0));
        assert!(write_failure(other, None, t0, 0).is_none());
        assert!(write_failure(None, None, t0, 0).is_none());
    }

    #[test]
    fn the_messages_name_the_volume_and_the_floor() {
        let s = Shortage::Space {
            kind: "spool",
            path: "/var/spool/sluice".into(),
            free: 10,
            required: 20,
        };
        assert_eq!(
            s.to_string(),
            "spool volume /var/spool/sluice has 10 bytes free, below min_free_space (20)"
        );
    }
}
