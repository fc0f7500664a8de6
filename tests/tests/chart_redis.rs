//! The chart's Redis for the fleet's shared throttles, rendered by a real
//! helm: the bundled one (generated password, secure pod, reachable from
//! the MTA pods only) and how the pods and the operator are pointed at it.

use serde_json::Value;
use sluice_tests::chart::*;

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
