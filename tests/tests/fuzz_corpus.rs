//! Every file of every fuzz corpus (`fuzz/corpus/<target>/`: the seeds,
//! what the fuzzers found interesting, and the inputs of crashes once
//! fixed) replayed through the same checks the fuzz targets run, so the
//! ordinary test run keeps each fix. `bench/fuzz.sh` does the fuzzing.

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = sluice_tests::workspace_root()
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let result = std::panic::catch_unwind(|| check(&bytes));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn smtp_command_corpus() {
    replay("smtp_command", checks::smtp_command);
}

#[test]
fn spool_scan_corpus() {
    replay("spool_scan", checks::spool_scan);
}

#[test]
fn headers_corpus() {
    replay("headers", checks::headers);
}

#[test]
fn data_reader_corpus() {
    replay("data_reader", checks::data_reader);
}

#[test]
fn cr_validation_corpus() {
    replay("cr_validation", checks::cr_validation);
}

#[test]
fn smtp_session_corpus() {
    replay("smtp_session", checks::smtp_session);
}

#[test]
fn admin_api_corpus() {
    replay("admin_api", checks::admin_api);
}
