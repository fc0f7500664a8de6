//! The policy's files: the policy and what sits beside it (modules it may
//! `require`, data files it may read), and the snapshot of its Lua modules
//! taken when a version is loaded.
//!
//! Every Lua state of one policy version `require`s from that snapshot, not
//! from disk: states are made lazily (under load, after a pool's spare ones
//! are used), and one made after the files changed would otherwise run the
//! new module beside states running the old, within one config epoch.

use mlua::{Lua, Table, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File kinds a policy may `require`, `dofile` or read.
pub const WATCHED_EXTENSIONS: &[&str] = &["lua", "json", "toml", "yaml", "yml"];

/// The policy file and the policy-like files beside it (three directories
/// deep), sorted. Names starting with `.` are skipped: they are the
/// kubelet's `..data`/`..2026_...` directories, seen through the visible
/// symlinks.
pub fn policy_files(policy: &Path) -> Vec<PathBuf> {
    let mut files = vec![policy.to_path_buf()];
    if let Some(dir) = policy.parent() {
        collect(dir, 0, &mut files);
    }
    files.sort();
    files.dedup();
    files
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            if depth < 3 {
                collect(&path, depth + 1, out);
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| WATCHED_EXTENSIONS.contains(&e))
        {
            out.push(path);
        }
    }
}

/// The Lua modules beside a policy, as read when its version was loaded.
#[derive(Debug, Default)]
pub struct Snapshot {
    modules: BTreeMap<PathBuf, String>,
}

impl Snapshot {
    /// Read every `.lua` file beside `policy` (unreadable ones are left to
    /// the file searcher, which reports them when required).
    pub fn take(policy: &Path) -> Snapshot {
        let modules = policy_files(policy)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "lua") && f != policy)
            .filter_map(|f| Some((f.clone(), std::fs::read_to_string(&f).ok()?)))
            .collect();
        Snapshot { modules }
    }

    /// How many modules it holds.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Put a searcher before Lua's file searcher that finds `require`d names
    /// along `package.path` in the snapshot; names not in it (system
    /// modules) go on to the file searcher.
    pub fn install(self: &Arc<Self>, lua: &Lua) -> mlua::Result<()> {
        if self.modules.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        let searcher = lua.create_function(move |lua, name: String| {
            let package: Table = lua.globals().get("package")?;
            let path: String = package.get("path")?;
            let file = name.replace('.', "/");
            for template in path.split(';') {
                let candidate = PathBuf::from(template.replace('?', &file));
                if let Some(code) = me.modules.get(&candidate) {
                    let chunk = lua
                        .load(code.as_str())
                        .set_name(format!("@{}", candidate.display()))
                        .into_function()?;
                    let shown = candidate.display().to_string();
                    return Ok((
                        Value::Function(chunk),
                        Value::String(lua.create_string(shown)?),
                    ));
                }
            }
            let why = format!("\n\tno module '{name}' in the policy's snapshot");
            Ok((Value::String(lua.create_string(why)?), Value::Nil))
        })?;
        let package: Table = lua.globals().get("package")?;
        let searchers: Table = package.get("searchers")?;
        // after the preload searcher, before the file searcher
        searchers.raw_insert(2, searcher)?;
        Ok(())
    }
}
