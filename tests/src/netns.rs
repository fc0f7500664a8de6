//! Several hosts on one machine, in network namespaces joined by veth
//! pairs: a Kubernetes node that forwards a Service port to a pod the way
//! kube-proxy does with `externalTrafficPolicy: Cluster` (DNAT to the pod,
//! then SNAT of the client to the node's own address), an internet client
//! outside it, and a pod-network client inside the cluster. Needs root.
//!
//! ```text
//!  internet 203.0.113.10 ── 203.0.113.1 node 10.244.0.1 ── 10.244.0.5 pod (the MTA)
//!                                        10.244.1.1 ── 10.244.1.6 cluster client
//! ```

use std::process::{Command, Output};

pub const INTERNET_CLIENT: &str = "203.0.113.10";
/// The node's address on the internet side: the load balancer's target.
pub const NODE_PUBLIC: &str = "203.0.113.1";
/// The node's address on the pod network: what a masqueraded client looks like.
pub const NODE_POD_SIDE: &str = "10.244.0.1";
pub const POD: &str = "10.244.0.5";
pub const CLUSTER_CLIENT: &str = "10.244.1.6";

/// The namespaces of one test; removed on drop.
pub struct Cluster {
    pub internet: String,
    pub node: String,
    pub pod: String,
    pub cluster_client: String,
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) -> Output {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

impl Cluster {
    /// The topology above; `forwards` are (node port, pod port) pairs the
    /// node DNATs from the internet side to the pod, masquerading the client.
    pub fn start(forwards: &[(u16, u16)]) -> Cluster {
        // short, unique names (process and call), left over by nothing
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:x}{call}", std::process::id());
        let c = Cluster {
            internet: format!("inet{id}"),
            node: format!("node{id}"),
            pod: format!("pod{id}"),
            cluster_client: format!("cc{id}"),
        };
        for ns in c.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let link = |a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str| {
            ip(&[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ]);
            ip(&["-n", a, "addr", "add", a_ip, "dev", a_if]);
            ip(&["-n", b, "addr", "add", b_ip, "dev", b_if]);
            ip(&["-n", a, "link", "set", a_if, "up"]);
            ip(&["-n", b, "link", "set", b_if, "up"]);
        };
        link(
            &c.internet,
            "eth0",
            "203.0.113.10/24",
            &c.node,
            "pub0",
            "203.0.113.1/24",
        );
        link(
            &c.pod,
            "eth0",
            "10.244.0.5/24",
            &c.node,
            "pod0",
            "10.244.0.1/24",
        );
        link(
            &c.cluster_client,
            "eth0",
            "10.244.1.6/24",
            &c.node,
            "cc0",
            "10.244.1.1/24",
        );
        ip(&[
            "-n",
            &c.internet,
            "route",
            "add",
            "default",
            "via",
            NODE_PUBLIC,
        ]);
        ip(&[
            "-n",
            &c.pod,
            "route",
            "add",
            "default",
            "via",
            NODE_POD_SIDE,
        ]);
        ip(&[
            "-n",
            &c.cluster_client,
            "route",
            "add",
            "default",
            "via",
            "10.244.1.1",
        ]);
        c.exec_ok(&c.node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        for (node_port, pod_port) in forwards {
            c.exec_ok(
                &c.node,
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    "pub0",
                    "-p",
                    "tcp",
                    "--dport",
                    &node_port.to_string(),
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &format!("{POD}:{pod_port}"),
                ],
            );
        }
        // kube-proxy's masquerade for traffic that came from outside the cluster
        c.exec_ok(
            &c.node,
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "203.0.113.0/24",
                "-o",
                "pod0",
                "-j",
                "MASQUERADE",
            ],
        );
        c
    }

    fn all(&self) -> [&String; 4] {
        [&self.internet, &self.node, &self.pod, &self.cluster_client]
    }

    /// `program args` inside the namespace `ns`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    pub fn exec_ok(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
