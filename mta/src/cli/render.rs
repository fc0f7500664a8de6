//! The admin API's answers as tables and lines for people: columns sized
//! to their widest cell, numbers right-aligned, times as the API gives
//! them (RFC 3339, UTC).

use serde_json::Value;
use std::fmt::Write;

/// A cell's text: strings bare, null as `-`, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under a header; columns whose header starts with '#' are numbers
/// (right-aligned, the '#' not shown).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let names: Vec<&str> = header.iter().map(|h| h.trim_start_matches('#')).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([names[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            let last = i + 1 == cells.len();
            if header[i].starts_with('#') {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                if !last {
                    l.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                l.push_str("  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(names.clone());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// The array `v` (an API answer that is a list), or none.
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    items(&v[key])
}

/// `queue-summary`: the ready queues, split into source, site and
/// protocol, then the scheduled queues.
pub fn queue_summary(v: &Value) -> String {
    let ready: Vec<Vec<String>> = list(v, "ready")
        .iter()
        .map(|q| {
            let name = q["name"].as_str().unwrap_or("");
            let (source, rest) = name.split_once("->").unwrap_or(("", name));
            let (site, proto) = rest.rsplit_once('@').unwrap_or((rest, ""));
            vec![
                site.to_string(),
                source.to_string(),
                proto.to_string(),
                cell(&q["provider"]),
                cell(&q["connections"]),
                cell(&q["count"]),
            ]
        })
        .collect();
    let scheduled: Vec<Vec<String>> = list(v, "scheduled")
        .iter()
        .map(|q| {
            vec![
                cell(&q["name"]),
                cell(&q["provider"]),
                if q["suspended"] == true { "yes" } else { "-" }.to_string(),
                cell(&q["count"]),
            ]
        })
        .collect();
    let mut out = table(&["SITE", "SOURCE", "PROTO", "PROVIDER", "#C", "#Q"], &ready);
    out.push('\n');
    out.push_str(&table(
        &["SCHEDULED QUEUE", "PROVIDER", "SUSPENDED", "#COUNT"],
        &scheduled,
    ));
    let _ = writeln!(
        out,
        "\n{} messages in {} scheduled queues",
        cell(&v["scheduled_total"]),
        cell(&v["scheduled_queues"])
    );
    out
}

/// The criteria of a rule, as `domain=x tenant=y`.
fn criteria(r: &Value) -> String {
    let mut parts = vec![];
    for key in ["domain", "tenant", "campaign", "routing_domain"] {
        if let Some(s) = r[key].as_str() {
            parts.push(format!("{key}={s}"));
        }
    }
    for q in list(r, "queue_names") {
        parts.push(format!("queue={}", cell(q)));
    }
    match parts.is_empty() {
        true => "(everything)".into(),
        false => parts.join(" "),
    }
}

/// `bounce` / `suspend`: the rule made.
pub fn rule(r: &Value) -> String {
    format!(
        "{} rule {} for {} until {}: {} messages so far\n",
        cell(&r["kind"]),
        cell(&r["id"]),
        criteria(r),
        cell(&r["expires"]),
        cell(&r["messages"])
    )
}

/// `bounce-list` / `suspend-list`.
pub fn rules(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                criteria(r),
                cell(&r["reason"]),
                cell(&r["expires"]),
                cell(&r["messages"]),
            ]
        })
        .collect();
    table(&["ID", "CRITERIA", "REASON", "EXPIRES", "#MESSAGES"], &rows)
}

/// `bounce-cancel` / `suspend-cancel`: the rule that ended.
pub fn cancelled(r: &Value) -> String {
    format!(
        "cancelled {} rule {} for {}\n",
        cell(&r["kind"]),
        cell(&r["id"]),
        criteria(r)
    )
}

/// `suspend-ready-q`: the suspension made.
pub fn ready_suspension(r: &Value) -> String {
    format!(
        "suspended {} until {} ({}): {}\n",
        cell(&r["name"]),
        cell(&r["expires"]),
        cell(&r["id"]),
        cell(&r["reason"])
    )
}

/// `suspend-ready-q-list`.
pub fn ready_suspensions(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                cell(&r["name"]),
                cell(&r["reason"]),
                cell(&r["expires"]),
            ]
        })
        .collect();
    table(&["ID", "READY QUEUE", "REASON", "EXPIRES"], &rows)
}

/// `suspend-ready-q-cancel`.
pub fn ready_suspension_cancelled(r: &Value) -> String {
    format!("resumed {} ({})\n", cell(&r["name"]), cell(&r["id"]))
}

/// An answer without a table of its own: its fields, one per line.
pub fn object(v: &Value) -> String {
    match v.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", cell(v)))
            .collect(),
        None => format!("{}\n", cell(v)),
    }
}

