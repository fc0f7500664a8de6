//! The chart's MTA pod, run for real. The rendered StatefulSet's args, env
//! and volume mounts, and the chart's ConfigMap, are laid out under a
//! temporary root the way the kubelet mounts them (the operator's generated
//! policy and a user's module included); the real sluice-mta runs with
//! them, and its probes, listeners, spool, logs, admin API and drain answer
//! where the chart says they do. Nothing is written outside the mounts, as
//! on the pod's read-only root filesystem.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_tests::chart::*;
use sluice_tests::pod::{ChartPod, files_under, relocate, under};
use sluice_tests::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every string value in `v` that is an absolute path.
fn absolute_paths(v: &Value, out: &mut Vec<(String, String)>, key: &str) {
    match v {
        Value::String(s) if s.starts_with('/') => out.push((key.to_string(), s.clone())),
        Value::Array(a) => a.iter().for_each(|x| absolute_paths(x, out, key)),
        Value::Object(o) => o.iter().for_each(|(k, x)| absolute_paths(x, out, k)),
        _ => {}
    }
}

/// Kills the daemon if the test fails half-way.
struct Daemon(Option<Child>);
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port_named(container: &Value, name: &str) -> u16 {
    named(&container["ports"], name)["containerPort"]
        .as_u64()
        .unwrap() as u16
}

