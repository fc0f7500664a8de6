//! Lua literals from JSON values: tables with sorted keys, one key per line,
//! so the same data always prints the same text and reads like hand-written
//! policy.

use serde_json::Value;
use std::fmt::Write;

/// A Lua string literal in single quotes.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\{}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A table key: bare when it is a Lua name, else `['…']`.
fn key(k: &str) -> String {
    const RESERVED: &[&str] = &[
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    ];
    let is_name = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&k);
    if is_name {
        k.to_string()
    } else {
        format!("[{}]", string(k))
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// `value` as a Lua expression, nested tables indented from `indent`.
pub fn value(v: &Value, indent: usize) -> String {
    let mut out = String::new();
    write_value(&mut out, v, indent);
    out
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&string(s)),
        Value::Array(items) if items.is_empty() => out.push_str("{}"),
        Value::Array(items) if items.iter().all(is_scalar) => {
            // short lists of names stay on one line
            let parts: Vec<String> = items.iter().map(|i| value(i, indent)).collect();
            let _ = write!(out, "{{ {} }}", parts.join(", "));
        }
        Value::Array(items) => {
            out.push_str("{\n");
            for item in items {
                pad(out, indent + 1);
                write_value(out, item, indent + 1);
                out.push_str(",\n");
            }
            pad(out, indent);
            out.push('}');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push_str("{\n");
            for k in keys {
                pad(out, indent + 1);
                let _ = write!(out, "{} = ", key(k));
                write_value(out, &map[k], indent + 1);
                out.push_str(",\n");
            }
            pad(out, indent);
            out.push('}');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("it's a\\b\n"), r"'it\'s a\\b\n'");
        assert_eq!(string("\u{1}"), r"'\1'");
    }

    #[test]
    fn tables_have_sorted_keys_and_quoted_odd_names() {
        let v = json!({"b": 1, "a": ["x", "y"], "end": true, "a-b": {"c": null}});
        assert_eq!(
            value(&v, 0),
            "{\n  a = { 'x', 'y' },\n  ['a-b'] = {\n    c = nil,\n  },\n  b = 1,\n  ['end'] = true,\n}"
        );
    }
}
