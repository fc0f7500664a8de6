//! Never an open relay, whatever Service the chart is exposed through:
//! network namespaces make a node that forwards Service ports to the MTA
//! pod the way kube-proxy does with `externalTrafficPolicy: Cluster`
//! (DNAT, then the internet client masqueraded to the node's private
//! address), an internet client outside and a pod-network client inside.
//! The MTA runs the chart's own rendered policy, args and mounts.

use serde_json::Value;
use sluice_tests::chart::{documents, template};
use sluice_tests::netns::{self, Cluster};
use sluice_tests::pod::ChartPod;
use sluice_tests::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "app";
const PASSWORD: &str = "app-password-from-the-secret";
const ADMIN: &str = "sluice-operator:admin-password";

/// The chart's MTA pod, running in the cluster's pod namespace.
struct Pod {
    chart: ChartPod,
    child: Child,
}

impl Pod {
    fn start(net: &Cluster, docs: &[Value]) -> Pod {
        let chart = ChartPod::new(docs);
        let secrets: &[(&str, &str, String)] = &[
            ("admin-auth", "username", "sluice-operator".into()),
            ("admin-auth", "password", "admin-password".into()),
        ];
        for (volume, file, value) in secrets {
            std::fs::write(chart.mount_of(volume).join(file), value).unwrap();
        }
        let has = |volume: &str| {
            chart.container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == volume)
        };
        if has("smtp-auth") {
            std::fs::write(chart.mount_of("smtp-auth").join(USER), PASSWORD).unwrap();
        }
        if has("tls") {
            let (cert, key) = make_certificate(&chart.mount_of("tls"));
            std::fs::rename(cert, chart.mount_of("tls").join("tls.crt")).unwrap();
            std::fs::rename(key, chart.mount_of("tls").join("tls.key")).unwrap();
        }
        let mut cmd = chart.command(
            net.command(&net.pod, &binary("sluice-mta").to_string_lossy()),
            "rel-sluice-mta-0",
        );
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(chart.root.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut pod = Pod { chart, child };
        // the startup probe, from inside the pod's network
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = net
                .command(&net.pod, "python3")
                .arg(workspace_root().join("tests/clients/http_get.py"))
                .arg(format!(
                    "http://{}:{}/api/check-liveness/v1",
                    netns::POD,
                    pod.chart.port("admin")
                ))
                .output()
                .unwrap();
            if probe.status.success()
                && String::from_utf8_lossy(&probe.stdout).contains("\"status\": 200")
            {
                break;
            }
            if let Some(status) = pod.child.try_wait().unwrap() {
                panic!("sluice-mta exited with {status}: {}", pod.stderr());
            }
            assert!(Instant::now() < deadline, "never started: {}", pod.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        pod
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.chart.root.path().join("stderr.log")).unwrap_or_default()
    }

