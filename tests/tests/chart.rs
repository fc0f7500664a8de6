//! The Helm chart, rendered by a real helm: lint, Kubernetes schemas, the
//! reviewed snapshot, the closed values schema, the CRDs, secure defaults,
//! and the wiring between the operator and the MTA pods.

use serde_json::Value;
use sluice_tests::chart::*;
use sluice_tests::workspace_root;
use std::process::Command;

fn rendered(values: &str) -> Vec<Value> {
    documents(&template(Some(values), &[]).unwrap_or_else(|e| panic!("{values}: {e}")))
}

#[test]
fn lints_strict_with_every_values_set() {
    for values in ci_values() {
        let out = helm(&["lint", "--strict", ".", "-f", &values])
            .unwrap_or_else(|e| panic!("helm lint --strict -f {values}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{values}: {out}");
    }
}

/// Every rendered object against Kubernetes' own schemas, strictly (an
/// unknown field fails), for the oldest supported and the current version.
/// Only the Prometheus Operator's ServiceMonitor and PrometheusRule and
/// KEDA's ScaledObject have no schema there (the ScaledObject is checked in
/// `autoscaling`, the PrometheusRule by promtool in `monitoring`).
#[test]
fn every_manifest_validates_against_kubernetes_schemas() {
    for values in ci_values() {
        let yaml = template(Some(&values), &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let o = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(["-k", "1.30", "-k", "1.35"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate is installed (scripts/install-deps)");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{values}:\n{out}");
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                    || line
                        .contains("kind PrometheusRule with api version monitoring.coreos.com/v1")
                    || line.contains("kind ScaledObject with api version keda.sh/v1alpha1"),
                "{values}: {line}"
            );
        }
    }
}

/// The rendered chart, reviewed like code: `cargo insta review` shows the
/// diff of any template or default change. The CRDs are left out: they are
/// compared with `crds/` below.
#[test]
fn rendered_output_matches_the_snapshot() {
    for values in ci_values() {
        let full = template(Some(&values), &[]).unwrap();
        let yaml: Vec<&str> = full
            .split("\n---\n")
            .filter(|doc| !doc.contains("\nkind: CustomResourceDefinition\n"))
            .collect();
        let yaml = yaml.join("\n---\n");
        let name = values
            .trim_start_matches("ci/")
            .trim_end_matches("-values.yaml")
            .to_string();
        insta::with_settings!({ snapshot_path => workspace_root().join("charts/sluice/ci/snapshots"), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name, yaml);
        });
    }
}

#[test]
fn the_closed_values_schema_rejects_typos_and_bad_types() {
    let cases = [
        (
            "mta.replcas=3",
            "additional properties 'replcas' not allowed",
        ),
        (
            "operatr.enabled=false",
            "additional properties 'operatr' not allowed",
        ),
        (
            "mta.listeners.smtp.deferedQueue=true",
            "additional properties 'deferedQueue' not allowed",
        ),
        (
            "mta.replicas=three",
            "/mta/replicas': got string, want integer",
        ),
        (
            "mta.listeners.smtp.containerPort=25",
            "minimum: got 25, want 1,024",
        ),
        ("mta.spool.whenDeleted=Drop", "/mta/spool/whenDeleted"),
    ];
    for (set, expected) in cases {
        let err = template(None, &[set]).expect_err(set);
        assert!(err.contains(expected), "--set {set}: {err}");
    }
    let err = template(None, &["mta.listeners.smtp.tls=true"]).unwrap_err();
    assert!(
        err.contains("mta.listeners.smtp.tls is true: set mta.tls.secretName"),
        "{err}"
    );
}

