//! The Argo CD health check (deploy/argocd/health.lua) in Lua 5.1, the
//! dialect of Argo CD's gopher-lua, on statuses shaped as the operator
//! writes them; and the argocd-cm manifest carries exactly that script.

use serde_json::{Value, json};
use sluice_tests::chart::documents;
use sluice_tests::workspace_root;
use std::process::Command;

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// (status, message) that the health script gives `obj`.
fn health(obj: &Value) -> (String, String) {
    let script = workspace_root().join("deploy/argocd/health.lua");
    let o = Command::new("lua5.1")
        .arg("-e")
        .arg(format!(
            "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, '\\n', hs.message)",
            lua(obj),
            script.display().to_string()
        ))
        .output()
        .expect("lua5.1 is installed (scripts/install-deps)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let (status, message) = out.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

fn object(generation: u64, status: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "QueuePolicy",
        "metadata": {"name": "smarthost", "generation": generation},
        "status": status,
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-22T10:00:00Z"})
}

#[test]
fn argo_cd_health_follows_the_conditions() {
    let hash = "4f2a9c0e7d1b33aa";
    let ready = object(
        3,
        json!({"observedGeneration": 3, "configHash": hash, "pods": "2/2", "conditions": [
            condition("Accepted", "True", "Valid", "rendered"),
            condition("Ready", "True", "RolloutComplete", "2/2 MTA pods run the config"),
        ]}),
    );
    assert_eq!(
        health(&ready),
        (
            "Healthy".into(),
            "Config 4f2a9c0e7d1b runs on 2/2 MTA pods".into()
        )
    );

    let rejected = object(
        2,
        json!({"observedGeneration": 2, "conditions": [
            condition("Accepted", "False", "InvalidThrottle", "spec.maxMessageRate: bad throttle '10/fortnight'"),
            condition("Ready", "False", "InvalidThrottle", "not rendered"),
            condition("Stalled", "True", "InvalidThrottle", "fix the object"),
        ]}),
    );
    assert_eq!(
        health(&rejected),
        (
            "Degraded".into(),
            "InvalidThrottle: spec.maxMessageRate: bad throttle '10/fortnight'".into()
        )
    );

    // a DkimSigner in the config whose key cannot be used
    let keyless = object(
        1,
        json!({"observedGeneration": 1, "configHash": hash, "pods": "2/2", "conditions": [
            condition("Accepted", "True", "Rendered", "part of config"),
            condition("Ready", "False", "SecretNotFound", "spec.keySecretRef: no Secret"),
            condition("Stalled", "True", "SecretNotFound", "spec.keySecretRef: no Secret"),
            condition("KeyReady", "False", "SecretNotFound", "spec.keySecretRef: no Secret"),
        ]}),
    );
    assert_eq!(
        health(&keyless),
        (
            "Degraded".into(),
            "SecretNotFound: spec.keySecretRef: no Secret".into()
        )
    );

    let rolling = object(
        4,
        json!({"observedGeneration": 4, "configHash": hash, "pods": "1/2", "conditions": [
            condition("Accepted", "True", "Valid", "rendered"),
            condition("Ready", "False", "RollingOut", "1/2 MTA pods run the config"),
            condition("Reconciling", "True", "RollingOut", "waiting for MTA pods"),
        ]}),
    );
    assert_eq!(
        health(&rolling),
        (
            "Progressing".into(),
            "RollingOut: 1/2 MTA pods run the config".into()
        )
    );

    // an edit the operator has not seen yet is not healthy, whatever the old status said
    let stale = object(5, ready["status"].clone());
    let (status, message) = health(&stale);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 5"), "{message}");

    let fresh = object(1, Value::Null);
    assert_eq!(health(&fresh).0, "Progressing");
}

#[test]
fn argocd_cm_carries_the_health_script_for_each_kind() {
    let root = workspace_root().join("deploy/argocd");
    let script = std::fs::read_to_string(root.join("health.lua")).unwrap();
    let cm = documents(&std::fs::read_to_string(root.join("argocd-cm.yaml")).unwrap()).remove(0);
    for kind in ["QueuePolicy", "EgressPool", "EgressPath", "DkimSigner"] {
        let key = format!("resource.customizations.health.sluice.dev_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(script.as_str()), "{key}");
    }
}
