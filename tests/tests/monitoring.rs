//! The chart's Grafana dashboard and Prometheus alerts, checked by the real
//! tools and against a real MTA: every alert and dashboard query is parsed
//! by Prometheus' own parser (`promtool check rules`), the alerts pass
//! promtool's unit tests (tests/monitoring/alerts_test.yaml: each fires on
//! what it watches, with its labels and annotations, and stays quiet
//! otherwise), each alert's runbook exists, and every metric a panel or an
//! alert reads is on a running `sluice-mta`'s `/metrics`.

use serde_json::Value;
use sluice_tests::chart::{documents, find, template};
use sluice_tests::redis::{PASSWORD, Redis, SessionSink};
use sluice_tests::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The chart rendered with the dashboard and the alerts on, defaults
/// otherwise (the thresholds the unit tests expect).
fn monitoring_objects() -> Vec<Value> {
    let yaml = template(
        None,
        &["dashboard.enabled=true", "prometheusRule.enabled=true"],
    )
    .unwrap_or_else(|e| panic!("helm template: {e}"));
    documents(&yaml)
}

fn rule_groups(docs: &[Value]) -> Value {
    find(docs, "PrometheusRule", "rel-sluice-mta")["spec"].clone()
}

fn dashboard(docs: &[Value]) -> Value {
    let cm = find(docs, "ConfigMap", "rel-sluice-mta-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = cm["data"]["sluice-mta.json"]
        .as_str()
        .expect("the dashboard");
    serde_json::from_str(json).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: `(where, expr)`, with
/// Grafana's variables given values so that Prometheus can parse them.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let grafana = |e: &str| {
        e.replace("$__rate_interval", "5m")
            .replace("$namespace", ".*")
            .replace("$pod", ".*")
    };
    let mut out = vec![];
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                format!("panel {} {}", p["title"], t["refId"]),
                grafana(expr),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(<selector>, label): the selector is PromQL
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(sel, _)| sel)
                .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
            out.push((format!("variable {}", v["name"]), grafana(inner)));
        }
    }
    out
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (apt-get install prometheus)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}:\n{out}");
    out
}

#[test]
fn alerts_parse_pass_their_unit_tests_and_have_runbooks() {
    let docs = monitoring_objects();
    let spec = rule_groups(&docs);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&spec).unwrap(),
    )
    .unwrap();
    let out = promtool(dir.path(), &["check", "rules", "--lint=all", "rules.yaml"]);
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    std::fs::copy(
        workspace_root().join("tests/monitoring/alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .unwrap();
    promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);

    // every alert is unit tested, and its runbook_url names a section of
    // docs/runbooks.md
    let tests = std::fs::read_to_string(dir.path().join("alerts_test.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(workspace_root().join("docs/runbooks.md")).unwrap();
    for rule in spec["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool test"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').unwrap().1;
        assert_eq!(anchor, name.to_lowercase());
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "docs/runbooks.md has no section for {name}"
        );
    }
}

#[test]
fn dashboard_is_well_formed_and_every_query_parses() {
    let dash = dashboard(&monitoring_objects());
    assert_eq!(dash["uid"], "sluice-mta");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, BTreeSet::from(["datasource", "namespace", "pod"]));
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    // promtool parses a rules file: each query becomes a recording rule
    let rules: Vec<Value> = dashboard_queries(&dash)
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({ "record": format!("sluice:dashboard:{i}"), "expr": expr }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("queries.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
    let out = promtool(dir.path(), &["check", "rules", "queries.yaml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (inside `{}` or after by/on/...), or
/// durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    /// Words followed by a list of label names.
    const GROUPING: &str = "by without on ignoring group_left group_right";
    /// Binary operators and modifiers; then the aggregations, which may
    /// take `by (...)` before their `(`.
    const KEYWORDS: &str = "and or unless bool offset \
        sum min max avg count stddev stdvar topk bottomk quantile count_values group";
    let is = |list: &str, word: &str| list.split_whitespace().any(|w| w == word);
    // drop strings, label matchers, ranges and grouping lists
    let mut plain = String::new();
    let mut depth_brace = 0;
    let mut in_str = false;
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' | '[' => depth_brace += 1,
            '}' | ']' => depth_brace -= 1,
            _ if depth_brace > 0 => {}
            _ => plain.push(c),
        }
    }
    let mut out = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    let mut grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest: String = chars[i..].iter().collect();
            let call = rest.trim_start().starts_with('(');
            if is(GROUPING, &word) {
                grouping = true;
            } else if !call && !grouping && !is(KEYWORDS, &word) {
                out.insert(word);
            }
        } else {
            if c == ')' {
                grouping = false;
            }
            if c.is_ascii_digit() || c == '.' {
                // a number (or a duration such as 5m)
                while i + 1 < chars.len() && chars[i + 1].is_ascii_alphanumeric() {
                    i += 1;
                }
            }
            i += 1;
        }
    }
    out
}

#[test]
fn the_metric_name_extraction_reads_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (pod, le) (rate(a_b{x="y z", q=~"$v"}[5m])) / on (pod) group_left() c:d > 0.5 and time() - e offset 1h"#
        ),
        BTreeSet::from(["a_b".into(), "c:d".into(), "e".into()])
    );
}