/// values.schema.json and the README's table are generated from values.yaml.
#[test]
fn values_schema_and_readme_are_fresh() {
    let o = Command::new("python3")
        .arg(chart_dir().join("hack/values_doc.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The chart's CRDs are the repository's `crds/` plus Helm's labels and
/// the keep annotation, and nothing with `crds.enabled=false`.
#[test]
fn crds_are_the_repository_crds() {
    let docs = rendered("ci/default-values.yaml");
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace_root().join("crds")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let committed = documents(&text).remove(0);
        let name = committed["metadata"]["name"].as_str().unwrap().to_string();
        let mut chart = find(&docs, "CustomResourceDefinition", &name).clone();
        let meta = chart["metadata"].as_object_mut().unwrap();
        assert_eq!(
            meta.remove("annotations").unwrap()["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(
            meta.remove("labels").unwrap()["app.kubernetes.io/part-of"],
            "sluice"
        );
        assert_eq!(
            numbers_as_floats(chart),
            numbers_as_floats(committed),
            "{name} differs from crds/"
        );
        seen += 1;
    }
    assert_eq!(seen, 4);
    let without = documents(&template(None, &["crds.enabled=false", "crds.keep=false"]).unwrap());
    assert!(
        without
            .iter()
            .all(|d| d["kind"] != "CustomResourceDefinition")
    );
    let unkept = documents(&template(None, &["crds.keep=false"]).unwrap());
    assert!(
        unkept
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .all(|d| d["metadata"]["annotations"].is_null())
    );
}

/// Helm writes the committed `0.0` as `0`: the same number.
fn numbers_as_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Secure defaults are set, not left to the user: every container non-root,
/// read-only, unprivileged, no capabilities, seccomp RuntimeDefault.
#[test]
fn pods_are_secure_by_default() {
    let docs = rendered("ci/default-values.yaml");
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| ["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(workloads.len(), 2);
    for w in workloads {
        let pod = &w["spec"]["template"]["spec"];
        let name = &w["metadata"]["name"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["enableServiceLinks"], false, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
            assert!(c["image"].as_str().unwrap().ends_with(":0.1.0"), "{name}");
        }
    }
}

/// Exposing the fleet outside the cluster cannot silently make an open
/// relay: a LoadBalancer or NodePort Service keeps client addresses
/// (externalTrafficPolicy Local) unless Cluster is chosen, and with Cluster
/// no exposed listener may relay for private ranges without AUTH.
#[test]
fn exposing_the_fleet_cannot_make_an_open_relay() {
    let policy = |sets: &[&str]| -> Result<Value, String> {
        let docs = documents(&template(None, sets)?);
        Ok(find(&docs, "Service", "rel-sluice-mta").clone())
    };
    for kind in ["LoadBalancer", "NodePort"] {
        let svc = policy(&[&format!("mta.service.type={kind}")]).unwrap();
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local", "{kind}");
    }
    let svc = policy(&[]).unwrap();
    assert!(
        svc["spec"]["externalTrafficPolicy"].is_null(),
        "ClusterIP has none"
    );

    // Cluster with the default submission relayHosts: refused, saying why and what to set
    for kind in ["LoadBalancer", "NodePort"] {
        let err = policy(&[
            &format!("mta.service.type={kind}"),
            "mta.service.externalTrafficPolicy=Cluster",
        ])
        .unwrap_err();
        for want in [
            "refusing an open relay",
            "masquerades every client",
            "mta.listeners.submission",
            "10.0.0.0/8",
            "requireAuth=true",
            "exposed=false",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
    }
    // any relay range overlapping a private one counts; public ones do not
    let cluster = [
        "mta.service.type=LoadBalancer",
        "mta.service.externalTrafficPolicy=Cluster",
        "mta.listeners.submission.exposed=false",
    ];
    for (cidr, refused) in [
        ("0.0.0.0/0", true),
        ("172.20.1.0/24", true),
        ("100.64.0.0/10", true),
        ("fd00::/8", true),
        ("203.0.113.0/24", false),
        ("2001:db8::/32", false),
    ] {
        let mut sets = cluster.to_vec();
        let relay = format!("mta.listeners.smtp.relayHosts={{{cidr}}}");
        sets.push(&relay);
        assert_eq!(policy(&sets).is_err(), refused, "{cidr}");
    }
    // the documented way: AUTH required on the exposed listener renders,
    // relay_hosts empty; the cluster's own senders keep an internal relay
    let docs = rendered("ci/external-submission-values.yaml");
    let svc = find(&docs, "Service", "rel-sluice-mta");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    let exposed: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(exposed, ["smtp", "submission"]);
    let internal = find(&docs, "Service", "rel-sluice-mta-internal");
    assert_eq!(internal["spec"]["type"], "ClusterIP");
    assert_eq!(internal["spec"]["ports"][0]["name"], "internal");
    let settings = find(&docs, "ConfigMap", "rel-sluice-mta")["data"]["sluice-settings.lua"]
        .as_str()
        .unwrap();
    let json = settings
        .split_once("[==[")
        .unwrap()
        .1
        .split_once("]==]")
        .unwrap()
        .0;
    let settings: Value = serde_json::from_str(json).unwrap();
    let submission = settings["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listen"] == "0.0.0.0:5870")
        .unwrap();
    assert_eq!(submission["relay_hosts"], serde_json::json!([]));
    assert_eq!(settings["smtp_auth_dir"], "/etc/sluice/smtp-auth");
    // requireAuth without what it needs fails with the reason
    for (sets, want) in [
        (
            vec!["mta.listeners.submission.requireAuth=true"],
            "needs tls: true",
        ),
        (
            vec![
                "mta.listeners.submission.requireAuth=true",
                "mta.listeners.submission.tls=true",
                "mta.tls.secretName=t",
            ],
            "needs mta.smtpAuth.secretName",
        ),
        (
            vec![
                "mta.listeners.submission.requireAuth=true",
                "mta.listeners.submission.tls=true",
                "mta.tls.secretName=t",
                "mta.smtpAuth.secretName=users",
            ],
            "set relayHosts to []",
        ),
    ] {
        let err = template(None, &sets).unwrap_err();
        assert!(err.contains(want), "{want} in {err}");
    }
}

/// The admin API is closed by default: no trusted networks, HTTP Basic
/// credentials from the Secret the operator creates, given to the operator,
/// the pods and the ServiceMonitor; its NetworkPolicy is on.
#[test]
fn the_admin_api_is_closed_by_default() {
    let docs = rendered("ci/default-values.yaml");
    let settings = find(&docs, "ConfigMap", "rel-sluice-mta")["data"]["sluice-settings.lua"]
        .as_str()
        .unwrap();
    assert!(settings.contains("\"trusted_hosts\": []"), "{settings}");
    assert!(settings.contains("\"admin_auth_dir\": \"/etc/sluice/admin-auth\""));
    let sts = find(&docs, "StatefulSet", "rel-sluice-mta");
    let volume = named(&sts["spec"]["template"]["spec"]["volumes"], "admin-auth");
    assert_eq!(volume["secret"]["secretName"], "rel-sluice-admin");
    let op = find(&docs, "Deployment", "rel-sluice-operator");
    let args = op["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"--admin-secret\",\"rel-sluice-admin\",\"--create-admin-secret\""),
        "{args}"
    );
    let role = find(&docs, "Role", "rel-sluice-operator");
    let rules = role["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == serde_json::json!(["secrets"])
                && r["verbs"] == serde_json::json!(["get"])
                && r["resourceNames"] == serde_json::json!(["rel-sluice-admin"]))
    );
    // the MTA pods' NetworkPolicy: the admin port from the operator only
    let np = find(&docs, "NetworkPolicy", "rel-sluice-mta");
    let admin = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"] == "admin")
        .unwrap();
    assert_eq!(
        admin["from"],
        serde_json::json!([{"podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "sluice",
            "app.kubernetes.io/instance": "rel",
            "app.kubernetes.io/component": "operator"
        }}}])
    );
    // a Secret of the user's: no create permission, the same name everywhere
    let docs = documents(
        &template(
            Some("ci/monitoring-values.yaml"),
            &["mta.admin.auth.secretName=ops-admin"],
        )
        .unwrap(),
    );
    let role = find(&docs, "Role", "rel-sluice-operator");
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !(r["resources"] == serde_json::json!(["secrets"])
                && r["verbs"] == serde_json::json!(["create"])))
    );
    let monitor = find(&docs, "ServiceMonitor", "rel-sluice-mta");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["basicAuth"]["password"],
        serde_json::json!({"name": "ops-admin", "key": "password"})
    );
    // auth off: only trustedHosts, which then must not be empty
    let err = template(None, &["mta.admin.auth.enabled=false"]).unwrap_err();
    assert!(err.contains("nobody, the operator included"), "{err}");
    let err = template(None, &["operator.enabled=false"]).unwrap_err();
    assert!(err.contains("mta.admin.auth.secretName"), "{err}");
}

