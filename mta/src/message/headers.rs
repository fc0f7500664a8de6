//! Just enough RFC 5322 header handling for the policy API and trace headers:
//! find the header block, iterate unfolded headers, add and remove headers.

/// Byte length of the header block including the blank line that ends it
/// (or the whole message when there is no body).
pub fn header_block_len(data: &[u8]) -> usize {
    if data.starts_with(b"\r\n") {
        return 2;
    }
    if data.starts_with(b"\n") {
        return 1;
    }
    let mut i = 0;
    while let Some(pos) = data[i..].iter().position(|&b| b == b'\n') {
        let end = i + pos + 1;
        if data[end..].starts_with(b"\r\n") {
            return end + 2;
        }
        if data[end..].starts_with(b"\n") {
            return end + 1;
        }
        i = end;
    }
    data.len()
}

/// The header block as text (lossy for non-UTF-8 bytes).
pub fn header_block(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..header_block_len(data)]).into_owned()
}

/// RFC 5322 white space: what may surround a field name and its value.
/// Only these: a name with other control bytes in it is another name, the
/// same in every function here.
const WSP: [char; 2] = [' ', '\t'];

fn trim_wsp(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// Iterate `(name, unfolded value)` over a header block.
pub fn iter_headers(block: &str) -> impl Iterator<Item = (&str, String)> {
    let mut out: Vec<(&str, String)> = vec![];
    // whether a continuation line belongs to the last header: not after a
    // line that is no header (a fold there belongs to nothing)
    let mut folds = false;
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if folds && let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim_matches(WSP));
            }
            continue;
        }
        folds = false;
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim_matches(WSP), value.trim_matches(WSP).to_string()));
            folds = true;
        }
    }
    out.into_iter()
}

/// The unfolded value of the first header called `name` (case-insensitively),
/// if there is one.
pub fn first_named_header_value(data: &[u8], name: &str) -> Option<String> {
    let block = header_block(data);
    iter_headers(&block)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Prepend `Name: value` to the message. Continuation lines that open a
/// (malformed) message would fold into the new header, so it goes after
/// them.
pub fn prepend_header(data: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut at = 0;
    while data[at..].starts_with(b" ") || data[at..].starts_with(b"\t") {
        match data[at..].iter().position(|&b| b == b'\n') {
            Some(end) => at += end + 1,
            None => {
                at = data.len();
                break;
            }
        }
    }
    let mut out = Vec::with_capacity(data.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&data[..at]);
    if at > 0 && !data[..at].ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&data[at..]);
    out
}

/// Append `Name: value` at the end of the header block.
pub fn append_header(data: &[u8], name: &str, value: &str) -> Vec<u8> {
    let len = header_block_len(data);
    let (head, body) = data.split_at(len);
    let (head, blank) = if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
        head.split_at(head.len() - 2)
    } else if head.ends_with(b"\n\n") || head == b"\n" {
        head.split_at(head.len() - 1)
    } else {
        (head, &b""[..])
    };
    let mut out = Vec::with_capacity(data.len() + name.len() + value.len() + 4);
    out.extend_from_slice(head);
    if !head.is_empty() && !head.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(blank);
    out.extend_from_slice(body);
    out
}

/// Remove every header called `name` (with its continuation lines).
pub fn remove_all_named_headers(data: &[u8], name: &str) -> Vec<u8> {
    let len = header_block_len(data);
    let mut out = Vec::with_capacity(data.len());
    let mut skipping = false;
    for line in data[..len].split_inclusive(|&b| b == b'\n') {
        let is_continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !is_continuation {
            skipping = line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|i| trim_wsp(&line[..i]).eq_ignore_ascii_case(name.as_bytes()));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&data[len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: hello\r\n world\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\nX-A: no\r\n";

    #[test]
    fn reads_unfolded_headers() {
        assert_eq!(
            first_named_header_value(MSG, "subject").as_deref(),
            Some("hello world")
        );
        assert_eq!(first_named_header_value(MSG, "X-a").as_deref(), Some("1"));
        assert_eq!(first_named_header_value(MSG, "missing"), None);
        assert_eq!(header_block_len(MSG), 42);
    }

    #[test]
    fn edits_only_the_header_block() {
        let removed = remove_all_named_headers(MSG, "x-a");
        assert_eq!(
            removed,
            b"Subject: hello\r\n world\r\n\r\nbody\r\nX-A: no\r\n"
        );
        let appended = append_header(&removed, "X-B", "2");
        assert_eq!(
            appended,
            b"Subject: hello\r\n world\r\nX-B: 2\r\n\r\nbody\r\nX-A: no\r\n"
        );
        let prepended = prepend_header(b"\r\nbody", "Received", "x");
        assert_eq!(prepended, b"Received: x\r\n\r\nbody");
        assert_eq!(append_header(b"A: 1\r\n", "B", "2"), b"A: 1\r\nB: 2\r\n");
    }

    /// Found by fuzzing: a fold after a line that is no header attached to
    /// the header before it, so a prepended header read back longer.
    #[test]
    fn a_fold_after_a_non_header_line_belongs_to_nothing() {
        let data = b"Subject\n continued\r\n\tmore\r\nX-Fuzz: old\r\n\r\nbody";
        let added = prepend_header(data, "X-Fuzz", "1");
        assert_eq!(
            first_named_header_value(&added, "X-Fuzz").as_deref(),
            Some("1")
        );
        assert!(added.ends_with(b"\r\n\r\nbody"));
    }

    /// Continuation lines that open a message stay before a prepended
    /// header, which would otherwise absorb them.
    #[test]
    fn a_prepended_header_goes_after_opening_folds() {
        let added = prepend_header(b" orphan\r\nA: b\r\n\r\nbody", "X-New", "1");
        assert_eq!(added, b" orphan\r\nX-New: 1\r\nA: b\r\n\r\nbody");
        assert_eq!(
            first_named_header_value(&added, "x-new").as_deref(),
            Some("1")
        );
    }

    /// Found by fuzzing: a name ending in vertical tabs was that name to
    /// the reader (`str::trim`) but another to the remover (`trim_ascii`).
    #[test]
    fn every_function_agrees_on_a_name_with_control_bytes() {
        let data = b"X-Fuzz\x0b\x0b: v\r\nX-Fuzz : w\r\n\r\nbody";
        assert_eq!(
            first_named_header_value(data, "X-Fuzz").as_deref(),
            Some("w")
        );
        let removed = remove_all_named_headers(data, "X-Fuzz");
        assert_eq!(removed, b"X-Fuzz\x0b\x0b: v\r\n\r\nbody");
        assert_eq!(first_named_header_value(&removed, "X-Fuzz"), None);
    }
}
