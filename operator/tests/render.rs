//! The renderer on the example objects: the reviewed golden output, byte
//! stability, and the reasons invalid objects are left out.

mod common;

use common::*;
use sluice_operator::{crdgen, manifests, render};

#[test]
fn examples_render_to_the_reviewed_policy() {
    let rendered = render::render(&examples(), &render::Options::default());
    let rejected: Vec<_> = rendered.rejected().collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(rendered.verdicts.len(), 11);
    let lua = &rendered.files[render::POLICY_FILE];
    assert!(!lua.contains("s3cret"), "no Secret content in the output");
    insta::assert_snapshot!("examples.lua", lua);
    assert_eq!(rendered.hash, render::sha256_hex(lua.as_bytes()));
}

#[test]
fn rendering_does_not_depend_on_input_order() {
    let inputs = examples();
    let first = render::render(&inputs, &render::Options::default());
    let mut shuffled = inputs.clone();
    shuffled.queue_policies.reverse();
    shuffled.egress_pools.reverse();
    shuffled.egress_paths.rotate_left(1);
    let second = render::render(&shuffled, &render::Options::default());
    assert_eq!(first.files, second.files);
    assert_eq!(first.hash, second.hash);
}

/// Each `render` example, added to the valid set, is left out with the
/// expected reason and field; everything else still renders.
#[test]
fn invalid_objects_are_left_out_with_reason_and_field() {
    let mut seen = 0;
    for invalid in invalid_examples().iter().filter(|i| i.stage == "render") {
        let mut inputs = examples();
        let (extra, errors) =
            manifests::read_dir_files(std::slice::from_ref(&invalid.file), "default");
        assert!(errors.is_empty(), "{errors:?}");
        inputs.queue_policies.extend(extra.queue_policies);
        inputs.egress_pools.extend(extra.egress_pools);
        inputs.egress_paths.extend(extra.egress_paths);
        inputs.dkim_signers.extend(extra.dkim_signers);
        let rendered = render::render(&inputs, &render::Options::default());
        let rejected: Vec<_> = rendered.rejected().collect();
        assert_eq!(
            rejected.len(),
            1,
            "{}: {rejected:?}",
            invalid.file.display()
        );
        let (object, rejection) = rejected[0];
        let (reason, text) = invalid.expect.split_once(' ').unwrap();
        assert_eq!(rejection.reason, reason, "{object}: {}", rejection.message);
        assert!(
            rejection.message.contains(text),
            "{object}: {:?} does not contain {text:?}",
            rejection.message
        );
        assert_eq!(rendered.verdicts.len(), 12);
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} render examples");
}

#[test]
fn a_queue_policy_becomes_valid_when_its_pool_appears() {
    let mut inputs = examples();
    let pool = inputs.egress_pools.remove(1); // relay
    assert_eq!(kube::ResourceExt::name_any(&pool), "relay");
    let without = render::render(&inputs, &render::Options::default());
    let (object, rejection) = without.rejected().next().expect("smarthost rejected");
    assert_eq!(object.name, "smarthost");
    assert_eq!(rejection.reason, "EgressPoolNotFound");
    inputs.egress_pools.push(pool);
    let with = render::render(&inputs, &render::Options::default());
    assert_eq!(with.rejected().count(), 0);
}

/// `crds/` and the chart's copy are what `sluice-operator crdgen` prints
/// today, and nothing else.
#[test]
fn committed_crds_are_fresh() {
    let generated = crdgen::crds();
    for dir in ["crds", "charts/sluice/files/crds"] {
        for (name, yaml) in &generated {
            let path = root().join(dir).join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                &committed == yaml,
                "{} is stale: run `cargo run -p sluice-operator -- crdgen -o {dir}`",
                path.display()
            );
        }
        let mut present: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(present, expected, "{dir} holds files crdgen does not write");
    }
}

#[test]
fn render_command_writes_the_policy_and_fails_on_invalid_input() {
    let bin = env!("CARGO_BIN_EXE_sluice-operator");
    let out = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(root().join("examples/operator"))
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let written = std::fs::read_to_string(out.path().join(render::POLICY_FILE)).unwrap();
    let expected = render::render(&examples(), &render::Options::default());
    assert_eq!(written, expected.files[render::POLICY_FILE]);

    let bad = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(root().join("examples/operator/invalid"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    // objects the API server would refuse, and objects the operator leaves out
    for expected in [
        "wrong-type.yaml: EgressPath default/wrong-type: spec.connectionLimit: invalid type: string \"lots\"",
        "QueuePolicy default/bad-throttle: spec.maxMessageRate: invalid throttle \"100 per hour\"",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }

    // a typo in a field name is caught with the file, the object and the field
    let typo = tempfile::tempdir().unwrap();
    std::fs::write(
        typo.path().join("qp.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: QueuePolicy\nmetadata: {name: typo}\nspec:\n  maxAgee: 1 day\n",
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(typo.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("qp.yaml: QueuePolicy default/typo: spec.maxAgee: unknown field"),
        "{stderr}"
    );
}