#[test]
fn every_metric_a_panel_or_alert_reads_is_on_a_running_mta() {
    let docs = monitoring_objects();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for (_, q) in dashboard_queries(&dashboard(&docs)) {
        wanted.extend(metric_names(&q));
    }
    for rule in rule_groups(&docs)["groups"][0]["rules"].as_array().unwrap() {
        wanted.extend(metric_names(rule["expr"].as_str().unwrap()));
    }
    assert!(wanted.len() > 25, "{wanted:?}");

    // an MTA doing what makes each lazily created series appear: deliveries,
    // transient failures, bounces, a throttle, a failing hook, a message
    // waiting on a busy path, shared throttles in Redis
    let redis = Redis::start();
    let ok = Sink::start(&[]);
    let soft = Sink::start(&["-r", "RCPT"]);
    let hard = Sink::start(&["-f", "RCPT"]);
    let slow = SessionSink::start(30_000);
    let admin = free_port();
    let route =
        |port: u16| format!("protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }}");
    let mta = Mta::start(&policy_with_init(
        &format!(
            "kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n  \
             kumo.configure_redis_throttles {{ node = {}, password = '{PASSWORD}' }}",
            redis.lua_node()
        ),
        "",
        &format!(
            r#"
local routes = {{
  ['ok.test'] = {{ {ok} }},
  ['soft.test'] = {{ {soft}, retry_interval = '1h' }},
  ['hard.test'] = {{ {hard} }},
  ['slow.test'] = {{ {slow} }},
  ['throttled.test'] = {{ {ok}, max_message_rate = '1/h' }},
}}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'hookfail.test' then error('broken on purpose') end
  return kumo.make_queue_config(routes[domain])
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, connection_limit = 1, idle_timeout = '60s', provider_name = 'prov',
  }}
end)
"#,
            ok = route(ok.port),
            soft = route(soft.port),
            hard = route(hard.port),
            slow = route(slow.port),
        ),
    ));
    for to in [
        "u@ok.test",
        "u@soft.test",
        "u@hard.test",
        "a@slow.test",
        "b@slow.test",
        "a@throttled.test",
        "b@throttled.test",
    ] {
        let o = swaks(mta.port, &["--to", to]);
        assert!(o.status.success(), "{to}: {}", text(&o));
    }
    // a queue config that cannot be had: refused with a 4xx, counted as a
    // hook error
    let o = swaks(mta.port, &["--to", "u@hookfail.test"]);
    assert!(text(&o).contains("<** 4"), "{}", text(&o));
    mta.wait_for_records(Duration::from_secs(20), "each outcome", |r| {
        count(r, "Delivery") >= 1
            && count(r, "Bounce") >= 1
            && count(r, "TransientFailure") >= 1
            && count(r, "Delayed") >= 1
    });
    // the busy path's backlog shows while the slow sink holds its reply
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http_request(admin, "/metrics", None);
        assert_eq!(m["status"], 200, "{m}");
        let exposed: BTreeSet<String> = m["body"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();
        let missing: Vec<&String> = wanted.difference(&exposed).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or alerts read metrics the MTA does not export: {missing:?}\n{}",
            m["body"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
