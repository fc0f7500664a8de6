//! KumoMTA's config keys (docs/kumo-config-keys.md): every key of every
//! constructor set through `sluice-mta --validate`, accepted, ignored or
//! refused as the table says; a KumoMTA path with keys Sluice does not use
//! relays mail; `--validate` calls the egress and log hooks and names a typo
//! in each.

use sluice_mta::policy::kumo_keys::{Status, keys};
use sluice_tests::*;
use std::collections::HashMap;
use std::time::Duration;

/// The keys each constructor needs, so that only the key under test varies.
fn base(constructor: &str) -> &'static str {
    match constructor {
        "make_egress_pool" => "name = 'pool0', ",
        "make_egress_source" => "name = 'ip-1', ",
        "define_spool" => "name = 'data', path = '@dir/spool', ",
        "configure_local_logs" => "log_dir = '@dir/logs', ",
        "configure_log_hook" => "name = 'hook', ",
        "start_esmtp_listener" | "start_http_listener" => "listen = '127.0.0.1:0', ",
        _ => "",
    }
}

/// The JSON value of a pending key's example (booleans, strings, `{}`).
fn example_json(lua: &str) -> serde_json::Value {
    match lua {
        "true" => true.into(),
        "false" => false.into(),
        "{}" => serde_json::json!({}),
        s if s.starts_with('\'') => s.trim_matches('\'').into(),
        other => panic!("no JSON for example {other}"),
    }
}

fn accepted_by(accepts: &Option<Vec<serde_json::Value>>, v: &serde_json::Value) -> bool {
    let empty = |v: &serde_json::Value| v.as_object().is_some_and(|o| o.is_empty());
    accepts.as_ref().is_none_or(|list| {
        list.iter()
            .any(|a| a == v || (empty(v) && a.as_array().is_some_and(|a| a.is_empty())))
    })
}

#[test]
fn every_kumo_key_is_accepted_ignored_or_refused_as_the_table_says() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path());
    let mut lua = String::from("local kumo = require 'kumo'\nkumo.on('init', function()\n");
    for k in keys() {
        lua.push_str(&format!(
            "  do local ok, err = pcall(function() return kumo.{f} {{ {base}{key} = {example} }} end); \
             print('ROW {f} {key} ' .. tostring(ok) .. ' ' .. (tostring(err):gsub('\\n', ' '))) end\n",
            f = k.constructor,
            base = base(&k.constructor),
            key = k.key,
            example = k.example,
        ));
    }
    // a second use of an ignored key is not logged again
    lua.push_str("  kumo.make_egress_path { tls_prefer_openssl = false }\n");
    lua.push_str("  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }\nend)\n");
    let path = dir.path().join("policy.lua");
    let dir_text = dir.path().to_str().unwrap();
    std::fs::write(&path, lua.replace("@dir", dir_text)).unwrap();
    let o = validate_policy(&path);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{out}\n{err}");
    let rows: HashMap<(String, String), String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ROW "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let f = parts.next().unwrap().to_string();
            let k = parts.next().unwrap().to_string();
            ((f, k), parts.next().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(rows.len(), keys().len(), "{out}");
    for k in keys() {
        let name = format!("{} {}", k.constructor, k.key);
        let result = &rows[&(k.constructor.clone(), k.key.clone())];
        let accepted = result.starts_with("true");
        let reason = k.reason.as_deref().unwrap_or("");
        match k.status {
            Status::Implemented => assert!(accepted, "{name} = {}: {result}", k.example),
            Status::Ignored => {
                assert!(accepted, "{name} = {}: {result}", k.example);
                let line = format!("key '{}' accepted and ignored: {reason}", k.key);
                assert_eq!(err.matches(&line).count(), 1, "{name} logged once: {err}");
            }
            Status::Pending => {
                let value = example_json(&k.example);
                if accepted_by(&k.accepts, &value) {
                    assert!(accepted, "{name} = {}: {result}", k.example);
                    assert!(
                        err.contains(&format!("key '{}' = {value} accepted, but {reason}", k.key)),
                        "{name}: {err}"
                    );
                } else {
                    assert!(!accepted, "{name} = {} must be refused", k.example);
                    assert!(
                        result.contains(&format!(
                            "policy.lua:{}: {}: key '{}' = {value} is not supported by Sluice yet: {reason}",
                            line_of(&lua, &k.constructor, &k.key),
                            k.constructor,
                            k.key
                        )),
                        "{name}: {result}"
                    );
                }
            }
        }
    }
}

