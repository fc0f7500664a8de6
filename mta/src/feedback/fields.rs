//! The `Name: value` field blocks of `message/feedback-report` (RFC 5965
//! §3.1) and `message/delivery-status` (RFC 3464 §2.1): header syntax,
//! folded lines unfolded, blocks separated by blank lines (a DSN's
//! per-message block, then one block per recipient).

/// One block's fields in order, names lowercased.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (lowercase), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Split `text` into blocks of fields. Lines that are not fields (no
/// colon, or a continuation with nothing before it) are skipped, as a
/// report from the wild is not always well formed.
pub fn blocks(text: &str) -> Vec<Fields> {
    let mut out = vec![];
    let mut current = Fields::default();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !current.0.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.0.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                current
                    .0
                    .push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    if !current.0.is_empty() {
        out.push(current);
    }
    out
}

/// A typed field value (`rfc822; user@example.com`, `smtp; 550 5.1.1 ...`)
/// split at its first `;`: the type, lowercased, and the value. A value
/// without a type gives an empty type.
pub fn typed(value: &str) -> (String, &str) {
    match value.split_once(';') {
        Some((t, v)) if !t.trim().contains(' ') => (t.trim().to_ascii_lowercase(), v.trim()),
        _ => (String::new(), value.trim()),
    }
}