    fn records(&self) -> Vec<Value> {
        log_records(&self.chart.mount_of("logs"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One smtplib session from namespace `ns` to `host:port` (see smtp_auth.py).
fn session(net: &Cluster, ns: &str, host: &str, port: u16, args: &[&str]) -> Value {
    let o = net
        .command(ns, "python3")
        .arg(workspace_root().join("tests/clients/smtp_auth.py"))
        .arg(port.to_string())
        .args(["--host", host])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn code(v: &Value) -> u64 {
    v[0].as_u64()
        .unwrap_or_else(|| panic!("no reply code in {v}"))
}

/// The Reception and Rejection records' peer addresses.
fn peers(records: &[Value], kind: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["type"] == kind)
        .map(|r| r["peer_address"]["addr"].as_str().unwrap().to_string())
        .collect()
}

/// The threat is real: the chart's default submission listener relays for
/// the pod networks, so behind a masquerading Service the internet client,
/// seen as the node, relays. This is what the chart now refuses to render
/// for a LoadBalancer or NodePort Service with Cluster.
#[test]
fn behind_a_masquerading_service_the_default_relay_ranges_would_relay_for_the_internet() {
    let net = Cluster::start(&[(587, 5870)]);
    assert!(
        template(
            None,
            &[
                "mta.service.type=LoadBalancer",
                "mta.service.externalTrafficPolicy=Cluster"
            ]
        )
        .unwrap_err()
        .contains("refusing an open relay")
    );
    // what a user would run if the chart let the combination through
    let docs = documents(&template(None, &[]).unwrap());
    let pod = Pod::start(&net, &docs);
    let stranger = session(&net, &net.internet, netns::NODE_PUBLIC, 587, &["--no-tls"]);
    assert_eq!(code(&stranger["rcpt"]), 250, "{stranger}");
    assert_eq!(code(&stranger["data"]), 250, "{stranger}");
    let recs = pod.records();
    assert_eq!(
        peers(&recs, "Reception"),
        [netns::NODE_POD_SIDE],
        "masqueraded to the node"
    );
}

/// What the chart renders for a masquerading Service (the documented
/// ci/external-submission-values.yaml): the internet client relays only
/// with SMTP AUTH after STARTTLS; the cluster's own senders relay on the
/// internal listener; the admin API wants its credentials even from the
/// pod network.
#[test]
fn what_the_chart_renders_for_a_masquerading_service_relays_only_with_auth() {
    let net = Cluster::start(&[(25, 2525), (587, 5870)]);
    let docs = documents(&template(Some("ci/external-submission-values.yaml"), &[]).unwrap());
    let pod = Pod::start(&net, &docs);
    let (inet, public) = (&net.internet, netns::NODE_PUBLIC);

    // the internet, through the node: no AUTH, no relay, on either port
    let anon = session(&net, inet, public, 587, &[]);
    assert!(anon["features_tls"].to_string().contains("auth"), "{anon}");
    assert_eq!(code(&anon["rcpt"]), 550, "{anon}");
    assert!(
        anon["rcpt"][1].as_str().unwrap().contains("5.7.1"),
        "{anon}"
    );
    let plain = session(&net, inet, public, 25, &["--no-tls"]);
    assert_eq!(code(&plain["rcpt"]), 550, "{plain}");
    // wrong password: 535, and still no relay
    let wrong = session(
        &net,
        inet,
        public,
        587,
        &["--user", USER, "--password", "guess"],
    );
    assert_eq!(code(&wrong["auth"][0]), 535, "{wrong}");
    assert_eq!(code(&wrong["rcpt"]), 550, "{wrong}");
    // the Secret's user: relays
    let authed = session(
        &net,
        inet,
        public,
        587,
        &["--user", USER, "--password", PASSWORD],
    );
    assert_eq!(code(&authed["auth"][0]), 235, "{authed}");
    assert_eq!(code(&authed["rcpt"]), 250, "{authed}");
    assert_eq!(code(&authed["data"]), 250, "{authed}");

    // inside the cluster: the internal listener relays for the pod network
    // without AUTH; the exposed submission port wants AUTH from everyone
    let cc = &net.cluster_client;
    let internal = session(
        &net,
        cc,
        netns::POD,
        pod.chart.port("internal"),
        &["--no-tls"],
    );
    assert_eq!(code(&internal["rcpt"]), 250, "{internal}");
    assert_eq!(code(&internal["data"]), 250, "{internal}");
    let in_cluster = session(&net, cc, netns::POD, pod.chart.port("submission"), &[]);
    assert_eq!(code(&in_cluster["rcpt"]), 550, "{in_cluster}");

    let recs = pod.records();
    assert_eq!(
        peers(&recs, "Reception"),
        [netns::NODE_POD_SIDE, netns::CLUSTER_CLIENT],
        "the authenticated stranger (masqueraded) and the pod"
    );
    let authn: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "Reception")
        .map(|r| &r["meta"]["authn_id"])
        .collect();
    assert_eq!(authn, [&Value::from(USER), &Value::Null]);
    assert!(
        peers(&recs, "Rejection")
            .iter()
            .all(|p| p == netns::NODE_POD_SIDE || p == netns::CLUSTER_CLIENT)
    );

    // the admin API from the pod network (the old default trusted it):
    // 401 for inject, bounce and suspend without the Secret's credentials
    let admin = |path: &str, body: &str, user: Option<&str>| -> Value {
        let mut c = net.command(cc, "python3");
        c.arg(workspace_root().join("tests/clients/http_get.py"))
            .arg(format!(
                "http://{}:{}{path}",
                netns::POD,
                pod.chart.port("admin")
            ))
            .args(["--post", body]);
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let inject = r#"{"envelope_sender": "a@example.org", "recipients": [{"email": "b@example.net"}], "content": "Subject: x\r\n\r\nx"}"#;
    let rule = r#"{"domain": "example.net", "reason": "test", "duration": "1m"}"#;
    for (path, body) in [
        ("/api/inject/v1", inject),
        ("/api/admin/bounce/v1", rule),
        ("/api/admin/suspend/v1", rule),
    ] {
        assert_eq!(admin(path, body, None)["status"], 401, "{path}");
        assert_eq!(admin(path, body, Some(ADMIN))["status"], 200, "{path}");
    }
}