/// The policy line that sets `constructor`'s `key`.
fn line_of(lua: &str, constructor: &str, key: &str) -> usize {
    let needle = format!("ROW {constructor} {key} ");
    lua.lines().position(|l| l.contains(&needle)).unwrap() + 1
}

#[test]
fn a_misspelt_key_or_a_malformed_ignored_value_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (call, want) in [
        (
            "kumo.make_egress_path { enable_tsl = 'Required' }",
            "policy.lua:2: make_egress_path: key 'enable_tsl': deserialize error: unknown field `enable_tsl`",
        ),
        (
            "kumo.make_egress_path { openssl_cipher_list = 5 }",
            "policy.lua:2: make_egress_path: key 'openssl_cipher_list': expected a string, not a integer",
        ),
        (
            "kumo.make_egress_path { system_shutdown_timeout = 'soon' }",
            "key 'system_shutdown_timeout': expected a duration (seconds, or a string such as '5m'), not the string \"soon\"",
        ),
        (
            "kumo.make_egress_source { name = 'a', socks5_proxy_server = '10.0.0.1:1080' }",
            "make_egress_source: key 'socks5_proxy_server' = \"10.0.0.1:1080\" is not supported by Sluice yet: connecting through a SOCKS5 proxy is not built",
        ),
        (
            "kumo.start_esmtp_listener { listen = '127.0.0.1:0', tls_certificate = '/x.pem' }",
            "policy.lua:2: start_esmtp_listener: keys 'tls_certificate' and 'tls_private_key' must be set together",
        ),
        (
            "kumo.start_esmtp_listener { listen = '127.0.0.1:0', via = { ['127.0.0.0/8'] = { allow_xclient = true } } }",
            "start_esmtp_listener via['127.0.0.0/8']: key 'allow_xclient' = true is not supported by Sluice yet",
        ),
    ] {
        let policy =
            format!("local kumo = require 'kumo'\nkumo.on('init', function() {call} end)\n");
        let err = validate_fails(dir.path(), &policy);
        assert!(err.contains(want), "{call}:\n{err}");
    }
}

