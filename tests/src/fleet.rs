//! The whole loop on one machine, as the Helm chart deploys it: the
//! stand-in API server with the CRDs; the real `sluice-operator run` with
//! the chart's Deployment args; MTA pods that are real `sluice-mta`
//! processes started with the chart's StatefulSet args and env, each in a
//! mount namespace of its own where its volumes are bind-mounted at the
//! chart's paths (as a container runtime mounts them), the policy volume
//! kept in sync with the ConfigMaps by a kubelet-like projector; dnsmasq as
//! the pods' name server. The pods differ only in their ports, as on a
//! cluster they differ in their IPs.

use crate::chart::{self, documents, find, named};
use crate::kube::{ApiServer, Operator};
use crate::pod::{self, Mount};
use crate::projector::Projector;
use crate::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = chart::NAMESPACE;
/// The smart host's name, answered by the fleet's dnsmasq with 127.0.0.1.
pub const SMART_HOST: &str = "smart.host.local";
const VALUES: &str = "tests/e2e/values.yaml";
/// The admin API's Secret, which the operator creates (no secretName given).
pub const ADMIN_SECRET: &str = "rel-sluice-admin";
/// The chart's log mount (mta.logs), where the pods' records are.
const LOG_DIR: &str = "/var/log/sluice";

pub struct Fleet {
    pub pods: Vec<MtaPod>,
    /// Pods scaled away, their volumes kept as the claims are.
    pub gone: Vec<MtaPod>,
    /// The pods' /etc/hosts: their stable names, as cluster DNS answers.
    pub hosts: std::path::PathBuf,
    pub operator: Operator,
    pub api: ApiServer,
    pub dns: Dnsmasq,
}

impl Fleet {
    /// The chart installed with tests/e2e/values.yaml: two MTA pods, the
    /// operator, the user's hooks ConfigMap; `secrets` are
    /// `(secret, key, value)` files the kubelet would mount.
    pub fn start(secrets: &[(&str, &str, &str)]) -> Fleet {
        Fleet::start_with(2, &[], secrets)
    }

