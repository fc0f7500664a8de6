//! Maildir delivery (spec §5.2): the tmp → new rename protocol, with the
//! path template expanded per recipient. The file and the `new` directory are
//! synced before success is reported, because success removes the message
//! from the spool.

use super::{Attempt, Outcome, RecipientResult};
use crate::log::Response;
use crate::message::split_address;
use serde_json::{Map, Value};
use sluice_common::queue_config::MaildirProtocol;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Values the `maildir_path` template can refer to.
pub struct TemplateVars<'a> {
    /// The message's meta, for `{{ meta.key }}`.
    pub meta: &'a Map<String, Value>,
    /// The scheduled queue's full name, for `{{ queue }}`.
    pub queue: &'a str,
    /// The queue name's campaign, for `{{ campaign }}` (empty when absent).
    pub campaign: Option<&'a str>,
    /// The queue name's tenant, for `{{ tenant }}` (empty when absent).
    pub tenant: Option<&'a str>,
    /// The queue name's domain, for `{{ domain }}`.
    pub domain: &'a str,
    /// The queue name's routing domain, for `{{ routing_domain }}` (empty
    /// when absent).
    pub routing_domain: Option<&'a str>,
    /// The envelope sender: `{{ sender_email }}`, and split for
    /// `{{ sender_local_part }}` and `{{ sender_domain_part }}`.
    pub sender: &'a str,
}

/// Why a maildir delivery failed for a recipient.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// The template is malformed, names something unknown, or expands to a
    /// value that cannot be part of a path.
    #[error("{0}")]
    Template(String),
    /// Writing the copy into the maildir failed.
    #[error("{path}: {source}")]
    Write {
        /// The expanded maildir path.
        path: String,
        /// The failure creating, writing, syncing or renaming the file.
        source: std::io::Error,
    },
}

/// Expand `{{ name }}` / `{{ meta.key }}` references in a path template.
pub fn expand_template(
    template: &str,
    vars: &TemplateVars,
    recipient: &str,
) -> Result<String, MaildirError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            MaildirError::Template(format!("unterminated '{{{{' in maildir_path {template:?}"))
        })?;
        let name = after[..end].trim();
        let (rcpt_local, rcpt_domain) = split_address(recipient);
        let (sender_local, sender_domain) = split_address(vars.sender);
        let value = match name {
            "queue" => vars.queue.to_string(),
            "campaign" => vars.campaign.unwrap_or_default().to_string(),
            "tenant" => vars.tenant.unwrap_or_default().to_string(),
            "domain" => vars.domain.to_string(),
            "routing_domain" => vars.routing_domain.unwrap_or_default().to_string(),
            "local_part" => rcpt_local.to_string(),
            "domain_part" => rcpt_domain.to_string(),
            "email" => recipient.to_string(),
            "sender_local_part" => sender_local.to_string(),
            "sender_domain_part" => sender_domain.to_string(),
            "sender_email" => vars.sender.to_string(),
            other => match other.strip_prefix("meta.") {
                Some(key) => match vars.meta.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                },
                None => {
                    return Err(MaildirError::Template(format!(
                        "unknown name {other:?} in maildir_path {template:?}"
                    )));
                }
            },
        };
        if value.contains('/') || value == ".." {
            return Err(MaildirError::Template(format!(
                "{name} = {value:?} cannot be used in a path"
            )));
        }
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn make_dirs(path: &Path, mode: Option<u32>) -> std::io::Result<()> {
    let mut b = DirBuilder::new();
    b.recursive(true);
    if let Some(mode) = mode {
        b.mode(mode);
    }
    for sub in ["tmp", "new", "cur"] {
        b.create(path.join(sub))?;
    }
    Ok(())
}

fn unique_name(id: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}_{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        id,
        crate::hostname()
    )
}

