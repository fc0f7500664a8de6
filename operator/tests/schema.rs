//! The example objects against the generated CRD schemas, checked by the
//! jsonschema package (what admission checks, less the CEL rules).

mod common;

use common::*;
use serde_json::Value;

fn validate(paths: &[std::path::PathBuf]) -> Vec<Value> {
    let out = std::process::Command::new("python3")
        .arg(root().join("tests/clients/validate_crs.py"))
        .arg(root().join("crds"))
        .args(paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    let results = validate(&[root().join("examples/operator")]);
    assert_eq!(results.len(), 11);
    for r in &results {
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    }
}

#[test]
fn the_dkim_example_validates_against_its_crd_schema() {
    let results = validate(&[root().join("examples/operator/dkim")]);
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r["kind"], "DkimSigner", "{r}");
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    }
}

#[test]
fn invalid_examples_are_rejected_by_the_schema_with_their_message() {
    let schema_cases: Vec<Invalid> = invalid_examples()
        .into_iter()
        .filter(|i| i.stage == "schema")
        .collect();
    assert!(schema_cases.len() >= 3);
    for case in schema_cases {
        let results = validate(std::slice::from_ref(&case.file));
        assert_eq!(results.len(), 1);
        let errors = results[0]["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e.as_str().unwrap().contains(&case.expect)),
            "{}: {errors:?} lacks {:?}",
            case.file.display(),
            case.expect
        );
    }
    // the render-stage examples are well-formed: only the operator catches them
    for case in invalid_examples().iter().filter(|i| i.stage == "render") {
        let results = validate(std::slice::from_ref(&case.file));
        assert_eq!(
            results[0]["errors"],
            serde_json::json!([]),
            "{}",
            case.file.display()
        );
    }
}