    /// [`Fleet::start`] with `replicas` pods and more `--set` values. Each
    /// pod gets its spool claim (`spool-<pod>`), as the StatefulSet
    /// controller makes it from the claim template.
    pub fn start_with(replicas: usize, sets: &[&str], secrets: &[(&str, &str, &str)]) -> Fleet {
        let dns = Dnsmasq::start(&[&format!("--host-record={SMART_HOST},127.0.0.1")]);
        let api = ApiServer::start();
        api.kubectl_ok(&["apply", "--server-side", "-f", &root_path("crds")]);
        // as `helm install --create-namespace` would
        api.kubectl_ok(&["create", "namespace", NAMESPACE]);
        api.kubectl_ok(&[
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            &root_path("tests/e2e/hooks.yaml"),
        ]);

        // the cluster's DNS for the pods' stable names (xfer between pods
        // uses them), as every pod's /etc/hosts
        let hosts = api.dir.path().join("hosts");
        let mut names = String::from("127.0.0.1 localhost\n");
        for i in 0..replicas {
            names.push_str(&format!(
                "127.0.0.1 rel-sluice-mta-{i}.rel-sluice-mta-headless.{NAMESPACE}.svc\n"
            ));
        }
        std::fs::write(&hosts, names).unwrap();
        let replicas_set = format!("mta.replicas={replicas}");
        let mut all_sets = vec![replicas_set.as_str()];
        all_sets.extend(sets);
        let renders: Vec<Vec<Value>> = (0..replicas).map(|_| render(dns.port, &all_sets)).collect();
        let sts = find(&renders[0], "StatefulSet", "rel-sluice-mta");
        api.apply_json(sts);
        let deployment = find(&renders[0], "Deployment", "rel-sluice-operator");
        let operator = start_operator(&api, deployment);

        let pods = renders
            .iter()
            .enumerate()
            .map(|(i, docs)| {
                let name = format!("rel-sluice-mta-{i}");
                let pod = MtaPod::start(&api, docs, &name, secrets, &hosts);
                pod.register(&api, docs);
                api.apply_json(&serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": format!("spool-{}", pod.name), "namespace": NAMESPACE},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }));
                pod
            })
            .collect();
        let fleet = Fleet {
            pods,
            gone: vec![],
            hosts,
            operator,
            api,
            dns,
        };
        // the operator's first ConfigMap (no objects yet), on every pod
        fleet.wait_rollout(None);
        fleet
    }

    /// A scale of the StatefulSet to `n`, as its controller and the kubelet
    /// carry it out: each pod above runs its preStop sleep (the chart's
    /// `lifecycle.preStop`), gets SIGTERM and drains, and its Pod object is
    /// deleted; its spool claim stays. With `kill`, a node lost first: each
    /// pod above is SIGKILLed and its Pod object deleted, then the fleet is
    /// scaled. The stopped pods move to `gone`, their files kept.
    pub fn scale_to(&mut self, n: usize, kill: bool) {
        let replicas = format!(r#"{{"spec":{{"replicas":{n}}}}}"#);
        let patch = [
            "patch",
            "statefulset",
            "rel-sluice-mta",
            "--type=merge",
            "-p",
            &replicas,
        ];
        if kill {
            while self.pods.len() > n {
                let mut pod = self.pods.pop().unwrap();
                pod.kill9();
                self.kubectl(&["delete", "pod", &pod.name]);
                self.gone.push(pod);
            }
            self.kubectl(&patch);
            return;
        }
        self.kubectl(&patch);
        let sts = self.get(&["get", "statefulset", "rel-sluice-mta"]);
        let pre_stop = sts["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
            ["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        // the kubelet's preStop sleep: the pod still runs, its Pod object
        // still exists
        std::thread::sleep(Duration::from_secs(pre_stop));
        while self.pods.len() > n {
            let mut pod = self.pods.pop().unwrap();
            pod.stop();
            self.kubectl(&["delete", "pod", &pod.name]);
            self.gone.push(pod);
        }
    }

    /// The config hash on the operator's ConfigMap now.
    pub fn config_hash(&self) -> String {
        self.generated_hash().expect("the operator's ConfigMap")
    }

    /// `kubectl apply -n mail -f <file>` of a file in tests/e2e with its
    /// `{PLACEHOLDERS}` filled in.
    pub fn apply_fixture(&self, file: &str, vars: &[(&str, String)]) {
        let mut text = std::fs::read_to_string(root_path(&format!("tests/e2e/{file}"))).unwrap();
        for (k, v) in vars {
            text = text.replace(&format!("{{{k}}}"), v);
        }
        assert!(
            !text.contains("{"),
            "unfilled placeholder in {file}: {text}"
        );
        let path = self.api.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// kubectl in the release's namespace; must succeed.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", NAMESPACE];
        all.extend(args);
        self.api.kubectl_ok(&all)
    }

    pub fn get(&self, args: &[&str]) -> Value {
        let mut all = vec!["-n", NAMESPACE];
        all.extend(args);
        self.api
            .get_json(&all)
            .unwrap_or_else(|| panic!("kubectl get {args:?} found nothing"))
    }

    /// The config hash annotation on the operator's ConfigMap, once written.
    fn generated_hash(&self) -> Option<String> {
        let cm =
            self.api
                .get_json(&["-n", NAMESPACE, "get", "configmap", "rel-sluice-generated"])?;
        cm["metadata"]["annotations"]["sluice.dev/config-hash"]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until the operator has written a config other than `previous`
    /// that holds every object as it is now, and every pod reports running
    /// it on its admin API; its hash.
    ///
    /// A config other than `previous` is not enough: applying three objects
    /// can give two renders, and a loaded machine rolls out the first (say
    /// the EgressPool without its QueuePolicy) before the operator has seen
    /// the last. So every QueuePolicy, EgressPool, EgressPath and DkimSigner must also
    /// say, in its status, that its current generation is in this config
    /// (or was rejected).
    pub fn wait_rollout(&self, previous: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(hash) = self.generated_hash()
                && Some(hash.as_str()) != previous
                && self.objects_reconciled_into(&hash)
                && self
                    .pods
                    .iter()
                    .all(|p| p.running_hash().as_deref() == Some(&hash))
            {
                return hash;
            }
            if Instant::now() >= deadline {
                let running: Vec<Option<String>> =
                    self.pods.iter().map(|p| p.running_hash()).collect();
                panic!(
                    "no rollout: the ConfigMap has {:?} (previous {previous:?}), the pods run {running:?}; operator log:\n{}",
                    self.generated_hash(),
                    self.operator.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every pod runs a config other than `previous` (the
    /// pods have applied an edit, whatever the objects' statuses say yet).
    pub fn wait_pods_leave(&self, previous: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .pods
            .iter()
            .all(|p| p.running_hash().is_some_and(|h| h != previous))
        {
            assert!(Instant::now() < deadline, "the pods still run {previous}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the status of every object of the kinds describes its
    /// current generation and names `hash` as the config it is part of
    /// (a rejected object names none).
    fn objects_reconciled_into(&self, hash: &str) -> bool {
        let Some(list) = self.api.get_json(&[
            "-n",
            NAMESPACE,
            "get",
            "queuepolicies,egresspools,egresspaths,dkimsigners",
        ]) else {
            return false;
        };
        list["items"].as_array().into_iter().flatten().all(|o| {
            let status = &o["status"];
            status["observedGeneration"] == o["metadata"]["generation"]
                && (status["configHash"] == hash || status["configHash"].is_null())
        })
    }

    /// `kubectl wait --for=condition=Ready` on every object of the kinds.
    pub fn wait_ready(&self) {
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "queuepolicies,egresspools,egresspaths,dkimsigners",
            "--all",
            "--timeout=30s",
        ]);
    }
}

pub fn root_path(rel: &str) -> String {
    workspace_root().join(rel).display().to_string()
}

/// The chart rendered for one pod: free ports, dnsmasq as its name server,
/// and `extra` values.
fn render(dns_port: u16, extra: &[&str]) -> Vec<Value> {
    let sets = [
        format!("mta.listeners.smtp.containerPort={}", free_port()),
        format!("mta.listeners.submission.containerPort={}", free_port()),
        format!("mta.admin.containerPort={}", free_port()),
        format!("mta.dns.nameservers[0]=127.0.0.1:{dns_port}"),
    ];
    let mut sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    sets.extend(extra);
    let yaml = chart::template(Some(&root_path(VALUES)), &sets).unwrap();
    documents(&yaml)
}

/// The operator with its Deployment's args and env (its metrics on a free
/// loopback port instead of the pod's 0.0.0.0:8080).
/// Every Secret volume of the pod whose Secret is in the API server, written
/// into its mount as the kubelet does (a file per key). The kubelet holds a
/// pod until its Secrets exist: so the admin API's, which the operator
/// creates at its first poll, is waited for. Returns the admin API's
/// `user:password`.
fn mount_secrets(
    api: &ApiServer,
    spec: &Value,
    container: &Value,
    root: &std::path::Path,
) -> Option<String> {
    use base64::Engine;
    let mut admin_user = None;
    for volume in spec["volumes"].as_array().unwrap() {
        let Some(name) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        let get = || api.get_json(&["-n", NAMESPACE, "get", "secret", name]);
        let secret = if name == ADMIN_SECRET {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(s) = get() {
                    break s;
                }
                assert!(
                    Instant::now() < deadline,
                    "the operator made no {name} Secret"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            match get() {
                Some(s) => s,
                None => continue,
            }
        };
        let dir = pod::mount_of(container, volume["name"].as_str().unwrap(), root);
        let mut files = BTreeMap::new();
        for (key, value) in secret["data"].as_object().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap())
                .unwrap();
            std::fs::write(dir.join(key), &bytes).unwrap();
            files.insert(key.clone(), String::from_utf8(bytes).unwrap());
        }
        if name == ADMIN_SECRET {
            admin_user = Some(format!("{}:{}", files["username"], files["password"]));
        }
    }
    admin_user
}

fn start_operator(api: &ApiServer, deployment: &Value) -> Operator {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut args = pod::plain_args(container);
    let at = args.iter().position(|a| a == "--metrics-addr").unwrap();
    args[at + 1] = "127.0.0.1:{METRICS_PORT}".into();
    let env = named(&container["env"], "POD_NAMESPACE");
    assert_eq!(
        env["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    Operator::spawn(api, &args, &[("POD_NAMESPACE", NAMESPACE)])
}

/// One MTA pod of the StatefulSet.
pub struct MtaPod {
    /// First, so it stops writing before the root below is removed (fields
    /// drop in order).
    _projector: Projector,
    pub name: String,
    pub root: tempfile::TempDir,
    pub smtp: u16,
    pub submission: u16,
    pub admin: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `user:password` of the admin API, from its mounted Secret.
    pub admin_user: Option<String>,
    mounts: Vec<Mount>,
    /// The /etc/hosts bound into its namespace.
    hosts: std::path::PathBuf,
    child: Option<Child>,
}

impl MtaPod {
    fn start(
        api: &ApiServer,
        docs: &[Value],
        name: &str,
        secrets: &[(&str, &str, &str)],
        hosts: &std::path::Path,
    ) -> MtaPod {
        let sts = find(docs, "StatefulSet", "rel-sluice-mta");
        let spec = &sts["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let port = |name: &str| {
            named(&container["ports"], name)["containerPort"]
                .as_u64()
                .unwrap() as u16
        };
        let root = tempfile::tempdir().unwrap();
        let mounts = pod::mounts(container);
        pod::lay_out(&mounts, root.path());

        // the policy volume: the chart's ConfigMap (this pod's render), the
        // others from the API server, as the kubelet projects them
        let chart_cm = find(docs, "ConfigMap", "rel-sluice-mta");
        let mut fixed = BTreeMap::new();
        let mut from_api = vec![];
        for source in named(&spec["volumes"], "policy")["projected"]["sources"]
            .as_array()
            .unwrap()
        {
            let cm = source["configMap"]["name"].as_str().unwrap();
            if cm == "rel-sluice-mta" {
                for (k, v) in chart_cm["data"].as_object().unwrap() {
                    fixed.insert(k.clone(), v.as_str().unwrap().to_string());
                }
            } else {
                from_api.push(cm);
            }
        }
        let projector = Projector::start(
            api,
            NAMESPACE,
            &from_api,
            fixed,
            pod::mount_of(container, "policy", root.path()),
            Duration::from_millis(300),
        );
        for (secret, key, value) in secrets {
            let dir = pod::mount_of(container, &format!("secret-{secret}"), root.path());
            std::fs::write(dir.join(key), value).unwrap();
        }
        let admin_user = mount_secrets(api, spec, container, root.path());
        let mut pod = MtaPod {
            name: name.to_string(),
            smtp: port("smtp"),
            submission: port("submission"),
            admin: port("admin"),
            args: pod::plain_args(container),
            mounts,
            env: pod::env(container, name),
            admin_user,
            root,
            hosts: hosts.to_path_buf(),
            child: None,
            _projector: projector,
        };
        pod.spawn();
        pod
    }

    /// The Pod object, with the StatefulSet template's labels and
    /// annotations (the admin port among them).
    fn register(&self, api: &ApiServer, docs: &[Value]) {
        let template = &find(docs, "StatefulSet", "rel-sluice-mta")["spec"]["template"];
        api.register_pod(
            NAMESPACE,
            &self.name,
            &template["metadata"]["labels"],
            &template["metadata"]["annotations"],
        );
    }

    /// Starts the container's process in a mount namespace with its
    /// volumes at their mount paths, and waits for its startup probe
    /// (`/api/check-liveness/v1`: accepting mail).
    pub fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("stderr.log"))
            .unwrap();
        let child = self
            .in_namespace(&self.args, &self.env, &[(&self.hosts, "/etc/hosts")])
            .stderr(stderr)
            .spawn()
            .expect("unshare runs (util-linux)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && http_request(self.admin, "/api/check-liveness/v1", None)["status"] == 200;
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status}: {}", self.name, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} never started: {}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sluice-mta` with `args` and `env` in a mount namespace of its own
    /// where this pod's volumes are at their mount paths, and each
    /// `(file, path)` of `extra` bound over `path` (the kubelet's
    /// /etc/hosts, say).
    pub fn in_namespace(
        &self,
        args: &[String],
        env: &[(String, String)],
        extra: &[(&std::path::Path, &str)],
    ) -> Command {
        // parents before the mounts nested in them; a mount that would hide
        // the pod's root (the /tmp emptyDir, when the root is under /tmp) last
        let root = self.root.path().to_path_buf();
        let mut paths: Vec<&str> = self.mounts.iter().map(|m| m.path.as_str()).collect();
        paths.sort_by_key(|p| (root.starts_with(p), p.len()));
        let mut script = String::from("set -e\n");
        for (file, path) in extra {
            script.push_str(&format!("mount --bind '{}' '{path}'\n", file.display()));
        }
        for p in paths {
            script.push_str(&format!(
                "mkdir -p '{p}'\nmount --bind '{}{p}' '{p}'\n",
                self.root.path().display()
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
            "pod",
        ])
        .arg(binary("sluice-mta"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(self.root.path())
        .stdout(Stdio::null());
        cmd
    }

    /// SIGTERM, as the kubelet stops a pod, and wait for the drain to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL, as an OOM kill or a node failure would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A path inside the pod's file system.
    pub fn path(&self, abs: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}{abs}", self.root.path().display()))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn records(&self) -> Vec<Value> {
        log_records(&self.path(LOG_DIR))
    }

    /// Polls the pod's log until `cond` holds; the records then.
    pub fn wait_for_records(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let what = format!("{}: {what}", self.name);
        poll_records(timeout, &what, || self.records(), cond, || self.stderr())
    }

    /// The hash of the generated policy the pod runs, from its admin API.
    pub fn running_hash(&self) -> Option<String> {
        let r = http_request_as(
            self.admin,
            "/api/admin/config/v1",
            None,
            self.admin_user.as_deref(),
        );
        assert_eq!(r["status"], 200, "{}: {r}", self.name);
        let config: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        config["files"]["sluice-generated.lua"]
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for MtaPod {
    fn drop(&mut self) {
        self.kill9();
    }
}
