//! The Job controller and kubelet for the fleet's spool handoff Jobs: a
//! Job the operator created is run as its pod would be, the container's
//! args and env from the Job's template, in the mount namespace of the
//! scaled-away pod whose claim it names (that pod's volumes are where the
//! claim's files are), with the fleet's /etc/hosts for the pods' stable
//! names, as the cluster's DNS would answer them. Its outcome goes back to the API
//! server as the Job's status and its pod's termination message.

use crate::fleet::{Fleet, MtaPod, NAMESPACE};
use serde_json::Value;
use std::time::{Duration, Instant};

/// What one handoff Job did.
pub struct JobRun {
    /// The Job's name.
    pub name: String,
    /// Its process's exit status.
    pub success: bool,
    /// The termination message it wrote (`{found, moved, remaining}`).
    pub report: Value,
    /// Its process's stderr.
    pub log: String,
}

/// Wait until the operator has made `n` handoff Jobs, run each once, and
/// record each outcome in the API server.
pub fn run_handoff_jobs(fleet: &Fleet, n: usize, within: Duration) -> Vec<JobRun> {
    let deadline = Instant::now() + within;
    let jobs = loop {
        let list = fleet.get(&["get", "jobs", "-l", "sluice.dev/handoff-of=rel-sluice-mta"]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} handoff Jobs; operator log:\n{}",
            items.len(),
            fleet.operator.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    jobs.iter().map(|job| run_one(fleet, job)).collect()
}

fn run_one(fleet: &Fleet, job: &Value) -> JobRun {
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let spec = &job["spec"]["template"]["spec"];
    let claim = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "spool")
        .map(|v| {
            v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .expect("the Job mounts a spool claim");
    let owner: &MtaPod = fleet
        .gone
        .iter()
        .find(|p| format!("spool-{}", p.name) == claim)
        .unwrap_or_else(|| panic!("no scaled-away pod has {claim}"));
    let container = &spec["containers"][0];
    let pod_name = format!("{name}-h4rn5");
    let mut args = crate::pod::plain_args(container);
    // the kubelet's termination message file, on a volume of the pod (its
    // root is hidden inside the namespace) where the harness reads it
    let inside = format!("/var/log/sluice/{pod_name}.termination-log");
    let report = owner.path(&inside);
    args.extend(["--handoff-report".to_string(), inside]);
    let env = crate::pod::env(container, &pod_name);
    let log = owner.root.path().join(format!("{pod_name}.log"));
    let status = owner
        .in_namespace(&args, &env, &[(&fleet.hosts, "/etc/hosts")])
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .expect("unshare runs (util-linux)");
    let message = std::fs::read_to_string(&report).unwrap_or_default();
    // as the kubelet and the Job controller report it
    fleet.api.apply_json(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": NAMESPACE, "labels": {"job-name": name}},
        "spec": {"containers": [{"name": container["name"], "image": container["image"]}]},
    }));
    let terminated = serde_json::json!({"status": {
        "phase": if status.success() { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container["name"], "image": container["image"], "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": status.code().unwrap_or(-1), "message": message}},
        }],
    }});
    fleet.kubectl(&[
        "patch",
        "pod",
        &pod_name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &terminated.to_string(),
    ]);
    let job_status = if status.success() {
        serde_json::json!({"status": {"succeeded": 1}})
    } else {
        serde_json::json!({"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}})
    };
    fleet.kubectl(&[
        "patch",
        "job",
        &name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &job_status.to_string(),
    ]);
    JobRun {
        name,
        success: status.success(),
        report: serde_json::from_str(&message).unwrap_or(Value::Null),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}