/// Selectors use name, instance and component only (they cannot change).
#[test]
fn selectors_use_only_stable_labels() {
    for values in ci_values() {
        for d in rendered(&values) {
            let selector = match d["kind"].as_str().unwrap() {
                "Deployment" | "StatefulSet" | "PodDisruptionBudget" => {
                    d["spec"]["selector"]["matchLabels"].clone()
                }
                "Service" => d["spec"]["selector"].clone(),
                _ => continue,
            };
            let keys: Vec<&str> = selector
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(
                keys,
                [
                    "app.kubernetes.io/component",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/name"
                ],
                "{values}: {}",
                d["metadata"]["name"]
            );
        }
    }
}

/// The PodDisruptionBudget follows the fleet's size unless forced.
#[test]
fn disruption_budget_is_on_for_a_fleet() {
    let has_pdb = |sets: &[&str]| {
        documents(&template(None, sets).unwrap())
            .iter()
            .any(|d| d["kind"] == "PodDisruptionBudget")
    };
    assert!(!has_pdb(&[]));
    assert!(has_pdb(&["mta.replicas=3"]));
    assert!(!has_pdb(&[
        "mta.replicas=3",
        "podDisruptionBudget.enabled=false"
    ]));
    assert!(has_pdb(&["podDisruptionBudget.enabled=true"]));
}

