//! Reading custom resources from YAML files (for `render -f DIR`), with
//! errors that name the file, the object and the field.

use crate::crd::{GROUP, VERSION};
use crate::render::Inputs;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A problem with a file, or with one object in it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {object}{message}")]
pub struct ManifestError {
    /// The file (or directory) at fault.
    pub file: String,
    /// `Kind namespace/name: ` when known.
    pub object: String,
    /// What is wrong, with the field path when known.
    pub message: String,
}

/// The sluice.dev objects in `dir`'s `*.yaml`/`*.yml` files (other kinds
/// are skipped), for namespace `namespace` (objects without one count as
/// in it), and every problem found (objects with one are left out).
pub fn read_dir(dir: &Path, namespace: &str) -> (Inputs, Vec<ManifestError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) => {
            let error = ManifestError {
                file: dir.display().to_string(),
                object: String::new(),
                message: e.to_string(),
            };
            return (Inputs::default(), vec![error]);
        }
    };
    files.sort();
    read_dir_files(&files, namespace)
}

/// As `read_dir`, for the given files.
pub fn read_dir_files(files: &[PathBuf], namespace: &str) -> (Inputs, Vec<ManifestError>) {
    let mut inputs = Inputs::default();
    let mut errors = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ManifestError {
                    file: name,
                    object: String::new(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = match Value::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    errors.push(ManifestError {
                        file: name.clone(),
                        object: String::new(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            if let Err(e) = add(&mut inputs, value, namespace) {
                errors.push(ManifestError {
                    file: name.clone(),
                    object: e.0,
                    message: e.1,
                });
            }
        }
    }
    (inputs, errors)
}

/// Add one document; `Err((object, message))`.
fn add(inputs: &mut Inputs, value: Value, namespace: &str) -> Result<(), (String, String)> {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    if api_version.split('/').next() != Some(GROUP) {
        return Ok(());
    }
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let ns = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or(namespace)
        .to_string();
    let object = format!("{kind} {ns}/{name}: ");
    if api_version != format!("{GROUP}/{VERSION}") {
        return Err((
            object,
            format!("apiVersion {api_version:?} is not served; use {GROUP}/{VERSION}"),
        ));
    }
    if ns != namespace {
        return Ok(());
    }
    let err = |m: String| (object.clone(), m);
    match kind.as_str() {
        "QueuePolicy" => inputs.queue_policies.push(parse(value).map_err(err)?),
        "EgressPool" => inputs.egress_pools.push(parse(value).map_err(err)?),
        "EgressPath" => inputs.egress_paths.push(parse(value).map_err(err)?),
        "DkimSigner" => inputs.dkim_signers.push(parse(value).map_err(err)?),
        other => return Err(err(format!("unknown kind {other:?} in {GROUP}"))),
    }
    Ok(())
}

/// Typed, with the field path of a type error, and unknown fields
/// reported (the API server would prune them silently).
fn parse<T: DeserializeOwned + serde::Serialize>(value: Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if let Some(path) = unknown_field(&value["spec"], &back["spec"], "spec") {
        return Err(format!("{path}: unknown field"));
    }
    Ok(typed)
}

/// The first key of `input` that the typed round trip dropped.
fn unknown_field(input: &Value, typed: &Value, path: &str) -> Option<String> {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().collect();
            keys.sort();
            for k in keys {
                let v = &a[k];
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None if !v.is_null() && !is_empty(v) => return Some(here),
                    None => {}
                    Some(t) => {
                        if let Some(p) = unknown_field(v, t, &here) {
                            return Some(p);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| unknown_field(x, y, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Values a typed round trip may drop without loss (defaults left out).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        _ => false,
    }
}
