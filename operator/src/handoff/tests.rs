use super::*;

fn sts(replicas: i32) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "rel-sluice-mta", "namespace": "mail", "uid": "u-1"},
        "spec": {
            "replicas": replicas,
            "serviceName": "rel-sluice-mta-headless",
            "selector": {"matchLabels": {"app.kubernetes.io/component": "mta"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "mta", "app.kubernetes.io/instance": "rel"}},
                "spec": {
                    "containers": [{
                        "name": "mta",
                        "image": "ghcr.io/sluice-dev/sluice-mta:0.1.0",
                        "args": ["--policy", "/etc/sluice/policy/init.lua"],
                        "ports": [{"name": "smtp", "containerPort": 2525}],
                        "readinessProbe": {"httpGet": {"path": "/api/check-readiness/v1", "port": 8000}},
                        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                        "volumeMounts": [{"name": "spool", "mountPath": "/var/spool/sluice"}]
                    }],
                    "volumes": [{"name": "policy", "configMap": {"name": "rel-sluice-mta"}}]
                }
            },
            "volumeClaimTemplates": [{"metadata": {"name": "spool"}}]
        }
    }))
    .unwrap()
}

fn claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

fn pod(name: &str, port: Option<&str>) -> Pod {
    let mut p = serde_json::json!({"metadata": {"name": name}, "status": {"podIP": "10.0.0.9"}});
    if let Some(port) = port {
        p["metadata"]["annotations"] = serde_json::json!({"sluice.dev/admin-port": port});
    }
    serde_json::from_value(p).unwrap()
}

fn config() -> HandoffConfig {
    HandoffConfig {
        spool_volume: "spool".into(),
        delete_drained: false,
        admin_port: 8000,
    }
}

#[test]
fn orphans_are_the_spool_claims_of_ordinals_at_or_above_the_replicas() {
    let claims = [
        claim("spool-rel-sluice-mta-0"),
        claim("spool-rel-sluice-mta-2"),
        claim("spool-rel-sluice-mta-1"),
        claim("spool-rel-sluice-mta-10"),
        claim("logs-rel-sluice-mta-3"),
        claim("spool-other-3"),
        claim("spool-rel-sluice-mta-x"),
    ];
    let found = orphans("rel-sluice-mta", 2, "spool", &claims);
    let ordinals: Vec<u32> = found.iter().map(|o| o.ordinal).collect();
    assert_eq!(ordinals, [2, 10]);
    assert_eq!(found[0].claim, "spool-rel-sluice-mta-2");
    assert!(orphans("rel-sluice-mta", 11, "spool", &claims).is_empty());
}

#[test]
fn targets_are_the_live_pods_by_their_stable_names() {
    let pods = [
        pod("rel-sluice-mta-1", Some("9001")),
        pod("rel-sluice-mta-0", None),
        pod("rel-sluice-mta-2", None),
        pod("other-0", None),
    ];
    assert_eq!(
        targets(&sts(2), &pods, 8000),
        [
            "http://rel-sluice-mta-0.rel-sluice-mta-headless.mail.svc:8000",
            "http://rel-sluice-mta-1.rel-sluice-mta-headless.mail.svc:9001",
        ]
    );
}

#[test]
fn the_job_is_the_fleets_pod_with_the_orphans_claim_and_the_handoff_args() {
    let orphan = Orphan {
        ordinal: 2,
        claim: "spool-rel-sluice-mta-2".into(),
    };
    let targets = ["http://a:8000".to_string(), "http://b:8000".to_string()];
    let job = job(&sts(2), &orphan, &targets, &config()).unwrap();
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("rel-sluice-mta-handoff-2")
    );
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels[FLEET_LABEL], "rel-sluice-mta");
    assert_eq!(labels[ORDINAL_LABEL], "2");
    let owner = &job.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("StatefulSet", Some(false))
    );
    let template = job.spec.unwrap().template;
    // no MTA Service or selector picks the drainer up
    let pod_labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(pod_labels["app.kubernetes.io/component"], "spool-handoff");
    assert_eq!(pod_labels["app.kubernetes.io/instance"], "rel");
    let spec = template.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
    let c = &spec.containers[0];
    assert_eq!(
        c.args.clone().unwrap(),
        [
            "--policy",
            "/etc/sluice/policy/init.lua",
            "--handoff-to",
            "http://a:8000,http://b:8000"
        ]
    );
    assert!(c.readiness_probe.is_none() && c.lifecycle.is_none() && c.ports.is_none());
    let volumes = spec.volumes.unwrap();
    let spool = volumes.iter().find(|v| v.name == "spool").unwrap();
    assert_eq!(
        spool.persistent_volume_claim.as_ref().unwrap().claim_name,
        "spool-rel-sluice-mta-2"
    );
    assert!(
        volumes.iter().any(|v| v.name == "policy"),
        "the pod's other volumes stay"
    );
}

#[test]
fn a_finished_pods_termination_message_gives_the_counts() {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rel-sluice-mta-handoff-2-abcde"},
        "status": {"containerStatuses": [{
            "name": "mta", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": "{\"found\":3000,\"moved\":3000,\"remaining\":0}"}}
        }]}
    }))
    .unwrap();
    let counts = outcome(&[p]).unwrap();
    assert_eq!(
        (counts["moved"].as_u64(), counts["remaining"].as_u64()),
        (Some(3000), Some(0))
    );
    assert!(outcome(&[pod("rel-sluice-mta-0", None)]).is_none());
}
