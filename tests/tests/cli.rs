//! The `sluice` command line against a real sluice-mta: queue-summary of
//! mail waiting for a refusing destination, suspend / suspend-list /
//! suspend-cancel, bounce-list, inspect-message of a message in backoff
//! (attempts and due time), config, `--json` beside each table, the
//! admin API's credentials from a password file, and the server's refusal
//! said plainly. Tables are compared with ids, times and ports masked.

use serde_json::Value;
use sluice_tests::*;
use std::time::Duration;

fn mta(admin: u16) -> Mta {
    Mta::start(&policy_with_init(
        &format!(
            "kumo.start_http_listener {{ listen = '127.0.0.1:{admin}', trusted_hosts = {{ '10.9.9.9' }} }}"
        ),
        "",
        r#"
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'ops' and password == 's3cret'
end)
kumo.on('get_queue_config', function(domain)
  -- nothing listens on port 9: every attempt fails and waits an hour
  return kumo.make_queue_config {
    retry_interval = '1 hour',
    protocol = { smtp = { mx_list = { '[127.0.0.1]:9' } } },
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path { prohibited_hosts = {} }
end)
"#,
    ))
}

/// `sluice <args>` as the operator `ops`: (success, stdout, stderr).
fn sluice(admin: u16, password_file: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let password_file = password_file.to_str().unwrap();
    let mut all = vec!["--user", "ops", "--password-file", password_file];
    all.extend(args);
    sluice_cli(admin, &all)
}

/// `text` with what differs between runs masked: message and rule ids,
/// RFC 3339 times, hashes, and column padding around them.
fn masked(text: &str) -> String {
    let id = regex::Regex::new(
        r"\b[0-9a-f]{32}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
    )
    .unwrap();
    let hash = regex::Regex::new(r"\b[0-9a-f]{64}\b").unwrap();
    let time =
        regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)").unwrap();
    let spaces = regex::Regex::new(r" {2,}").unwrap();
    let t = hash.replace_all(text, "<hash>");
    let t = id.replace_all(&t, "<id>");
    let t = time.replace_all(&t, "<time>");
    spaces.replace_all(&t, "  ").into_owned()
}

#[test]
fn kcli_verbs_show_and_change_what_the_mta_holds() {
    let admin = free_port();
    let mta = mta(admin);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    for to in ["a@waiting.example", "b@waiting.example", "c@other.example"] {
        let reply = RawSmtp::send_message(mta.port, to, "Subject: x\r\n\r\nx");
        assert!(reply.starts_with("250"), "{reply}");
    }
    let recs = mta.wait_for_records(Duration::from_secs(20), "three deferrals", |r| {
        count(r, "TransientFailure") == 3
    });
    let id = recs
        .iter()
        .find(|r| r["type"] == "TransientFailure" && r["recipient"] == "a@waiting.example")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .unwrap();

    let (ok, out, err) = sluice(admin, &pw, &["queue-summary"]);
    assert!(ok, "{err}");
    let out = masked(&out);
    assert!(
        out.starts_with("SITE  SOURCE  PROTO  PROVIDER  C  Q\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "SCHEDULED QUEUE  PROVIDER  SUSPENDED  COUNT\n\
             waiting.example  -  -  2\n\
             other.example  -  -  1\n\n\
             3 messages in 2 scheduled queues\n"
        ),
        "{out}"
    );
    let (ok, json, _) = sluice(admin, &pw, &["--json", "queue-summary"]);
    assert!(ok);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["scheduled_total"], 3, "{json}");

    // a message in backoff: its attempts and due time
    let (ok, out, err) = sluice(admin, &pw, &["inspect-message", &id]);
    assert!(ok, "{err}");
    let out = masked(&out);
    for want in [
        "id:  <id>\n",
        "recipient:  a@waiting.example\n",
        "attempts:  1\n",
        "due:  <time>\n",
        "last response: 400 KumoMTA internal: failed to connect to any candidate hosts",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }

    // suspend, list, cancel
    let (ok, out, err) = sluice(
        admin,
        &pw,
        &[
            "suspend",
            "--domain",
            "waiting.example",
            "--reason",
            "provider asked",
            "--duration",
            "10m",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        masked(&out),
        "Suspend rule <id> for domain=waiting.example until <time>: 0 messages so far\n"
    );
    let (_, out, _) = sluice(admin, &pw, &["suspend-list"]);
    assert_eq!(
        masked(&out),
        "ID  CRITERIA  REASON  EXPIRES  MESSAGES\n<id>  domain=waiting.example  provider asked  <time>  0\n"
    );
    let (_, out, _) = sluice(admin, &pw, &["queue-summary"]);
    assert!(
        masked(&out).contains("waiting.example  -  yes  2\n"),
        "{out}"
    );
    let (_, json, _) = sluice(admin, &pw, &["--json", "suspend-list"]);
    let rules: Value = serde_json::from_str(&json).unwrap();
    let rule_id = rules[0]["id"].as_str().unwrap().to_string();
    let (ok, out, _) = sluice(admin, &pw, &["suspend-cancel", "--id", &rule_id]);
    assert!(ok);
    assert_eq!(
        masked(&out),
        "cancelled Suspend rule <id> for domain=waiting.example\n"
    );
    let (_, out, _) = sluice(admin, &pw, &["suspend-list"]);
    assert_eq!(out, "ID  CRITERIA  REASON  EXPIRES  MESSAGES\n");
    let (_, out, _) = sluice(admin, &pw, &["bounce-list"]);
    assert_eq!(out, "ID  CRITERIA  REASON  EXPIRES  MESSAGES\n");

    let (ok, out, _) = sluice(admin, &pw, &["config"]);
    assert!(ok);
    let out = masked(&out);
    assert!(
        out.contains("hash: <hash>\n") && out.contains("epoch: "),
        "{out}"
    );

    // what the server refuses is said, with its status; no answer at all too
    let (ok, _, err) = sluice(admin, &pw, &["suspend-cancel", "--id", "nope"]);
    assert!(!ok);
    assert!(err.contains("HTTP 404: no such rule"), "{err}");
    std::fs::write(&pw, "wrong\n").unwrap();
    let (ok, _, err) = sluice(admin, &pw, &["queue-summary"]);
    assert!(!ok);
    assert!(err.contains("HTTP 401"), "{err}");
    let (ok, _, err) = sluice(free_port(), &pw, &["config"]);
    assert!(!ok);
    assert!(err.starts_with("sluice: http://127.0.0.1:"), "{err}");
}