#[test]
fn the_mta_runs_with_the_charts_paths_ports_env_and_probes() {
    // ports other tests do not use; everything else as a user would install
    let (smtp, submission, admin) = (free_port(), free_port(), free_port());
    let yaml = template(
        Some("ci/deferred-queue-values.yaml"),
        &[
            &format!("mta.listeners.smtp.containerPort={smtp}"),
            &format!("mta.listeners.submission.containerPort={submission}"),
            &format!("mta.admin.containerPort={admin}"),
            "mta.drainTimeoutSeconds=10",
        ],
    )
    .unwrap();
    let docs = documents(&yaml);
    let sts = find(&docs, "StatefulSet", "rel-sluice-mta");
    let chart_cm = find(&docs, "ConfigMap", "rel-sluice-mta");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // each volume laid out at its mount, the chart's ConfigMap in the policy
    // volume, as the kubelet would
    let chart_pod = ChartPod::new(&docs);
    let mounts = &chart_pod.mounts;
    let root = chart_pod.root.path();
    let stderr_dir = tempfile::tempdir().unwrap();
    let stderr_file = stderr_dir.path().join("sluice-mta.log");
    let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();

    // the settings' paths lie on mounts, and what is written on writable ones
    let settings = chart_cm["data"]["sluice-settings.lua"].as_str().unwrap();
    let json = settings
        .split_once("[==[")
        .and_then(|(_, r)| r.split_once("]==]"))
        .unwrap()
        .0;
    let mut paths = vec![];
    absolute_paths(&serde_json::from_str(json).unwrap(), &mut paths, "");
    assert!(paths.len() >= 2, "{paths:?}");
    for (key, path) in &paths {
        let mount = under(path, mounts).unwrap_or_else(|| panic!("{key} {path} is on no mount"));
        let written = ["spool_dir", "log_dir"].contains(&key.as_str());
        assert!(
            !(written && mount.read_only),
            "{key} {path} is on a read-only mount"
        );
    }

    let mount_of = |volume: &str| chart_pod.mount_of(volume);
    let policy_dir = mount_of("policy");
    let policy_volume = named(&pod["volumes"], "policy");
    let generated = {
        let o = Command::new(binary("sluice-operator"))
            .args(["render", "-f"])
            .arg(workspace_root().join("examples/operator"))
            .output()
            .unwrap();
        assert!(o.status.success());
        relocate(&String::from_utf8(o.stdout).unwrap(), mounts, root)
    };
    let hooks = "local kumo = require 'kumo'\n\
                 kumo.on('smtp_server_message_received', function(msg)\n  \
                 msg:prepend_header('X-Sluice-Hooks', 'loaded')\nend)\n";
    for source in policy_volume["projected"]["sources"].as_array().unwrap() {
        let name = source["configMap"]["name"].as_str().unwrap();
        let files: Vec<(String, String)> = match name {
            // the chart's own, already written by ChartPod
            "rel-sluice-mta" => vec![],
            // the operator's ConfigMap, as `sluice-operator render` makes it
            "rel-sluice-generated" => vec![("sluice-generated.lua".into(), generated.clone())],
            // the user's own (mta.userPolicy.configMapName)
            "mail-hooks" => vec![("hooks.lua".into(), hooks.into())],
            other => panic!("unexpected projected ConfigMap {other}"),
        };
        for (file, text) in files {
            std::fs::write(policy_dir.join(file), text).unwrap();
        }
    }
    std::fs::write(
        mount_of("secret-rabbitmq").join("url"),
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
    .unwrap();
    // the admin API's kubernetes.io/basic-auth Secret (the operator's, here
    // written as the kubelet would mount it)
    let admin_auth = mount_of("admin-auth");
    std::fs::write(admin_auth.join("username"), "sluice-operator").unwrap();
    std::fs::write(admin_auth.join("password"), "pw-from-the-secret").unwrap();
    let operator = Some("sluice-operator:pw-from-the-secret");

    // the container's args and env
    let mut cmd = chart_pod.command(Command::new(binary("sluice-mta")), "rel-sluice-mta-0");
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).unwrap());
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SLUICE_NODE_ID"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
        "the node id comes from the pod name (the StatefulSet ordinal)"
    );
    let mut daemon = Daemon(Some(cmd.spawn().unwrap()));

    // the probes, on the ports they name
    let probe = |kind: &str| -> (u16, String) {
        let get = &container[kind]["httpGet"];
        (
            port_named(container, get["port"].as_str().unwrap()),
            get["path"].as_str().unwrap().to_string(),
        )
    };
    let (port, path) = probe("startupProbe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_request(port, &path, None)["status"] == 200;
        if up {
            break;
        }
        if let Some(status) = daemon.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("sluice-mta exited with {status}: {}", stderr());
        }
        assert!(
            Instant::now() < deadline,
            "the startup probe never passed: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for kind in ["livenessProbe", "readinessProbe"] {
        let (port, path) = probe(kind);
        assert_eq!(
            http_request(port, &path, None)["status"],
            200,
            "{kind} {path}"
        );
    }

    // mail in on the smtp port; the generated policy routes it to a maildir
    // on the spool volume, the user's module adds its header
    assert_eq!(port_named(container, "smtp"), smtp);
    RawSmtp::send_message(
        smtp,
        "someone@maildir.example.com",
        "Subject: chart\r\n\r\nhello",
    );
    let maildir = format!("{}/var/spool/sluice/maildir", root.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let mut files = vec![];
        if Path::new(&maildir).exists() {
            files_under(Path::new(&maildir), &mut files);
        }
        if let Some(f) = files.iter().find(|f| f.to_string_lossy().contains("/new/")) {
            break std::fs::read_to_string(f).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "nothing delivered under {maildir}: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(delivered.contains("X-Sluice-Hooks: loaded"), "{delivered}");
    let mut submission_session = RawSmtp::connect(port_named(container, "submission"));
    assert_eq!(submission_session.reply().0, 220);
    submission_session.command("QUIT");

    // the admin API is closed by default: from loopback (which the old
    // default trusted) inject, bounce and suspend get 401 without the
    // Secret's credentials, or with wrong ones; with them they work
    let inject = r#"{"envelope_sender": "a@example.org", "recipients": [{"email": "b@maildir.example.com"}], "content": "Subject: x\r\n\r\nx"}"#;
    let rule = r#"{"domain": "nowhere.example", "reason": "test", "duration": "1m"}"#;
    for (path, body) in [
        ("/api/inject/v1", inject),
        ("/api/admin/bounce/v1", rule),
        ("/api/admin/suspend/v1", rule),
        ("/api/admin/config/v1", ""),
    ] {
        let body = (!body.is_empty()).then_some(body);
        for user in [None, Some("sluice-operator:guess")] {
            let r = http_request_as(admin, path, body, user);
            assert_eq!(r["status"], 401, "{path} as {user:?}: {r}");
        }
        let r = http_request_as(admin, path, body, operator);
        assert_eq!(r["status"], 200, "{path}: {r}");
    }

    // the admin API reports each policy file by the name the operator asks for
    let config = http_json_as(admin, "/api/admin/config/v1", None, operator);
    let digest: String = Sha256::digest(generated.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        config["files"]["sluice-generated.lua"],
        digest.as_str(),
        "{config}"
    );
    for f in ["init.lua", "sluice-settings.lua", "hooks.lua"] {
        assert!(config["files"][f].is_string(), "{f}: {config}");
    }
    let mut logs = vec![];
    files_under(&mount_of("logs"), &mut logs);
    let records: String = logs
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(records.contains("\"Reception\""), "{records}");
    assert!(records.contains("\"Delivery\""), "{records}");

    // drain: readiness goes false, the process exits well inside the grace period
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let child = daemon.0.as_mut().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(grace - pre_stop),
            "still running after the grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    daemon.0 = None;

    // the read-only root: nothing was written outside the mounts
    let mut written = vec![];
    files_under(root, &mut written);
    let stray: Vec<String> = written
        .iter()
        .map(|f| f.to_string_lossy()[root.display().to_string().len()..].to_string())
        .filter(|f| under(f, mounts).is_none())
        .collect();
    assert!(stray.is_empty(), "written outside the mounts: {stray:?}");
}
