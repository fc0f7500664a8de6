//! A small tmpfs volume mounted for one test (a spool or log volume that can
//! really fill up). Needs root, as the network-namespace tests do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` reads it: `6m`) at
    /// `path`, creating the directory.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount is installed");
        assert!(
            o.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Bytes in use on the volume.
    pub fn used(&self) -> u64 {
        let o = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.path)
            .output()
            .expect("df is installed");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df: {}", String::from_utf8_lossy(&o.stdout)))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // lazily: a process of the test may still have files open there
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
