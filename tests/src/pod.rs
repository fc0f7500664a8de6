//! A container of the rendered chart, run as a plain process: its volume
//! mounts laid out under a temporary root (the pod's mount namespace), the
//! absolute paths in its args and files relocated under that root, its env
//! resolved the way the kubelet resolves the downward API.

use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct Mount {
    pub path: String,
    pub read_only: bool,
}

/// The container's volume mounts.
pub fn mounts(container: &Value) -> Vec<Mount> {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Mount {
            path: m["mountPath"].as_str().unwrap().to_string(),
            read_only: m["readOnly"] == true,
        })
        .collect()
}

/// Rewrites every occurrence of a mount path (longest first, one pass, so
/// a relocated path is never relocated again) to the same path under `root`.
pub fn relocate(text: &str, mounts: &[Mount], root: &Path) -> String {
    let mut paths: Vec<&str> = mounts.iter().map(|m| m.path.as_str()).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut out = String::new();
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for p in &paths {
            if rest.starts_with(p) {
                out.push_str(&format!("{}{p}", root.display()));
                rest = &rest[p.len()..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The mount `path` lies on.
pub fn under<'a>(path: &str, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .find(|m| path == m.path || path.starts_with(&format!("{}/", m.path)))
}

/// Creates each mount point under `root`, as the kubelet would.
pub fn lay_out(mounts: &[Mount], root: &Path) {
    for m in mounts {
        std::fs::create_dir_all(format!("{}{}", root.display(), m.path)).unwrap();
    }
}

/// Where the volume mounted as `volume` lies under `root`.
pub fn mount_of(container: &Value, volume: &str, root: &Path) -> PathBuf {
    let m = crate::chart::named(&container["volumeMounts"], volume);
    PathBuf::from(format!(
        "{}{}",
        root.display(),
        m["mountPath"].as_str().unwrap()
    ))
}

/// The container's args as they are (for a process that sees the mounts
/// at their paths).
pub fn plain_args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The container's args, each absolute path on a mount and relocated.
pub fn args(container: &Value, mounts: &[Mount], root: &Path) -> Vec<String> {
    plain_args(container)
        .iter()
        .map(|a| {
            if a.starts_with('/') {
                assert!(under(a, mounts).is_some(), "argument {a} is on no mount");
            }
            relocate(a, mounts, root)
        })
        .collect()
}

/// The container's env for the pod `pod_name` (values and the downward
/// API's metadata.name).
pub fn env(container: &Value, pod_name: &str) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => v.clone(),
                (_, Value::String(f)) if f == "metadata.name" => pod_name.to_string(),
                _ => panic!("env {name}: {e}"),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The chart's MTA container laid out under a temporary root, as the
/// kubelet would lay out its pod: every mount created, the chart's
/// ConfigMap in the policy volume (its paths relocated under the root).
/// Secrets and other ConfigMaps are written by the caller with
/// [`ChartPod::mount_of`]; [`ChartPod::command`] is the container's
/// process with its args and env.
pub struct ChartPod {
    pub root: tempfile::TempDir,
    pub container: Value,
    pub mounts: Vec<Mount>,
}

impl ChartPod {
    pub fn new(docs: &[Value]) -> ChartPod {
        let sts = crate::chart::find(docs, "StatefulSet", "rel-sluice-mta");
        let container = sts["spec"]["template"]["spec"]["containers"][0].clone();
        let mounts = mounts(&container);
        let root = tempfile::tempdir().unwrap();
        lay_out(&mounts, root.path());
        let pod = ChartPod {
            root,
            container,
            mounts,
        };
        let chart_cm = crate::chart::find(docs, "ConfigMap", "rel-sluice-mta");
        let policy = pod.mount_of("policy");
        for (file, text) in chart_cm["data"].as_object().unwrap() {
            let text = relocate(text.as_str().unwrap(), &pod.mounts, pod.root.path());
            std::fs::write(policy.join(file), text).unwrap();
        }
        pod
    }

    /// Where the volume mounted as `volume` lies under the root.
    pub fn mount_of(&self, volume: &str) -> PathBuf {
        mount_of(&self.container, volume, self.root.path())
    }

    /// The container's port called `name`.
    pub fn port(&self, name: &str) -> u16 {
        crate::chart::named(&self.container["ports"], name)["containerPort"]
            .as_u64()
            .unwrap() as u16
    }

    /// `program` run as the container's process of pod `pod_name`: its args
    /// (relocated), its env, the root as working directory.
    pub fn command(
        &self,
        mut program: std::process::Command,
        pod_name: &str,
    ) -> std::process::Command {
        program
            .args(args(&self.container, &self.mounts, self.root.path()))
            .envs(env(&self.container, pod_name))
            .current_dir(self.root.path());
        program
    }
}