/// What the operator is told matches what the chart gives the MTA pods:
/// the generated ConfigMap is mounted, the fleet and selector name the
/// StatefulSet and its pods, ports and the secrets directory agree.
#[test]
fn operator_and_mta_pods_agree() {
    let docs = rendered("ci/deferred-queue-values.yaml");
    let sts = find(&docs, "StatefulSet", "rel-sluice-mta");
    let op = find(&docs, "Deployment", "rel-sluice-operator");
    let args: Vec<&str> = op["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        args[i + 1]
    };
    assert_eq!(args[0], "run");
    let pod = &sts["spec"]["template"];
    let sources = named(&pod["spec"]["volumes"], "policy")["projected"]["sources"]
        .as_array()
        .unwrap();
    let generated = sources
        .iter()
        .find(|s| s["configMap"]["name"] == arg("--configmap"))
        .expect("the operator's ConfigMap is projected into the policy directory");
    assert_eq!(generated["configMap"]["optional"], true);
    assert!(
        sources
            .iter()
            .any(|s| s["configMap"]["name"] == "mail-hooks")
    );
    assert_eq!(arg("--fleet"), sts["metadata"]["name"]);
    for pair in arg("--mta-selector").split(',') {
        let (k, v) = pair.split_once('=').unwrap();
        assert_eq!(pod["metadata"]["labels"][k], v, "{pair}");
    }
    let mta = &pod["spec"]["containers"][0];
    let admin = named(&mta["ports"], "admin")["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(arg("--admin-port"), admin.to_string());
    assert_eq!(
        pod["metadata"]["annotations"]["sluice.dev/admin-port"],
        admin.to_string()
    );
    let secret_mount = named(&mta["volumeMounts"], "secret-rabbitmq");
    assert_eq!(
        secret_mount["mountPath"],
        format!("{}/rabbitmq", arg("--secrets-dir"))
    );
    // the Services point at ports the containers have
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        let target_pod = if svc["metadata"]["name"] == "rel-sluice-operator-metrics" {
            &op["spec"]["template"]["spec"]["containers"][0]
        } else {
            mta
        };
        for port in svc["spec"]["ports"].as_array().unwrap() {
            let named = port["targetPort"].as_str().unwrap();
            assert!(
                target_pod["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == named),
                "{}: no container port named {named}",
                svc["metadata"]["name"]
            );
        }
    }
}

/// Autoscaling on queue depth: an HPA on the pods' `sluice_queued_messages`
/// or a KEDA ScaledObject on the fleet's sum, never both; either way the
/// StatefulSet leaves `replicas` to the autoscaler and the shared throttles
/// assume `minReplicas` pods.
#[test]
fn autoscaling_renders_an_hpa_or_a_scaled_object_on_queue_depth() {
    let docs = rendered("ci/autoscaling-hpa-values.yaml");
    let hpa = find(&docs, "HorizontalPodAutoscaler", "rel-sluice-mta");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "rel-sluice-mta");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].as_u64(),
            hpa["spec"]["maxReplicas"].as_u64()
        ),
        (Some(2), Some(6))
    );
    let metric = &hpa["spec"]["metrics"][0]["pods"];
    assert_eq!(metric["metric"]["name"], "sluice_queued_messages");
    assert_eq!(metric["target"]["averageValue"], "2000");
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["value"], 1,
        "one pod at a time, so each handoff finishes"
    );
    let sts = find(&docs, "StatefulSet", "rel-sluice-mta");
    assert!(sts["spec"].get("replicas").is_none(), "{}", sts["spec"]);

    let docs = rendered("ci/autoscaling-keda-values.yaml");
    let so = find(&docs, "ScaledObject", "rel-sluice-mta");
    // what KEDA requires (its CRD): the target by name, typed triggers with
    // string metadata
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "rel-sluice-mta");
    assert_eq!(
        (
            so["spec"]["minReplicaCount"].as_u64(),
            so["spec"]["maxReplicaCount"].as_u64()
        ),
        (Some(3), Some(12))
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    for (k, v) in trigger["metadata"].as_object().unwrap() {
        assert!(v.is_string(), "metadata.{k} must be a string: {v}");
    }
    assert_eq!(
        trigger["metadata"]["query"],
        "sum(sluice_queued_messages{namespace=\"mail\", pod=~\"rel-sluice-mta-[0-9]+\"})"
    );
    assert!(docs.iter().all(|d| d["kind"] != "HorizontalPodAutoscaler"));
    let cm = find(&docs, "ConfigMap", "rel-sluice-mta");
    let settings = cm["data"]["sluice-settings.lua"].as_str().unwrap();
    assert!(settings.contains("\"fleet_size\": 3"), "{settings}");

    let err = template(
        None,
        &[
            "mta.autoscaling.hpa.enabled=true",
            "mta.autoscaling.keda.enabled=true",
        ],
    )
    .unwrap_err();
    assert!(err.contains("enable hpa or keda, not both"), "{err}");
    let err = template(None, &["mta.autoscaling.keda.enabled=true"]).unwrap_err();
    assert!(err.contains("keda.serverAddress"), "{err}");
}

