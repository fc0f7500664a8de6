//! The Helm chart, rendered by a real helm binary.

use crate::kube::tool;
use crate::workspace_root;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub const RELEASE: &str = "rel";
pub const NAMESPACE: &str = "mail";

pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/sluice")
}

/// `helm <args>` in the chart's directory: Ok(stdout) or Err(stderr).
pub fn helm(args: &[&str]) -> Result<String, String> {
    let o = Command::new(tool("helm"))
        .args(args)
        .current_dir(chart_dir())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("sluice-helm-cache"),
        )
        .output()
        .expect("helm runs");
    match o.status.success() {
        true => Ok(String::from_utf8(o.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
    }
}

/// `helm template` of the chart with a values file (relative to the chart)
/// and `--set` assignments.
pub fn template(values: Option<&str>, sets: &[&str]) -> Result<String, String> {
    let mut args = vec!["template", RELEASE, ".", "--namespace", NAMESPACE];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    for s in sets {
        // `json:key=[]` for what --set cannot say (an empty list)
        match s.strip_prefix("json:") {
            Some(json) => args.extend(["--set-json", json]),
            None => args.extend(["--set", s]),
        }
    }
    helm(&args)
}

/// The objects of a multi-document YAML stream, as JSON values.
pub fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v = serde_yaml::Value::deserialize(d).expect("helm writes YAML");
            (!v.is_null()).then(|| serde_json::to_value(v).expect("JSON-compatible YAML"))
        })
        .collect()
}

/// The object of `kind` called `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

/// The entry called `name` of a Kubernetes list (containers, ports,
/// volumes, volumeMounts...).
pub fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

/// The values files under `charts/sluice/ci/`, sorted.
pub fn ci_values() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| format!("ci/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with("-values.yaml"))
        .collect();
    files.sort();
    files
}