/// The issue's report: a KumoMTA path config that sets keys Sluice does not
/// use passed `--validate`, then failed every delivery. Now it validates and
/// delivers, and the ignored keys are logged once.
#[test]
fn a_kumomta_path_config_with_keys_sluice_does_not_use_delivers() {
    let sink = Sink::start(&[]);
    let policy = relay_policy(
        sink.port,
        "",
        "enable_mta_sts = false, enable_dane = false, tls_prefer_openssl = false, \
         openssl_cipher_list = 'HIGH:!aNULL', system_shutdown_timeout = '5m', \
         dispatcher_wakeup_strategy = 'Aggressive', ignore_8bit_checks = true",
    );
    let mut mta = Mta::prepare(&policy);
    let o = validate_policy(&mta.policy_path);
    assert!(o.status.success(), "{}", text(&o));
    mta.spawn();
    for i in 0..20 {
        let o = swaks(mta.port, &["--to", &format!("u{i}@example.com")]);
        assert!(o.status.success(), "{}", text(&o));
    }
    mta.wait_for_records(Duration::from_secs(30), "20 deliveries", |r| {
        count(r, "Delivery") >= 20
    });
    assert_eq!(count(&mta.records(), "TransientFailure"), 0);
    assert_eq!(sink.messages().len(), 20);
    let log = mta.stderr();
    assert_eq!(
        log.matches("key 'openssl_cipher_list' accepted and ignored")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn validate_calls_every_egress_hook_and_names_a_typo_in_each() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = |pool: &str, source: &str, path: &str| {
        format!(
            r#"local kumo = require 'kumo'
kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '127.0.0.1:0' }} end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ egress_pool = 'pool0' }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, {pool} }}
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {{ name = name, {source} }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ {path} }}
end)
kumo.on('should_enqueue_log_record', function(msg, hook)
  local record = msg:get_meta 'log_record'
  return record.type ~= 'Delivery' and hook == 'webhook'
end)
"#
        )
    };
    let good = hooks(
        "entries = { { name = 'ip-1' }, { name = 'ip-2' } }",
        "ehlo_domain = 'mta.example.com'",
        "connection_limit = 10",
    );
    let path = dir.path().join("good.lua");
    std::fs::write(&path, &good).unwrap();
    let o = validate_policy(&path);
    assert!(o.status.success(), "{}", text(&o));
    for (pool, source, path, want) in [
        (
            "entires = { { name = 'ip-1' } }",
            "",
            "",
            "policy.lua:7: make_egress_pool: key 'entires'",
        ),
        (
            "entries = { { name = 'ip-1' } }",
            "source_adress = '10.0.0.1'",
            "",
            "policy.lua:10: make_egress_source: key 'source_adress'",
        ),
        (
            "entries = { { name = 'ip-1' } }",
            "",
            "max_deliveries_per_conection = 5",
            "policy.lua:13: make_egress_path: key 'max_deliveries_per_conection'",
        ),
        (
            "entries = { { name = 'ip-1' } }",
            "",
            "enable_dane = true",
            "policy.lua:13: make_egress_path: key 'enable_dane' = true is not supported by Sluice yet",
        ),
    ] {
        let err = validate_fails(dir.path(), &hooks(pool, source, path));
        assert!(err.contains(want), "{want}:\n{err}");
    }
    // a queue config naming a pool no hook defines fails too
    let no_pool = good.replace(
        "kumo.on('get_egress_pool', function(name)",
        "kumo.on('unused_event', function(name)",
    );
    let err = validate_fails(dir.path(), &no_pool);
    assert!(
        err.contains("egress pool \"pool0\" is not defined"),
        "{err}"
    );
    // should_enqueue_log_record is asked once per log hook, with a record
    let hook = good.replace(
        "kumo.start_esmtp_listener {",
        "kumo.configure_log_hook { name = 'webhook' }; kumo.start_esmtp_listener {",
    );
    let broken = hook.replace("record.type", "record.typ.e");
    let err = validate_fails(dir.path(), &broken);
    assert!(
        err.contains("should_enqueue_log_record") && err.contains("policy.lua:17"),
        "{err}"
    );
    std::fs::write(&path, &hook).unwrap();
    let o = validate_policy(&path);
    assert!(o.status.success(), "{}", text(&o));
}

/// A config hook that fails while the MTA runs is counted on `/metrics` and
/// its last error shown on `/api/admin/config/v1`, beside the
/// TransientFailures of the messages it was asked about.
#[test]
fn a_hook_failing_at_run_time_shows_on_the_admin_api_and_in_metrics() {
    let sink = Sink::start(&[]);
    let admin = free_port();
    let mta = Mta::start(&policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }},
    retry_interval = '1 hour',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_dane = true }}
end)
"#,
            sink.port
        ),
    ));
    let o = swaks(mta.port, &["--to", "u@example.com"]);
    assert!(o.status.success(), "{}", text(&o));
    let tf = mta.the_record("TransientFailure", Duration::from_secs(20));
    assert!(
        tf["response"]["content"]
            .as_str()
            .unwrap()
            .contains("enable_dane"),
        "{tf}"
    );
    let config = http_json(admin, "/api/admin/config/v1", None);
    let hook = &config["hook_errors"]["get_egress_path_config"];
    assert!(hook["count"].as_u64().unwrap() >= 1, "{config}");
    let last = hook["last_error"].as_str().unwrap();
    assert!(
        last.contains("policy.lua:") && last.contains("key 'enable_dane' = true is not supported"),
        "{last}"
    );
    assert!(
        hook["last_error_at"].as_str().unwrap().ends_with('Z'),
        "{hook}"
    );
    let m = http_request(admin, "/metrics", None);
    let n = m["samples"]["sluice_policy_hook_errors_total{event=get_egress_path_config}"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(n >= 1.0, "{}", m["samples"]);
    assert_eq!(sink.messages().len(), 0);
}