/// Spool handoff is the operator's, on by default; its Role has exactly
/// what it needs for it: listing claims (deleting them only with
/// deleteDrainedVolumes) and making, listing, marking and removing Jobs;
/// off, none of that.
#[test]
fn spool_handoff_adds_the_operators_flags_and_least_privilege() {
    let rules = |docs: &[Value]| -> Vec<Value> {
        find(docs, "Role", "rel-sluice-operator")["rules"]
            .as_array()
            .unwrap()
            .clone()
    };
    let args = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment", "rel-sluice-operator")["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let grants = |rules: &[Value], resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
            .flat_map(|r| r["verbs"].as_array().unwrap().clone())
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let default = rendered("ci/default-values.yaml");
    assert!(args(&default).contains(&"--spool-handoff".to_string()));
    let off = documents(&template(None, &["mta.spool.handoff=false"]).unwrap());
    assert!(!args(&off).contains(&"--spool-handoff".to_string()));
    assert!(grants(&rules(&off), "jobs").is_empty());
    assert!(grants(&rules(&off), "persistentvolumeclaims").is_empty());

    let on = rendered("ci/handoff-values.yaml");
    let a = args(&on);
    assert!(
        a.contains(&"--spool-handoff".to_string())
            && a.contains(&"--delete-drained-volumes".to_string()),
        "{a:?}"
    );
    assert_eq!(
        grants(&rules(&on), "jobs"),
        ["create", "list", "patch", "delete"]
    );
    assert_eq!(
        grants(&rules(&on), "persistentvolumeclaims"),
        ["list", "delete"]
    );
    assert_eq!(
        grants(&rules(&default), "persistentvolumeclaims"),
        ["list"],
        "kept by default"
    );
}
