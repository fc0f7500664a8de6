//! The real `sluice-operator run` against the stand-in API server, driven
//! with a real kubectl: the generated ConfigMap, each object's status, the
//! rollout read from a real sluice-mta's admin API, cross-references that
//! heal, and a burst of objects rendered once.

use serde_json::Value;
use sluice_tests::kube::{ApiServer, Operator};
use sluice_tests::projector::Projector;
use sluice_tests::*;
use std::time::Duration;

const POLICY_FILE: &str = "sluice-generated.lua";

fn root_path(rel: &str) -> String {
    workspace_root().join(rel).display().to_string()
}

fn configmap(api: &ApiServer) -> Option<Value> {
    api.get_json(&["get", "configmap", "sluice-policy"])
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c["status"] == status)
}

/// What `sluice-operator render` makes of the same files.
fn offline_render(dir: &str) -> String {
    offline_render_split(dir, 1)
}

/// The same, each limit split across `pods`.
fn offline_render_split(dir: &str, pods: u32) -> String {
    let o = std::process::Command::new(binary("sluice-operator"))
        .args(["render", "-f", dir, "--split-across", &pods.to_string()])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

/// The MTA StatefulSet `sluice-mta` with `replicas`, applied.
fn apply_statefulset(api: &ApiServer, replicas: u32) {
    let sts = api.dir.path().join("sts.yaml");
    std::fs::write(
        &sts,
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: sluice-mta}}\nspec:\n  replicas: {replicas}\n  \
             serviceName: sluice-mta\n  selector: {{matchLabels: {{app.kubernetes.io/component: mta}}}}\n  template:\n    \
             metadata: {{labels: {{app.kubernetes.io/component: mta}}}}\n    spec: {{containers: [{{name: mta, image: sluice-mta}}]}}\n"
        ),
    )
    .unwrap();
    api.kubectl_ok(&["apply", "--server-side", "-f", sts.to_str().unwrap()]);
}

/// A real MTA "pod": its policy directory is a projected volume kept in
/// sync with the ConfigMap the way the kubelet writes it (`..data` swapped
/// atomically), holding the pod's own init policy, which requires the
/// generated file.
fn start_mta(api: &ApiServer, admin: u16) -> (Mta, Projector) {
    let mut mta = Mta::prepare(&policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "",
        "require 'sluice-generated'",
    ));
    let init = std::fs::read_to_string(&mta.policy_path).unwrap();
    let projector = Projector::start(
        api,
        "default",
        &["sluice-policy"],
        [("init.lua".to_string(), init)].into(),
        mta.path("policy"),
        Duration::from_millis(300),
    );
    mta.policy_path = mta.path("policy/init.lua");
    mta.args = vec!["--reload-interval".into(), "300ms".into()];
    mta.spawn();
    (mta, projector)
}

/// A Pod object for the MTA: selected by the operator, its admin port in
/// an annotation.
fn register_pod(api: &ApiServer, name: &str, admin: u16) {
    api.register_pod(
        "default",
        name,
        &serde_json::json!({"app.kubernetes.io/component": "mta"}),
        &serde_json::json!({"sluice.dev/admin-port": admin.to_string()}),
    );
}

