//! The chart's Redis for the fleet's shared throttles, rendered by a real
//! helm: the bundled one (generated password, secure pod, reachable from
//! the MTA pods only) and how the pods and the operator are pointed at it;
//! two of the chart's pods run for real against a TLS Redis.

use serde_json::Value;
use sluice_tests::chart::*;
use sluice_tests::pod::ChartPod;
use sluice_tests::redis::{PASSWORD, Redis};
use sluice_tests::{binary, free_port, http_request_as};
use std::time::{Duration, Instant};

fn render(sets: &[&str]) -> Vec<Value> {
    documents(&template(None, sets).unwrap_or_else(|e| panic!("{sets:?}: {e}")))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str, component: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| {
            d["kind"] == kind && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .collect()
}

/// The MTA pods' rendered settings (`sluice-settings.lua`'s JSON).
fn settings(docs: &[Value]) -> Value {
    let cm = of_kind(docs, "ConfigMap", "mta")[0];
    let lua = cm["data"]["sluice-settings.lua"].as_str().unwrap();
    let json = lua
        .split("[==[")
        .nth(1)
        .unwrap()
        .split("]==]")
        .next()
        .unwrap();
    serde_json::from_str(json).unwrap()
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    let d = of_kind(docs, "Deployment", "operator")[0];
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_bundled_redis_has_a_generated_password_a_secure_pod_and_only_mta_clients() {
    let docs = render(&["redis.deploy=true", "mta.replicas=2"]);
    let secret = of_kind(&docs, "Secret", "redis");
    assert_eq!(secret.len(), 1, "a generated password Secret");
    let b64 = secret[0]["data"]["password"].as_str().unwrap();
    let password = String::from_utf8(
        std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(password.len(), 40);
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    let again = render(&["redis.deploy=true", "mta.replicas=2"]);
    assert_ne!(
        of_kind(&again, "Secret", "redis")[0]["data"]["password"],
        secret[0]["data"]["password"],
        "generated per install (helm keeps it across upgrades by lookup)"
    );

    let sts = of_kind(&docs, "StatefulSet", "redis");
    assert_eq!(sts.len(), 1);
    let pod = &sts[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["enableServiceLinks"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let env = &c["env"][0];
    assert_eq!(
        env["valueFrom"]["secretKeyRef"]["name"],
        secret[0]["metadata"]["name"]
    );
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&"$(REDIS_PASSWORD)".into())
    );

    let np = of_kind(&docs, "NetworkPolicy", "redis");
    assert_eq!(np.len(), 1);
    let from = &np[0]["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1, "MTA pods only");
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "mta"
    );

    // the pods use it, with the password from the mounted Secret
    let svc = of_kind(&docs, "Service", "redis")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let redis = &settings(&docs)["redis"];
    assert_eq!(redis["node"], format!("redis://{svc}:6379/"));
    assert_eq!(redis["password_file"], "/etc/sluice/redis/password");
    assert_eq!(redis["fleet_size"], 2);
    let mta = of_kind(&docs, "StatefulSet", "mta")[0];
    let volumes = &mta["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        named(volumes, "redis-password")["secret"]["secretName"],
        secret[0]["metadata"]["name"]
    );
    assert!(operator_args(&docs).contains(&"--shared-limits".to_string()));
}

#[test]
fn an_external_redis_is_used_as_given_and_none_means_a_split() {
    let docs = render(&[
        "redis.url=redis://redis.mail.svc:6379/",
        "redis.passwordSecret.name=mail-redis",
        "redis.deploy=true",
    ]);
    // a URL wins: nothing is deployed
    assert!(of_kind(&docs, "StatefulSet", "redis").is_empty());
    assert!(of_kind(&docs, "Secret", "redis").is_empty());
    assert_eq!(
        settings(&docs)["redis"]["node"],
        "redis://redis.mail.svc:6379/"
    );
    assert!(operator_args(&docs).contains(&"--shared-limits".to_string()));

    let plain = render(&[]);
    assert!(settings(&plain).get("redis").is_none());
    assert!(!operator_args(&plain).contains(&"--shared-limits".to_string()));
    assert!(
        template(None, &["redis.url=http://x"]).is_err(),
        "not a redis URL"
    );
}

/// Kills a pod's process when the test ends, however it ends.
struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A guarded metric of a pod's admin API, with the operator's credentials.
/// A metric of a chart pod; 0 while its admin listener is not up yet.
fn pod_metric(admin: u16, name: &str) -> f64 {
    if std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        return 0.0;
    }
    let r = http_request_as(admin, "/metrics", None, Some(ADMIN));
    let body = r["body"].as_str().unwrap_or_default().to_string();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

const ADMIN: &str = "sluice-operator:pw-from-the-secret";

/// Two of the chart's MTA pods, run for real and laid out as the kubelet
/// mounts them, with an external TLS Redis named by `redis.url`, its
/// password in `redis.passwordSecret` and its private CA in
/// `redis.tls.caSecret`: both reach it through the mounted Secrets and
/// count each other in it (the fleet a shared limit is divided by when
/// Redis is down).
#[test]
fn two_chart_pods_share_a_tls_redis_through_the_mounted_secrets() {
    let redis = Redis::start_tls();
    let url = format!("redis.url={}", redis.url());
    let mut running = vec![];
    for ordinal in 0..2 {
        let (smtp, submission, admin) = (free_port(), free_port(), free_port());
        let docs = render(&[
            &url,
            "redis.passwordSecret.name=mail-redis",
            "redis.tls.caSecret.name=mail-redis-ca",
            "mta.replicas=2",
            &format!("mta.listeners.smtp.containerPort={smtp}"),
            &format!("mta.listeners.submission.containerPort={submission}"),
            &format!("mta.admin.containerPort={admin}"),
        ]);
        assert_eq!(settings(&docs)["redis"]["fleet_size"], 2);
        let pod = ChartPod::new(&docs);
        std::fs::write(pod.mount_of("redis-password").join("password"), PASSWORD).unwrap();
        std::fs::copy(redis.ca_file(), pod.mount_of("redis-ca").join("ca.crt")).unwrap();
        let auth = pod.mount_of("admin-auth");
        let (user, password) = ADMIN.split_once(':').unwrap();
        std::fs::write(auth.join("username"), user).unwrap();
        std::fs::write(auth.join("password"), password).unwrap();
        let log = pod.root.path().join("stderr.log");
        let mut cmd = pod.command(
            std::process::Command::new(binary("sluice-mta")),
            &format!("rel-sluice-mta-{ordinal}"),
        );
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        running.push((Running(cmd.spawn().unwrap()), admin, log, pod));
    }
    let admins: Vec<u16> = running.iter().map(|r| r.1).collect();
    for admin in admins {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pod_metric(admin, "sluice_fleet_nodes") < 2.0
            || pod_metric(admin, "sluice_redis_up") < 1.0
        {
            if Instant::now() >= deadline {
                // both pods: whether each still runs, and what it logged
                let pods: Vec<String> = running
                    .iter_mut()
                    .map(|(child, admin, log, _)| {
                        format!(
                            "pod with admin port {admin}: exited {:?}, fleet_nodes {}, redis_up {}\n{}",
                            child.0.try_wait().ok().flatten(),
                            pod_metric(*admin, "sluice_fleet_nodes"),
                            pod_metric(*admin, "sluice_redis_up"),
                            std::fs::read_to_string(log).unwrap_or_default()
                        )
                    })
                    .collect();
                panic!(
                    "pod {admin} never shared the TLS Redis with its peer:\n{}",
                    pods.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // the URL must be TLS for a CA to mean anything
    let err = template(
        None,
        &["redis.url=redis://r:6379/", "redis.tls.caSecret.name=ca"],
    )
    .unwrap_err();
    assert!(err.contains("redis.tls.caSecret"), "{err}");
}
