//! A memory cgroup for one test process, made under the test's own cgroup:
//! cgroup v2 where its memory controller is available to us, else v1 (this
//! CI machine mounts a hybrid hierarchy whose memory controller is v1).
//! Removed on drop, after its processes have gone.

use std::path::{Path, PathBuf};

/// Which cgroup version the group was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy: `memory.max`, `memory.current`.
    V2,
    /// The v1 memory controller: `memory.limit_in_bytes`.
    V1,
}

/// A memory cgroup with a limit.
pub struct MemoryCgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// v1 or v2.
    pub version: Version,
}

fn own_group(controller_v1: bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (hierarchy, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match controller_v1 {
            true => controllers.split(',').any(|c| c == "memory"),
            false => hierarchy == "0" && controllers.is_empty(),
        };
        wanted.then(|| path.to_string())
    })
}

fn mount_of(fs_type: &str, option: Option<&str>) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        if right.next()? != fs_type {
            return None;
        }
        let supers = right.nth(1).unwrap_or("");
        if let Some(opt) = option
            && !supers.split(',').any(|o| o == opt)
        {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        Some((PathBuf::from(fields.get(4)?), fields.get(3)?.to_string()))
    })
}

fn under(mount: &Path, root: &str, group: &str) -> PathBuf {
    let rel = group
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(group);
    mount.join(rel.trim_start_matches('/'))
}

impl MemoryCgroup {
    /// A new group named `name` limited to `limit` bytes, or why none can be
    /// made here.
    pub fn create(name: &str, limit: u64) -> Result<MemoryCgroup, String> {
        if let (Some(group), Some((mount, root))) = (own_group(false), mount_of("cgroup2", None)) {
            let parent = under(&mount, &root, &group);
            let controllers = std::fs::read_to_string(parent.join("cgroup.controllers"));
            if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
                let dir = parent.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                std::fs::write(dir.join("memory.max"), limit.to_string())
                    .map_err(|e| format!("memory.max: {e}"))?;
                // no swap to hide in: the limit must bite
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                return Ok(MemoryCgroup {
                    dir,
                    version: Version::V2,
                });
            }
        }
        let group = own_group(true).ok_or("no memory controller in /proc/self/cgroup")?;
        let (mount, root) =
            mount_of("cgroup", Some("memory")).ok_or("no cgroup v1 memory mount")?;
        let dir = under(&mount, &root, &group).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("memory.limit_in_bytes: {e}"))?;
        let _ = std::fs::write(dir.join("memory.swappiness"), "0");
        Ok(MemoryCgroup {
            dir,
            version: Version::V1,
        })
    }

    /// The file a process's pid is written to, to move it in.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The most the group has used (v1 `max_usage_in_bytes`, v2 `memory.peak`
    /// where the kernel has it).
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How many times the kernel's OOM killer acted in the group.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // the test's processes are gone by now; a cgroup with none is removable
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