#[test]
fn operator_renders_reports_status_and_follows_the_rollout() {
    let api = ApiServer::start();
    api.kubectl_ok(&["apply", "--server-side", "-f", &root_path("crds")]);
    // the StatefulSet that owns the ConfigMap
    let sts = api.dir.path().join("sts.yaml");
    std::fs::write(
        &sts,
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: sluice-mta}\nspec:\n  serviceName: sluice-mta\n  \
         selector: {matchLabels: {app.kubernetes.io/component: mta}}\n  template:\n    metadata: {labels: {app.kubernetes.io/component: mta}}\n    \
         spec: {containers: [{name: mta, image: sluice-mta}]}\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", sts.to_str().unwrap()]);
    let operator = Operator::start(&api, &["--fleet", "sluice-mta", "--debounce", "500ms"]);

    // 1. the examples: one ConfigMap, byte-identical to the offline render
    // (the operator may render the fleet before it sees the examples, so
    // the test waits for the render that holds them all)
    api.kubectl_ok(&["apply", "-f", &root_path("examples/operator")]);
    let expected = offline_render(&root_path("examples/operator"));
    let rendered = |a: &ApiServer| {
        configmap(a).and_then(|cm| cm["data"][POLICY_FILE].as_str().map(str::to_string))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rendered(&api).as_deref() != Some(expected.as_str())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rendered(&api).as_deref(), Some(expected.as_str()));
    let cm = configmap(&api).unwrap();
    let hash = cm["metadata"]["annotations"]["sluice.dev/config-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("StatefulSet"), Some("sluice-mta"))
    );

    // 2. status: accepted, no MTA pods yet
    api.wait_for("accepted queue policies", Duration::from_secs(20), |a| {
        let list = a.get_json(&["get", "queuepolicies"]).unwrap();
        let items = list["items"].as_array().unwrap();
        items.len() == 6 && items.iter().all(|o| is(o, "Accepted", "True"))
    });
    let qp = api.get_json(&["get", "qp", "smarthost"]).unwrap();
    assert_eq!(
        qp["status"]["observedGeneration"],
        qp["metadata"]["generation"]
    );
    assert_eq!(qp["status"]["configHash"], hash.as_str());
    assert_eq!(condition(&qp, "Ready").unwrap()["reason"], "NoMtaPods");

    // 3. a real MTA loads the ConfigMap: Ready, with kubectl wait
    let admin = free_port();
    let (mut mta, _projector) = start_mta(&api, admin);
    register_pod(&api, "sluice-mta-0", admin);
    api.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "queuepolicies,egresspools,egresspaths",
        "--all",
        "--timeout=30s",
    ]);
    let qp = api.get_json(&["get", "qp", "smarthost"]).unwrap();
    assert_eq!(qp["status"]["pods"], "1/1");
    let table = api.kubectl_ok(&["get", "qp"]);
    assert!(
        table.contains("READY") && table.contains("RolloutComplete"),
        "{table}"
    );
    let writes = operator.metric("sluice_operator_configmap_writes_total{}");
    assert_eq!(writes, 1.0);

    // 4. an object naming a missing pool is left out, the rest keeps serving
    api.kubectl_ok(&[
        "apply",
        "-f",
        &root_path("examples/operator/invalid/unknown-pool.yaml"),
    ]);
    api.wait_for("the rejection", Duration::from_secs(20), |a| {
        let o = a.get_json(&["get", "qp", "unknown-pool"]).unwrap();
        condition(&o, "Accepted").is_some_and(|c| c["reason"] == "EgressPoolNotFound")
    });
    let rejected = api.get_json(&["get", "qp", "unknown-pool"]).unwrap();
    assert!(is(&rejected, "Ready", "False"));
    assert!(is(&rejected, "Stalled", "True"));
    assert!(
        condition(&rejected, "Accepted").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("spec.egressPool: EgressPool \"nowhere\" does not exist"),
        "{rejected}"
    );
    assert_eq!(
        configmap(&api).unwrap()["metadata"]["annotations"]["sluice.dev/config-hash"],
        hash.as_str()
    );
    assert!(is(
        &api.get_json(&["get", "qp", "smarthost"]).unwrap(),
        "Ready",
        "True"
    ));
    let events = api.get_json(&["get", "events.v1.events.k8s.io"]).unwrap();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "ConfigRejected" && e["regarding"]["name"] == "unknown-pool"),
        "{events}"
    );

    // 5. the pool appears: the object heals by itself, a new config rolls out
    let pool = api.dir.path().join("nowhere.yaml");
    std::fs::write(
        &pool,
        "apiVersion: sluice.dev/v1alpha1\nkind: EgressPool\nmetadata: {name: nowhere}\nspec:\n  sources: [{name: nowhere-1}]\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", pool.to_str().unwrap()]);
    api.wait_for("a new config", Duration::from_secs(20), |a| {
        configmap(a).unwrap()["metadata"]["annotations"]["sluice.dev/config-hash"] != hash.as_str()
    });
    // statuses are written right after the ConfigMap
    api.wait_for("the healed object accepted", Duration::from_secs(10), |a| {
        is(
            &a.get_json(&["get", "qp", "unknown-pool"]).unwrap(),
            "Accepted",
            "True",
        )
    });
    api.wait_for("the rollout in progress", Duration::from_secs(10), |a| {
        let o = a.get_json(&["get", "qp", "smarthost"]).unwrap();
        is(&o, "Reconciling", "True") || is(&o, "Ready", "True")
    });
    // the projector carries the new ConfigMap into the pod's directory
    api.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "qp",
        "--all",
        "--timeout=30s",
    ]);

    // 6. a burst of 40 objects is one render and one ConfigMap write
    let before = operator.metric("sluice_operator_configmap_writes_total{}");
    let burst: String = (0..40)
        .map(|i| {
            format!(
                "---\napiVersion: sluice.dev/v1alpha1\nkind: QueuePolicy\nmetadata: {{name: burst-{i}}}\nspec:\n  match: {{domains: [burst-{i}.example.com]}}\n  maxAge: 1 day\n"
            )
        })
        .collect();
    let file = api.dir.path().join("burst.yaml");
    std::fs::write(&file, burst).unwrap();
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    api.wait_for("the burst rendered", Duration::from_secs(30), |a| {
        configmap(a).unwrap()["data"][POLICY_FILE]
            .as_str()
            .unwrap()
            .contains("burst-39.example.com")
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = operator.metric("sluice_operator_configmap_writes_total{}");
    assert_eq!(after - before, 1.0, "one write for the burst");
    assert_eq!(
        operator.metric("sluice_operator_reconcile_failures_total{error=api}"),
        0.0,
        "{}",
        operator.log()
    );
    mta.stop();
}

/// An edit that breaks an accepted QueuePolicy: the config keeps its last
/// accepted spec (its mail does not fall silently to another policy), the
/// status says `Accepted=False` with the rejection and `Ready=True` with
/// `ServingLastAccepted`, an operator restart changes nothing, and a valid
/// edit takes over. Before, the object dropped out of the config.
#[test]
fn a_broken_edit_keeps_serving_the_last_accepted_spec() {
    let api = ApiServer::start();
    api.kubectl_ok(&["apply", "--server-side", "-f", &root_path("crds")]);
    let args = ["--fleet", "sluice-mta", "--debounce", "300ms"];
    let operator = Operator::start(&api, &args);
    let file = api.dir.path().join("kept.yaml");
    let apply = |rate: &str| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: QueuePolicy\nmetadata: {{name: kept}}\nspec:\n  \
                 match: {{domains: [kept.example.com]}}\n  maxMessageRate: {rate}\n"
            ),
        )
        .unwrap();
        api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    };
    let policy_text = |a: &ApiServer| {
        configmap(a)
            .and_then(|cm| cm["data"][POLICY_FILE].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    apply("10/h");
    api.wait_for("the first spec rendered", Duration::from_secs(20), |a| {
        policy_text(a).contains("kept.example.com") && policy_text(a).contains("10/h")
    });
    // a real MTA runs the config
    let admin = free_port();
    let (mut mta, _projector) = start_mta(&api, admin);
    register_pod(&api, "sluice-mta-0", admin);
    api.kubectl_ok(&["wait", "--for=condition=Ready", "qp/kept", "--timeout=30s"]);

    apply("100 per hour");
    api.wait_for("the rejection", Duration::from_secs(20), |a| {
        let o = a.get_json(&["get", "qp", "kept"]).unwrap();
        condition(&o, "Accepted").is_some_and(|c| c["reason"] == "InvalidThrottle")
    });
    api.wait_for(
        "served from the last accepted spec",
        Duration::from_secs(20),
        |a| {
            let o = a.get_json(&["get", "qp", "kept"]).unwrap();
            condition(&o, "Ready").is_some_and(|c| c["reason"] == "ServingLastAccepted")
        },
    );
    let o = api.get_json(&["get", "qp", "kept"]).unwrap();
    assert!(is(&o, "Ready", "True"), "{o}");
    assert!(is(&o, "Accepted", "False"), "{o}");
    assert_eq!(o["status"]["lastAcceptedGeneration"], 1, "{o}");
    let text = policy_text(&api);
    assert!(
        text.contains("kept.example.com") && text.contains("10/h"),
        "the last accepted spec is still in the config:\n{text}"
    );

    // a restarted operator still knows the last accepted spec
    drop(operator);
    let operator = Operator::start(&api, &args);
    std::thread::sleep(Duration::from_secs(2));
    let text = policy_text(&api);
    assert!(text.contains("10/h"), "after a restart:\n{text}");

    apply("20/h");
    api.wait_for("the valid edit rendered", Duration::from_secs(20), |a| {
        policy_text(a).contains("20/h") && !policy_text(a).contains("10/h")
    });
    api.wait_for("accepted again", Duration::from_secs(20), |a| {
        is(
            &a.get_json(&["get", "qp", "kept"]).unwrap(),
            "Accepted",
            "True",
        )
    });
    drop(operator);
    mta.stop();
}

/// Without Redis every fleet-wide limit is split across the StatefulSet's
/// replicas: 2 pods, then a scale to 3 re-renders; the objects' status
/// says so. With --shared-limits (the chart's Redis) limits render as
/// written.
#[test]
fn limits_are_split_across_the_replicas_and_follow_a_scale() {
    let api = ApiServer::start();
    api.kubectl_ok(&["apply", "--server-side", "-f", &root_path("crds")]);
    apply_statefulset(&api, 2);
    let operator = Operator::start(&api, &["--fleet", "sluice-mta", "--debounce", "300ms"]);
    let examples = root_path("examples/operator");
    api.kubectl_ok(&["apply", "-f", &examples]);
    let rendered = |a: &ApiServer| {
        configmap(a).and_then(|cm| cm["data"][POLICY_FILE].as_str().map(str::to_string))
    };
    let split_status = |a: &ApiServer, want: Option<u64>| {
        let mode = if want.is_some() { "Split" } else { "Shared" };
        let p = a.get_json(&["get", "egresspath", "google"]).unwrap();
        let q = a.get_json(&["get", "queuepolicy", "default"]).unwrap();
        // (a real API server drops splitAcross once Shared is applied; the
        // stand-in keeps fields an apply leaves out, so it is not checked then)
        [p, q].iter().all(|o| {
            o["status"]["limits"] == mode
                && (want.is_none() || o["status"]["splitAcross"].as_u64() == want)
        })
    };
    for pods in [2, 3] {
        if pods == 3 {
            apply_statefulset(&api, 3);
        }
        let expected = offline_render_split(&examples, pods);
        // the google path: 10 connections and 100/s, split
        let share = format!("connection_limit = {}", 10 / pods);
        assert!(expected.contains(&share), "{share} in\n{expected}");
        assert!(expected.contains(&format!("100/{pods}s")), "{expected}");
        api.wait_for(
            &format!("the render for {pods} pods"),
            Duration::from_secs(20),
            |a| rendered(a).as_deref() == Some(expected.as_str()),
        );
        api.wait_for("status: split", Duration::from_secs(20), |a| {
            split_status(a, Some(u64::from(pods)))
        });
    }
    let table = api.kubectl_ok(&["get", "egresspaths"]);
    assert!(
        table.contains("LIMITS") && table.contains("Split"),
        "{table}"
    );

    drop(operator);
    let _shared = Operator::start(
        &api,
        &[
            "--fleet",
            "sluice-mta",
            "--shared-limits",
            "--debounce",
            "300ms",
        ],
    );
    let written = offline_render(&examples);
    api.wait_for("the render as written", Duration::from_secs(20), |a| {
        rendered(a).as_deref() == Some(written.as_str())
    });
    api.wait_for("status: shared", Duration::from_secs(20), |a| {
        split_status(a, None)
    });
}

/// Spool handoff (`--spool-handoff`): a scale from 3 to 2 leaves ordinal 2's
/// spool claim; once its pod is gone the operator creates a Job from the
/// StatefulSet's pod template that runs `--handoff-to` the live pods on
/// that claim. When the Job succeeds (here its status and pod are written
/// as the Job controller and kubelet would) the counts from the pod's
/// termination message become an event and, with
/// `--delete-drained-volumes`, the claim is deleted; a scale back to 3
/// removes the Job.
#[test]
fn a_scaled_away_ordinals_spool_gets_a_handoff_job_and_is_reported() {
    let api = ApiServer::start();
    api.kubectl_ok(&["apply", "--server-side", "-f", &root_path("crds")]);
    apply_statefulset(&api, 3);
    let labels = serde_json::json!({"app.kubernetes.io/component": "mta"});
    for i in 0..3 {
        api.register_pod(
            "default",
            &format!("sluice-mta-{i}"),
            &labels,
            &serde_json::json!({}),
        );
        api.apply_json(&serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("spool-sluice-mta-{i}"), "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }));
    }
    let operator = Operator::start(
        &api,
        &[
            "--fleet",
            "sluice-mta",
            "--spool-handoff",
            "--delete-drained-volumes",
            "--debounce",
            "300ms",
        ],
    );
    let job = |a: &ApiServer| a.get_json(&["get", "job", "sluice-mta-handoff-2"]);
    apply_statefulset(&api, 2);
    // pod 2 is still shutting down: it holds its spool, no Job yet
    let passes = operator.metric("sluice_operator_reconciles_total{}");
    api.wait_for("two more passes", Duration::from_secs(20), |_| {
        operator.metric("sluice_operator_reconciles_total{}") >= passes + 2.0
    });
    assert!(
        job(&api).is_none(),
        "a Job while the pod runs: {}",
        operator.log()
    );
    api.kubectl_ok(&["delete", "pod", "sluice-mta-2"]);
    api.wait_for("the handoff Job", Duration::from_secs(20), |a| {
        job(a).is_some()
    });
    let j = job(&api).unwrap();
    assert_eq!(
        j["metadata"]["labels"]["sluice.dev/handoff-ordinal"], "2",
        "{j}"
    );
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure");
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!([
            "--handoff-to",
            "http://sluice-mta-0.sluice-mta.default.svc:8000,http://sluice-mta-1.sluice-mta.default.svc:8000"
        ])
    );
    let spool = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "spool")
        .unwrap();
    assert_eq!(
        spool["persistentVolumeClaim"]["claimName"],
        "spool-sluice-mta-2"
    );
    assert_eq!(
        j["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], "spool-handoff",
        "no MTA selector matches the drainer"
    );

    // the Job's pod ran and ended, as the kubelet reports it; the Job succeeded
    api.apply_json(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sluice-mta-handoff-2-x7k2p", "namespace": "default",
                     "labels": {"job-name": "sluice-mta-handoff-2"}},
        "spec": {"containers": [{"name": "mta", "image": "sluice-mta"}]},
    }));
    let terminated = serde_json::json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "mta", "image": "sluice-mta", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "message": "{\"found\":3000,\"moved\":3000,\"remaining\":0}"}}}]}});
    api.kubectl_ok(&[
        "patch",
        "pod",
        "sluice-mta-handoff-2-x7k2p",
        "--subresource=status",
        "--type=merge",
        "-p",
        &terminated.to_string(),
    ]);
    api.kubectl_ok(&[
        "patch",
        "job",
        "sluice-mta-handoff-2",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"succeeded":1}}"#,
    ]);
    api.wait_for("the drained claim deleted", Duration::from_secs(20), |a| {
        a.get_json(&["get", "pvc", "spool-sluice-mta-2"]).is_none()
    });
    assert!(
        api.get_json(&["get", "pvc", "spool-sluice-mta-1"])
            .is_some(),
        "live claims stay"
    );
    let events = api.get_json(&["get", "events.v1.events.k8s.io"]).unwrap();
    let reasons: Vec<(String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == "sluice-mta")
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for want in [
        "SpoolHandoffStarted",
        "SpoolHandoffSucceeded",
        "DrainedVolumeDeleted",
    ] {
        assert!(
            reasons.iter().any(|(r, _)| r == want),
            "{want}: {reasons:?}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|(r, n)| r == "SpoolHandoffSucceeded" && n.contains("3000 message(s) moved")),
        "{reasons:?}"
    );
    // ordinal 2 runs again: the Job goes
    apply_statefulset(&api, 3);
    api.wait_for("the stale Job removed", Duration::from_secs(20), |a| {
        job(a).is_none()
    });
}
