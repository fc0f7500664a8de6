//! The operator's test bed: the stand-in API server (kmock 0.8 plus the
//! layer in tests/apiserver), a real kubectl pointed at it, and the real
//! `sluice-operator run`.

use crate::{binary, free_port, workspace_root};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/install-deps puts kubectl and helm.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("SLUICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice-tools")
        });
    let path = dir.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps",
        path.display()
    );
    path
}

pub struct ApiServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(workspace_root().join("tests/apiserver/server.py"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("apiserver.log")).unwrap())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("READY"),
            "the stand-in API server did not start: {line}"
        );
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 contexts:\n- name: standin\n  context:\n    cluster: standin\n    namespace: default\n    user: tester\n\
                 current-context: standin\nusers:\n- name: tester\n  user: {{}}\n"
            ),
        )
        .unwrap();
        ApiServer { child, port, dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubectl for this stand-in that other threads can own.
    pub fn client(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig(),
            cache: self.dir.path().join("kube-cache"),
        }
    }

    /// Run kubectl against the stand-in.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.client().run(args)
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `kubectl get ... -o json`, or `None` when it is not there.
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        self.client().get_json(args)
    }

    /// `kubectl apply` of one object.
    pub fn apply_json(&self, object: &Value) -> String {
        let file = self.dir.path().join(format!(
            "{}-{}.json",
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        ));
        std::fs::write(&file, object.to_string()).unwrap();
        self.kubectl_ok(&["apply", "-f", file.to_str().unwrap()])
    }

    /// A running Pod object, as the StatefulSet controller and the kubelet
    /// would make it: `labels` and `annotations` (JSON objects), an IP
    /// (127.0.0.1: each pod's ports differ instead), phase Running.
    pub fn register_pod(&self, namespace: &str, name: &str, labels: &Value, annotations: &Value) {
        self.apply_json(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {"containers": [{"name": "mta", "image": "sluice-mta"}]},
        }));
        self.kubectl_ok(&[
            "-n",
            namespace,
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","podIP":"127.0.0.1"}}"#,
        ]);
    }

    /// Poll `get` until `check` holds.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// kubectl with a stand-in's kubeconfig.
#[derive(Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(tool("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &self.cache)
            .output()
            .unwrap()
    }

    /// `kubectl get ... -o json`, or `None` when it is not there.
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let o = self.run(&all);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Operator {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(api: &ApiServer, extra: &[&str]) -> Operator {
        let mut args: Vec<String> = ["run", "--namespace", "default", "--poll-interval", "1s"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        args.extend(["--metrics-addr".into(), "127.0.0.1:{METRICS_PORT}".into()]);
        Operator::spawn(api, &args, &[])
    }

    /// `sluice-operator` with exactly `args` (`{METRICS_PORT}` replaced by
    /// a free port) and `env`.
    pub fn spawn(api: &ApiServer, args: &[String], env: &[(&str, &str)]) -> Operator {
        let metrics_port = free_port();
        let log = api.dir.path().join(format!("operator-{metrics_port}.log"));
        let child = Command::new(binary("sluice-operator"))
            .args(
                args.iter()
                    .map(|a| a.replace("{METRICS_PORT}", &metrics_port.to_string())),
            )
            .env("KUBECONFIG", api.kubeconfig())
            .env("RUST_LOG", "info,sluice_operator=debug")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Operator {
            child,
            metrics_port,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A sample of the operator's /metrics (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let m = crate::http_request(self.metrics_port, "/metrics", None);
        m["samples"][name].as_f64().unwrap_or(0.0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
