//! A kubelet-like projector: keeps a directory equal to a projected volume
//! of ConfigMaps read from the API server, written the way the kubelet's
//! atomic writer does it. The files live in a timestamped directory
//! (`..<seconds>.<nanoseconds>`; the kubelet's is
//! `..2026_11_22_10_00_00.123456789`), `..data` is a symlink to it that is
//! swapped with a rename, and each key is a symlink `key -> ..data/key`.

use crate::kube::{ApiServer, Kubectl};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Writes `files` into `dir` atomically, as the kubelet does; `false` when
/// the directory already holds exactly them.
pub fn project(dir: &Path, files: &BTreeMap<String, String>) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data) {
        let same = files.iter().all(|(k, v)| {
            std::fs::read_to_string(dir.join(&current).join(k))
                .ok()
                .as_ref()
                == Some(v)
        }) && std::fs::read_dir(dir.join(&current)).unwrap().count() == files.len();
        if same {
            return false;
        }
    }
    let stamp = timestamp();
    let new_dir = dir.join(format!("..{stamp}"));
    std::fs::create_dir(&new_dir).unwrap();
    for (k, v) in files {
        std::fs::write(new_dir.join(k), v).unwrap();
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    for k in files.keys() {
        let link = dir.join(k);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{k}"), &link).unwrap();
        }
    }
    // keys that are gone, then the old payload
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !files.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    true
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// A projected volume kept in sync with ConfigMaps on the API server, every
/// `period`, plus static files (e.g. the chart's own ConfigMap).
pub struct Projector {
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Projector {
    pub fn start(
        api: &ApiServer,
        namespace: &str,
        configmaps: &[&str],
        fixed: BTreeMap<String, String>,
        dir: PathBuf,
        period: Duration,
    ) -> Projector {
        let stop = Arc::new(AtomicBool::new(false));
        let kubectl: Kubectl = api.client();
        let namespace = namespace.to_string();
        let names: Vec<String> = configmaps.iter().map(|n| n.to_string()).collect();
        let (d, s) = (dir.clone(), stop.clone());
        let sync = move || {
            let mut files = fixed.clone();
            for name in &names {
                // optional sources: a missing ConfigMap adds nothing
                if let Some(cm) = kubectl.get_json(&["get", "configmap", name, "-n", &namespace]) {
                    for (k, v) in cm["data"].as_object().into_iter().flatten() {
                        files.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
            }
            project(&d, &files);
        };
        sync();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                sync();
            }
        });
        Projector {
            dir,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn writes_like_the_kubelet_and_swaps_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(project(d, &files(&[("a.lua", "1"), ("b.lua", "2")])));
        let first = std::fs::read_link(d.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        assert_eq!(
            std::fs::read_link(d.join("a.lua")).unwrap(),
            Path::new("..data/a.lua")
        );
        assert_eq!(std::fs::read_to_string(d.join("b.lua")).unwrap(), "2");
        // the same content: nothing written
        assert!(!project(d, &files(&[("a.lua", "1"), ("b.lua", "2")])));
        // a change: a new payload, the old one gone, a removed key gone
        assert!(project(d, &files(&[("a.lua", "3")])));
        let second = std::fs::read_link(d.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!d.join(&first).exists());
        assert_eq!(std::fs::read_to_string(d.join("a.lua")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(d.join("b.lua")).is_err());
    }
}