/// `inspect-message`: envelope, attempts, due time and meta.
pub fn message(v: &Value) -> String {
    let m = &v["message"];
    let due = match m["due"].as_i64() {
        Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| ms.to_string()),
        None => "now".into(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "id:         {}", cell(&v["id"]));
    let _ = writeln!(out, "sender:     {}", cell(&m["sender"]));
    for r in list(m, "recipient") {
        let _ = writeln!(out, "recipient:  {}", cell(r));
    }
    let _ = writeln!(out, "attempts:   {}", cell(&m["num_attempts"]));
    let _ = writeln!(out, "due:        {due}");
    if let Some(r) = m["last_response"].as_str() {
        let _ = writeln!(out, "last response: {r}");
    }
    if !m["schedule"].is_null() {
        let _ = writeln!(out, "schedule:   {}", m["schedule"]);
    }
    if let Some(meta) = m["meta"].as_object() {
        for (k, v) in meta {
            let _ = writeln!(out, "meta {k}: {}", cell(v));
        }
    }
    out
}

/// `config`: the loaded policy and its health.
pub fn config(v: &Value) -> String {
    let mut out = String::new();
    for key in [
        "source",
        "hash",
        "epoch",
        "loaded_at",
        "last_reload_error",
        "last_reload_error_at",
    ] {
        if let Some(x) = v.get(key) {
            let _ = writeln!(out, "{key}: {}", cell(x));
        }
    }
    if let Some(errors) = v["hook_errors"].as_object() {
        for (event, e) in errors {
            let _ = writeln!(
                out,
                "hook {event}: {} failures, last at {}: {}",
                cell(&e["count"]),
                cell(&e["last_error_at"]),
                cell(&e["last_error"])
            );
        }
    }
    out
}

/// One trace event as a line: time, session, peer, and what was read
/// (`<-`) or written (`->`) by the MTA's end; the stream's first line says
/// what is traced.
pub fn trace(v: &Value) -> Option<String> {
    if let Some(what) = v["tracing"].as_str() {
        let sources = list(v, "source");
        let only = match sources.is_empty() {
            true => String::new(),
            false => format!(
                " from {}",
                sources.iter().map(cell).collect::<Vec<_>>().join(", ")
            ),
        };
        return Some(format!("tracing {what} sessions{only}; interrupt to stop"));
    }
    if let Some(why) = v["ended"].as_str() {
        return Some(format!("trace ended: {why}"));
    }
    if let Some(n) = v["lagged"].as_u64() {
        return Some(format!(
            "*** {n} events lost: this terminal did not keep up"
        ));
    }
    let time = v["when"]
        .as_str()?
        .get(11..26)
        .unwrap_or_default()
        .to_string();
    let who = match v["name"].as_str() {
        Some(name) => format!("{} {name}", cell(&v["peer"])),
        None => cell(&v["peer"]),
    };
    let p = &v["payload"];
    let what = match p {
        Value::String(s) if s == "Connected" => "=== connected".to_string(),
        Value::String(s) if s == "Closed" => "=== closed".to_string(),
        Value::Object(o) => match o.iter().next() {
            Some((k, v)) if k == "Read" => format!("<- {}", cell(v)),
            Some((k, v)) if k == "Write" => format!("-> {}", cell(v)),
            Some((k, v)) if k == "Diagnostic" => format!("=== {}", cell(v)),
            Some((k, v)) if k.starts_with("Abbreviated") => {
                let arrow = if k.ends_with("Read") { "<-" } else { "->" };
                format!("{arrow} [{} bytes] {}", v["len"], cell(&v["snippet"]))
            }
            _ => p.to_string(),
        },
        _ => p.to_string(),
    };
    Some(format!("{time} [{}] {who} {what}", v["id"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let t = table(
            &["NAME", "#N"],
            &[
                vec!["a".into(), "5".into()],
                vec!["longer".into(), "120".into()],
            ],
        );
        assert_eq!(t, "NAME      N\na         5\nlonger  120\n");
    }

    #[test]
    fn ready_queue_names_split_into_site_source_and_protocol() {
        let v = json!({
            "ready": [{"name": "ip-1->(mx1|mx2).example.com@smtp_client", "count": 3, "connections": 1, "provider": null}],
            "scheduled": [{"name": "example.com", "count": 3, "suspended": true, "provider": "p"}],
            "scheduled_total": 3, "scheduled_queues": 1,
        });
        let out = queue_summary(&v);
        assert!(
            out.contains("(mx1|mx2).example.com  ip-1    smtp_client  -         1  3"),
            "{out}"
        );
        assert!(
            out.contains("example.com      p         yes            3"),
            "{out}"
        );
    }
}