#[test]
fn suspend_ready_q_holds_one_ready_queue_until_cancelled() {
    let admin = free_port();
    let sink = sluice_tests::reply_sink::ReplySink::start(|_, _| None);
    let mta = Mta::start(&policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config {{
    retry_interval = '1 hour',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}} }}
end)
"#,
            port = sink.port
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "unused\n").unwrap();
    let name = format!("unspecified->mx_list:[127.0.0.1]:{}@smtp_client", sink.port);

    let (ok, out, err) = sluice(
        admin,
        &pw,
        &[
            "suspend-ready-q",
            "--name",
            &name,
            "--reason",
            "postmaster call",
            "--duration",
            "10m",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        masked(&out),
        format!("suspended {name} until <time> (<id>): postmaster call\n")
    );
    let reply = RawSmtp::send_message(mta.port, "held@example.com", "Subject: x\r\n\r\nx");
    assert!(reply.starts_with("250"), "{reply}");
    let recs = mta.wait_for_records(Duration::from_secs(20), "the hold", |r| {
        r.iter().any(|r| {
            r["type"] == "Delayed"
                && r["response"]["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("Context: ReadyQueueSuspended: postmaster call"))
        })
    });
    assert_eq!(count(&recs, "Delivery"), 0);
    assert_eq!(sink.rcpts(), 0, "nothing was attempted");
    let (_, out, _) = sluice(admin, &pw, &["suspend-ready-q-list"]);
    assert_eq!(
        masked(&out),
        format!("ID  READY QUEUE  REASON  EXPIRES\n<id>  {name}  postmaster call  <time>\n")
    );
    let (_, json, _) = sluice(admin, &pw, &["--json", "suspend-ready-q-list"]);
    let list: Value = serde_json::from_str(&json).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();

    // cancelled: what it held goes at once, not in ten minutes
    let (ok, out, _) = sluice(admin, &pw, &["suspend-ready-q-cancel", "--id", &id]);
    assert!(ok);
    assert_eq!(masked(&out), format!("resumed {name} (<id>)\n"));
    mta.wait_for_records(Duration::from_secs(20), "the delivery", |r| {
        count(r, "Delivery") == 1
    });
    let (_, out, _) = sluice(admin, &pw, &["suspend-ready-q-list"]);
    assert_eq!(out, "ID  READY QUEUE  REASON  EXPIRES\n");

    let (ok, _, err) = sluice(
        admin,
        &pw,
        &["suspend-ready-q", "--name", "example.com", "--reason", "x"],
    );
    assert!(!ok);
    assert!(
        err.contains("HTTP 400: \"example.com\" is not a ready queue name"),
        "{err}"
    );
}
