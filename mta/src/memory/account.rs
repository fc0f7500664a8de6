//! Where the process's memory limit and working set are read: the memory
//! cgroup it runs in (v2, else v1), found through `/proc/self/cgroup` and
//! the mount table as a container sees them, or the process itself when no
//! cgroup limits it.
//!
//! The working set is what the kernel cannot take back without killing us:
//! the cgroup's usage less its page cache, active and inactive. Counting
//! `memory.current` would count spool pages the kernel reclaims at will,
//! and shed load on a pod that only caches its own files; even the
//! kubelet's `working_set` (usage less *inactive* file pages) counts the
//! spool pages read back for delivery, which become active, and measured
//! here it kept a pod "short" of memory after every message was delivered.
//! The kernel reclaims active file pages too before it OOM-kills.

use procfs::process::Process;
use std::path::{Path, PathBuf};

/// A v1 limit this high (`PAGE_COUNTER_MAX` rounded) means "no limit".
const V1_UNLIMITED: u64 = 1 << 62;

/// How the working set is measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Accounting {
    /// cgroup v2: `memory.current` − `inactive_file` − `active_file`.
    V2(PathBuf),
    /// cgroup v1: `memory.usage_in_bytes` − `total_inactive_file` −
    /// `total_active_file`.
    V1(PathBuf),
    /// No cgroup limit: the process's anonymous resident memory (`RssAnon`),
    /// which leaves out the mapped binary and file pages.
    Process,
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accounting::V2(dir) => write!(f, "cgroup v2 {}", dir.display()),
            Accounting::V1(dir) => write!(f, "cgroup v1 {}", dir.display()),
            Accounting::Process => f.write_str("process RssAnon"),
        }
    }
}

/// The accounting in force and the limit it imposes, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// How usage is measured.
    pub accounting: Accounting,
    /// The cgroup's limit (the lowest on its path), `None` when unlimited.
    pub limit: Option<u64>,
}

/// The memory cgroup this process is limited by, if any: v2 first (where
/// its `memory.max` exists), then v1. Unlimited cgroups are not used, since
/// they may hold other processes (a whole session, a CI job).
pub fn find() -> Found {
    let found = Process::myself().ok().and_then(|me| {
        let groups = me.cgroups().ok()?.0;
        let mounts = me.mountinfo().ok()?.0;
        let dir_of = |v2: bool| {
            let group = groups.iter().find(|g| match v2 {
                true => g.hierarchy == 0 && g.controllers.is_empty(),
                false => g.controllers.iter().any(|c| c == "memory"),
            })?;
            let mount = mounts.iter().find(|m| match v2 {
                true => m.fs_type == "cgroup2",
                false => m.fs_type == "cgroup" && m.super_options.contains_key("memory"),
            })?;
            cgroup_dir(&mount.mount_point, &mount.root, &group.pathname)
        };
        if let Some(dir) = dir_of(true).filter(|d| d.join("memory.max").exists()) {
            let limit = lowest_limit(&dir, "memory.max", |s| parse_limit(s, u64::MAX));
            if limit.is_some() {
                return Some(Found {
                    accounting: Accounting::V2(dir),
                    limit,
                });
            }
        }
        let dir = dir_of(false).filter(|d| d.join("memory.limit_in_bytes").exists())?;
        let limit = lowest_limit(&dir, "memory.limit_in_bytes", |s| {
            parse_limit(s, V1_UNLIMITED)
        })?;
        Some(Found {
            accounting: Accounting::V1(dir),
            limit: Some(limit),
        })
    });
    found.unwrap_or(Found {
        accounting: Accounting::Process,
        limit: None,
    })
}

/// The directory of `group` (a path in the hierarchy) under a cgroup mount
/// whose root is `root` (not `/` inside a container without a cgroup
/// namespace); `None` when the group is outside what is mounted.
pub fn cgroup_dir(mount_point: &Path, root: &str, group: &str) -> Option<PathBuf> {
    let rel = group.strip_prefix(root.trim_end_matches('/'))?;
    if !rel.is_empty() && !rel.starts_with('/') {
        return None;
    }
    Some(mount_point.join(rel.trim_start_matches('/')))
}

