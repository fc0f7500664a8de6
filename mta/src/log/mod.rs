//! The log (spec §8): every record goes to each `configure_local_logs`
//! writer (submitters block only past `back_pressure`), to each log hook,
//! and to an observer such as the metrics.

mod record;
mod writer;

pub use record::{
    DelayReason, EnhancedCode, LogRecord, PeerAddress, RecordType, Response, split_ready_queue,
};
use writer::{Item, SegmentWriter};

pub use crate::config::logs::{LocalLogConfig, LogHookConfig};
use serde_json::Value;
use std::fs;
use std::sync::mpsc;
use std::time::Duration;

/// The `reception_protocol` of messages made from log records by a log
/// hook: their own records are not hooked again.
pub const HOOK_RECEPTION_PROTOCOL: &str = "LogRecord";

/// Something that sees every record as it is logged (the metrics).
pub trait Observer: Send + Sync {
    /// See one record, before the writers and hooks get it.
    fn observe(&self, record: &LogRecord);
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase()),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

struct Sink {
    config: LocalLogConfig,
    tx: mpsc::SyncSender<Item>,
}

impl Sink {
    fn render(&self, record: &LogRecord) -> Vec<u8> {
        let r = select(record, &self.config.meta, &self.config.headers);
        let mut line = serde_json::to_vec(&r).expect("log records serialise");
        line.push(b'\n');
        line
    }
}