/// Write one copy into the maildir at `dir`; returns the file's path.
fn write_one(
    dir: &Path,
    proto: &MaildirProtocol,
    id: &str,
    data: &[u8],
) -> std::io::Result<PathBuf> {
    make_dirs(dir, proto.dir_mode)?;
    let name = unique_name(id);
    let tmp = dir.join("tmp").join(&name);
    let new = dir.join("new").join(&name);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    if let Some(mode) = proto.file_mode {
        opts.mode(mode);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, &new)?;
        File::open(dir.join("new"))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| new)
}

/// Deliver to every recipient; blocking (run it off the async runtime).
pub fn deliver(
    proto: &MaildirProtocol,
    vars: &TemplateVars,
    id: &str,
    recipients: &[String],
    data: &[u8],
) -> Attempt {
    let mut results = vec![];
    let mut written = vec![];
    for rcpt in recipients {
        let outcome = match expand_template(&proto.maildir_path, vars, rcpt).and_then(|path| {
            write_one(Path::new(&path), proto, id, data)
                .map_err(|source| MaildirError::Write { path, source })
        }) {
            Ok(_) => {
                written.push(rcpt.clone());
                None
            }
            Err(e) => Some(Outcome::Transient(Response::new(
                400,
                &format!("failed to write to maildir for {rcpt}: {e}"),
            ))),
        };
        results.push((rcpt.clone(), outcome));
    }
    let content = written
        .iter()
        .map(|r| format!("{r}: wrote to maildir with id={id}"))
        .collect::<Vec<_>>()
        .join(", ");
    Attempt {
        protocol: "Maildir",
        peer: None,
        tls: None,
        results: results
            .into_iter()
            .map(|(recipient, outcome)| RecipientResult {
                recipient,
                outcome: outcome
                    .unwrap_or_else(|| Outcome::Delivered(Response::new(200, &content))),
            })
            .collect(),
        rebind: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(meta: &'a Map<String, Value>) -> TemplateVars<'a> {
        TemplateVars {
            meta,
            queue: "t@example.com",
            campaign: None,
            tenant: Some("t"),
            domain: "example.com",
            routing_domain: None,
            sender: "s@sender.org",
        }
    }

    #[test]
    fn template_expansion() {
        let mut meta = Map::new();
        meta.insert("x".into(), Value::String("vx".into()));
        let v = vars(&meta);
        assert_eq!(
            expand_template(
                "/m/{{ domain }}/{{local_part}}/{{ meta.x }}/{{ tenant }}",
                &v,
                "u@example.com"
            )
            .unwrap(),
            "/m/example.com/u/vx/t"
        );
        assert!(expand_template("/m/{{ nope }}", &v, "u@e").is_err());
        assert!(expand_template("/m/{{ domain", &v, "u@e").is_err());
        assert_eq!(
            expand_template("/var/tmp/kumo-maildir", &v, "u@e").unwrap(),
            "/var/tmp/kumo-maildir"
        );
    }

    #[test]
    fn writes_into_new_and_reports_failures_per_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let proto = MaildirProtocol {
            maildir_path: format!("{}/{{{{ local_part }}}}", dir.path().display()),
            dir_mode: None,
            file_mode: Some(0o600),
        };
        // make "blocked" unwritable by occupying its path with a file
        fs::write(dir.path().join("blocked"), b"").unwrap();
        let meta = Map::new();
        let a = deliver(
            &proto,
            &vars(&meta),
            "abc",
            &["ok@e".into(), "blocked@e".into()],
            b"hi",
        );
        assert!(matches!(a.results[0].outcome, Outcome::Delivered(_)));
        assert!(matches!(a.results[1].outcome, Outcome::Transient(_)));
        let files: Vec<_> = fs::read_dir(dir.path().join("ok/new")).unwrap().collect();
        assert_eq!(files.len(), 1);
        let path = files[0].as_ref().unwrap().path();
        assert_eq!(fs::read(&path).unwrap(), b"hi");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path().join("ok/tmp")).unwrap().count(), 0);
    }
}
