//! The table against KumoMTA's reference, and the docs rendered from it.

use super::{Status, keys};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

#[test]
fn the_table_has_a_row_for_every_reference_key_and_no_other() {
    let reference: BTreeSet<(String, String)> = include_str!("reference-keys.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (f, k) = l.split_once(' ').expect("constructor key");
            (f.to_owned(), k.to_owned())
        })
        .collect();
    let mut rows = BTreeSet::new();
    for k in keys() {
        assert!(
            rows.insert((k.constructor.clone(), k.key.clone())),
            "{} {} twice",
            k.constructor,
            k.key
        );
    }
    let missing: Vec<_> = reference.difference(&rows).collect();
    let extra: Vec<_> = rows.difference(&reference).collect();
    assert!(missing.is_empty(), "no row for {missing:?}");
    assert!(extra.is_empty(), "not KumoMTA keys: {extra:?}");
}

#[test]
fn every_row_says_why_and_how_its_value_is_checked() {
    for k in keys() {
        let name = format!("{} {}", k.constructor, k.key);
        match k.status {
            Status::Implemented => {
                assert!(k.reason.is_none() && k.accepts.is_none(), "{name}");
                assert!(k.shape.is_none(), "{name}: the typed config checks it");
            }
            Status::Ignored | Status::Pending => {
                assert!(k.reason.as_ref().is_some_and(|r| r.len() > 10), "{name}");
                assert!(
                    k.typed != k.shape.is_some(),
                    "{name}: either the typed config or `type` checks the value"
                );
            }
        }
        if k.status != Status::Pending {
            assert!(k.accepts.is_none(), "{name}: accepts is for pending keys");
        }
        assert!(!k.example.is_empty(), "{name}");
        if let Some(t) = &k.test {
            let file = root().join("tests/tests").join(format!("{t}.rs"));
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                text.contains(&k.key),
                "{name}: {} does not set it",
                file.display()
            );
        }
    }
}

/// The markdown table in docs/kumo-config-keys.md.
fn render() -> String {
    let mut out = String::from(
        "# KumoMTA config keys in Sluice\n\n\
         <!-- Rendered from mta/src/policy/kumo_keys/keys.toml by its unit test:\n\
         SLUICE_UPDATE_DOCS=1 cargo test -p sluice-mta kumo_keys. Do not edit. -->\n\n\
         Every key of KumoMTA's config constructors, as its reference lists them, \
         and what Sluice does with it:\n\n\
         * **implemented**: read with KumoMTA's meaning;\n\
         * **ignored**: accepted and logged once as ignored, because it cannot apply to Sluice;\n\
         * **pending**: not built yet. The values listed ask for what Sluice does anyway and \
         are accepted (logged once); any other value is refused with the reason, at \
         `--validate` when the policy calls the constructor there.\n\n\
         A key KumoMTA does not have is an error naming it. The `kumo_keys` test sets every \
         key below through `sluice-mta --validate`; where another test shows what the key \
         does, the tests column names it (`tests/tests/<name>.rs`).\n",
    );
    let counts = |s: Status| keys().iter().filter(|k| k.status == s).count();
    out.push_str(&format!(
        "\n{} keys: {} implemented, {} ignored, {} pending.\n",
        keys().len(),
        counts(Status::Implemented),
        counts(Status::Ignored),
        counts(Status::Pending)
    ));
    let mut constructor = "";
    for k in keys() {
        if k.constructor != constructor {
            constructor = &k.constructor;
            out.push_str(&format!(
                "\n## kumo.{constructor}\n\n| key | status | notes | tests |\n|---|---|---|---|\n"
            ));
        }
        let status = match k.status {
            Status::Implemented => "implemented".to_string(),
            Status::Ignored => "ignored".to_string(),
            Status::Pending => match &k.accepts {
                Some(a) if a.is_empty() => "pending".to_string(),
                Some(a) => format!(
                    "pending; accepts {}",
                    a.iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "pending; accepts any value".to_string(),
            },
        };
        let mut names = vec!["kumo_keys".to_string()];
        names.extend(k.test.iter().cloned());
        out.push_str(&format!(
            "| `{}` | {status} | {} | {} |\n",
            k.key,
            k.reason.as_deref().unwrap_or(""),
            names.join(", ")
        ));
    }
    out
}

#[test]
fn the_docs_table_is_rendered_from_the_key_table() {
    let path = root().join("docs/kumo-config-keys.md");
    let want = render();
    if std::env::var_os("SLUICE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("writable docs");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    // README's summary quotes the counts
    let count = |s: Status| keys().iter().filter(|k| k.status == s).count();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let summary = format!(
        "of KumoMTA's {} keys, {} are implemented\nwith KumoMTA's meaning, {} are ignored",
        keys().len(),
        count(Status::Implemented),
        count(Status::Ignored)
    );
    assert!(readme.contains(&summary), "README.md must say: {summary}");
    let pending = format!("and {} are not built yet.", count(Status::Pending));
    assert!(readme.contains(&pending), "README.md must say: {pending}");
    assert!(
        have == want,
        "{} is stale: run SLUICE_UPDATE_DOCS=1 cargo test -p sluice-mta kumo_keys",
        path.display()
    );
}
