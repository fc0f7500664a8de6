//! The map, checked against the code: the top-level modules of `mta/src`
//! import each other as a DAG (a layer may use the layers below it, never
//! one above), no source file is over 500 lines, and library code returns
//! typed errors, not `Result<_, String>`.
//!
//! References are found from the source text: every `crate::<module>`
//! outside comments (a `use` line or a path in code). `lib.rs` and
//! `main.rs` are the roots and may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text without `//` comments (doc comments included).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                match bytes[i] {
                    b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                    b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
                    _ => {}
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`queue` for `queue/timer.rs`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a text refers to through `crate::`.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // `x::crate::y` or `my_crate::y` is not this crate
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if !name.is_empty() && !preceded_by_ident {
            out.insert(name);
        }
        rest = after;
    }
    out
}

/// The module graph: module -> the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&file);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let entry = graph.entry(module.clone()).or_default();
        for used in references(&text) {
            if used != module {
                entry.insert(used);
            }
        }
    }
    graph
}

/// A cycle through the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut vec![], &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_modules_form_a_dag() {
    let graph = graph();
    assert!(graph.len() > 5, "found the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle: {}\nthe graph (module -> what it uses):\n{}",
            cycle.join(" -> "),
            graph
                .iter()
                .map(|(k, v)| format!(
                    "  {k} -> {}",
                    v.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn the_cycle_check_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            graph
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string());
        }
        graph
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap(),
        ["a", "b", "c", "a"]
    );
    assert_eq!(
        references("use crate::queue::Q; x::crate::no; let y = crate::log::f(); // crate::spool"),
        BTreeSet::from(["queue".to_string(), "log".to_string(), "spool".to_string()])
    );
    assert_eq!(
        references(&code(
            "let a = 1; // crate::spool::x\nlet u = \"http://x\"; crate::log::f();"
        )),
        BTreeSet::from(["log".to_string()])
    );
}

#[test]
fn no_file_is_over_500_lines() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 500)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "over 500 lines: {long:?}");
}

#[test]
fn library_code_returns_typed_errors() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let mut found = vec![];
    for file in files.iter().filter(|f| !f.ends_with("main.rs")) {
        let text = code(&std::fs::read_to_string(file).unwrap());
        for (i, line) in text.lines().enumerate() {
            let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if squeezed.contains(",String>") && squeezed.contains("Result<") {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Result<_, String> in library code:\n{}",
        found.join("\n")
    );
}
