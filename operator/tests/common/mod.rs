//! Shared by the operator's integration tests.
#![allow(dead_code)]

use sluice_operator::{manifests, render};
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn examples() -> render::Inputs {
    let (inputs, errors) = manifests::read_dir(&root().join("examples/operator"), "default");
    assert!(errors.is_empty(), "{errors:?}");
    inputs
}

/// An invalid example: its objects, and its `# expect: STAGE TEXT` line.
pub struct Invalid {
    pub file: PathBuf,
    pub stage: String,
    pub expect: String,
}

pub fn invalid_examples() -> Vec<Invalid> {
    let dir = root().join("examples/operator/invalid");
    let mut out: Vec<Invalid> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no '# expect:' line", file.display()));
            let (stage, expect) = line.split_once(' ').unwrap();
            Invalid {
                file,
                stage: stage.into(),
                expect: expect.into(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}