/// A limit file's value: a number below `unlimited`, else `None` ("max"
/// in v2, a huge number in v1).
pub fn parse_limit(text: &str, unlimited: u64) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&n| n < unlimited)
}

/// The lowest limit from `dir` up to the mount's root: a parent's limit
/// binds its children too.
fn lowest_limit(dir: &Path, file: &str, parse: impl Fn(&str) -> Option<u64>) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    let mut at = Some(dir);
    while let Some(d) = at {
        match std::fs::read_to_string(d.join(file)) {
            Ok(text) => {
                if let Some(n) = parse(&text) {
                    lowest = Some(lowest.map_or(n, |l| l.min(n)));
                }
            }
            // above the mount's root (or a v2 root without the file)
            Err(_) => break,
        }
        at = d.parent();
    }
    lowest
}

/// A `memory.stat` field (`key value` lines).
pub fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The working set now, in bytes.
pub fn working_set(accounting: &Accounting) -> std::io::Result<u64> {
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file));
    let number = |text: String| {
        text.trim()
            .parse::<u64>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    match accounting {
        Accounting::V2(dir) => {
            let usage = number(read(dir, "memory.current")?)?;
            let stat = read(dir, "memory.stat")?;
            let file = ["inactive_file", "active_file"]
                .iter()
                .map(|k| stat_field(&stat, k).unwrap_or(0))
                .sum::<u64>();
            Ok(usage.saturating_sub(file))
        }
        Accounting::V1(dir) => {
            let usage = number(read(dir, "memory.usage_in_bytes")?)?;
            let stat = read(dir, "memory.stat")?;
            let file = ["total_inactive_file", "total_active_file"]
                .iter()
                .map(|k| stat_field(&stat, k).unwrap_or(0))
                .sum::<u64>();
            Ok(usage.saturating_sub(file))
        }
        Accounting::Process => {
            let status = Process::myself()
                .and_then(|p| p.status())
                .map_err(std::io::Error::other)?;
            Ok(status.rssanon.unwrap_or(0) * 1024)
        }
    }
}

/// The machine's memory, the limit when nothing else sets one.
pub fn physical() -> u64 {
    use procfs::Current;
    procfs::Meminfo::current()
        .map(|m| m.mem_total)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_maps_below_its_mount_root() {
        let mount = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(
            cgroup_dir(mount, "/", "/kubepods/pod1/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/c1"))
        );
        // a container whose mount shows only its own subtree
        assert_eq!(
            cgroup_dir(mount, "/kubepods/pod1/c1", "/kubepods/pod1/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(cgroup_dir(mount, "/kubepods/pod1", "/kubepods/pod10"), None);
        assert_eq!(cgroup_dir(mount, "/other", "/kubepods"), None);
    }

    #[test]
    fn unlimited_is_none_in_both_versions() {
        assert_eq!(parse_limit("max\n", u64::MAX), None);
        assert_eq!(parse_limit("268435456\n", u64::MAX), Some(268435456));
        assert_eq!(parse_limit("9223372036854771712\n", V1_UNLIMITED), None);
        assert_eq!(parse_limit("104857600", V1_UNLIMITED), Some(104857600));
    }

    #[test]
    fn the_working_set_leaves_out_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "1000000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 300000\nfile 700000\ninactive_anon 0\ninactive_file 600000\nactive_file 100000\n",
        )
        .unwrap();
        let v2 = Accounting::V2(dir.path().into());
        assert_eq!(working_set(&v2).unwrap(), 300000);

        std::fs::write(dir.path().join("memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "cache 4000\ninactive_file 10\ntotal_inactive_file 3000\ntotal_active_file 500\n",
        )
        .unwrap();
        let v1 = Accounting::V1(dir.path().into());
        assert_eq!(working_set(&v1).unwrap(), 1500);
    }

    #[test]
    fn the_process_itself_is_measured_without_a_cgroup() {
        let rss = working_set(&Accounting::Process).unwrap();
        assert!(rss > 0 && rss < physical(), "{rss}");
    }
}