/// The record with `meta` and `headers` filled in from the message's meta
/// and header block, as a sink's `meta`/`headers` patterns select.
fn select(record: &LogRecord, meta: &[String], headers: &[String]) -> LogRecord {
    let mut r = record.clone();
    if !meta.is_empty() {
        r.meta = record
            .all_meta
            .iter()
            .filter(|(k, _)| meta.iter().any(|p| name_matches(p, k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    if let (false, Some(block)) = (headers.is_empty(), &record.header_block) {
        for (name, value) in crate::message::headers::iter_headers(block) {
            if headers.iter().any(|p| name_matches(p, name)) {
                r.headers
                    .insert(name.to_ascii_lowercase(), Value::String(value.to_string()));
            }
        }
    }
    r
}

/// What a log hook's worker receives.
pub enum HookItem {
    /// A record to make a message of, with the hook's `meta` and `headers`
    /// selected.
    Record(Box<LogRecord>),
    /// Answer on this channel once everything sent before it has been queued.
    Flush(mpsc::Sender<()>),
}

/// The submitting end of one log hook: records wait here (at most
/// `back_pressure` of them) for the hook's worker to make them messages.
pub struct HookSender {
    /// The hook's `configure_log_hook` parameters.
    pub config: LogHookConfig,
    /// The channel to the hook's worker thread, bounded by `back_pressure`.
    pub tx: mpsc::SyncSender<HookItem>,
}

/// Why the local logs cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A `configure_local_logs` directory cannot be created.
    #[error("cannot create log_dir {}: {source}", path.display())]
    LogDir {
        /// The `log_dir`.
        path: std::path::PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("cannot start a log writer thread: {0}")]
    Thread(std::io::Error),
}

/// Sends every record to the local log writers, the log hooks and the
/// observers.
#[derive(Default)]
pub struct Logger {
    sinks: Vec<Sink>,
    hooks: std::sync::OnceLock<Vec<HookSender>>,
    observers: Vec<std::sync::Arc<dyn Observer>>,
    classifier: Option<std::sync::Arc<crate::bounce::Classifier>>,
}

impl Logger {
    /// Start one writer thread per `configure_local_logs`; fails when a
    /// `log_dir` cannot be created.
    pub fn new(configs: Vec<LocalLogConfig>) -> Result<Self, LogError> {
        let mut sinks = vec![];
        for config in configs {
            fs::create_dir_all(&config.log_dir).map_err(|source| LogError::LogDir {
                path: config.log_dir.clone(),
                source,
            })?;
            if config.compression_level.is_some() {
                tracing::warn!(
                    "configure_local_logs: compression_level is ignored; segments are plain JSON lines"
                );
            }
            let (tx, rx) = mpsc::sync_channel(config.back_pressure.max(1));
            let writer = SegmentWriter {
                dir: config.log_dir.clone(),
                max_size: config.max_file_size,
                max_age: config.max_segment_duration,
                current: None,
                retention: writer::Retention {
                    max_total_size: config.max_total_size,
                    max_age: config.retention,
                },
                dropped: 0,
                reported: None,
            };
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(LogError::Thread)?;
            sinks.push(Sink { config, tx });
        }
        Ok(Logger {
            sinks,
            hooks: Default::default(),
            observers: vec![],
            classifier: None,
        })
    }

    /// Show every record to `observer` too (the metrics count them,
    /// shaping automation watches them).
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Label every Bounce, TransientFailure and Expiration with this
    /// classifier (`configure_bounce_classifier`).
    pub fn with_classifier(
        mut self,
        classifier: Option<std::sync::Arc<crate::bounce::Classifier>>,
    ) -> Self {
        self.classifier = classifier;
        self
    }

    /// Send every record to these log hooks too (once the queues exist).
    pub fn attach_hooks(&self, hooks: Vec<HookSender>) {
        if self.hooks.set(hooks).is_err() {
            tracing::error!("log hooks attached twice; keeping the first");
        }
    }

    fn hooks(&self) -> &[HookSender] {
        self.hooks.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// Wait until every record submitted so far is written out, and every
    /// hooked record is queued as a message.
    pub fn flush(&self) {
        for hook in self.hooks() {
            let (tx, rx) = mpsc::channel();
            if hook.tx.send(HookItem::Flush(tx)).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
        }
        for sink in &self.sinks {
            let (tx, rx) = mpsc::channel();
            if sink.tx.send(Item::Flush(tx)).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
        }
    }

    /// Whether any log or hook selects headers, so that records must carry the
    /// message's header block.
    pub fn needs_headers(&self) -> bool {
        self.sinks.iter().any(|s| !s.config.headers.is_empty())
            || self.hooks().iter().any(|h| !h.config.headers.is_empty())
    }

    /// Log a record: to the observer, to every writer, and, unless it is a
    /// record of a hook message, to every hook. Blocks while a writer or hook
    /// has `back_pressure` records waiting.
    pub fn log(&self, mut record: LogRecord) {
        if let Some(c) = &self.classifier
            && matches!(
                record.kind,
                RecordType::Bounce
                    | RecordType::TransientFailure
                    | RecordType::Expiration
                    | RecordType::Oob
            )
        {
            record.bounce_classification = c.classify(&record.response.to_single_line());
        }
        for o in &self.observers {
            o.observe(&record);
        }
        for sink in &self.sinks {
            if sink.tx.send(Item::Line(sink.render(&record))).is_err() {
                tracing::error!(
                    "log writer for {} has stopped",
                    sink.config.log_dir.display()
                );
            }
        }
        // records of messages that are themselves log records are not hooked
        // again, or each hook delivery would log a record to hook, forever
        if record.reception_protocol.as_deref() == Some(HOOK_RECEPTION_PROTOCOL) {
            return;
        }
        for hook in self.hooks() {
            let selected = select(&record, &hook.config.meta, &hook.config.headers);
            if hook.tx.send(HookItem::Record(Box::new(selected))).is_err() {
                tracing::error!("log hook {} has stopped", hook.config.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let logger = Logger::new(vec![LocalLogConfig {
            log_dir: dir.path().to_path_buf(),
            max_file_size: 2000,
            max_segment_duration: None,
            compression_level: None,
            back_pressure: 10,
            meta: vec![],
            headers: vec![],
            min_free_space: Default::default(),
            min_free_inodes: Default::default(),
            max_total_size: None,
            retention: None,
        }])
        .unwrap();
        for i in 0..20 {
            logger.log(LogRecord::new(
                RecordType::Reception,
                format!("{i}"),
                Response::new(250, ""),
            ));
        }
        drop(logger);
        std::thread::sleep(Duration::from_millis(300));
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.len() >= 3, "{}", files.len());
        let mut lines = 0;
        for f in files {
            let text = fs::read_to_string(f.unwrap().path()).unwrap();
            assert!(text.len() <= 2000);
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["type"], "Reception");
                lines += 1;
            }
        }
        assert_eq!(lines, 20);
    }
}
