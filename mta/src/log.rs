//! Log records (spec §8) and the local log writer: JSON lines in segment files
//! named `YYYYMMDD-HHMMSS`, rotated by size and age. Each `configure_local_logs`
//! call adds one writer thread; submitters only block past `back_pressure`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_common::duration;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum RecordType {
    Reception,
    Delivery,
    Bounce,
    TransientFailure,
    Expiration,
    AdminBounce,
    Rejection,
    AdminRebind,
    DeferredInjectionRebind,
    Delayed,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    pub code: u16,
    pub enhanced_code: Option<EnhancedCode>,
    pub content: String,
    pub command: Option<String>,
}

impl Response {
    /// Build a response from a code and text that may start with an enhanced
    /// status code (`"5.7.1 relaying not permitted"`).
    pub fn new(code: u16, text: &str) -> Self {
        let (enhanced_code, content) = parse_enhanced(text);
        Response {
            code,
            enhanced_code,
            content: content.to_string(),
            command: None,
        }
    }

    pub fn with_command(mut self, command: &str) -> Self {
        self.command = Some(command.to_string());
        self
    }

    /// The reply line as an SMTP peer would see it.
    pub fn to_smtp_line(&self) -> String {
        match &self.enhanced_code {
            Some(e) => format!(
                "{} {}.{}.{} {}",
                self.code, e.class, e.subject, e.detail, self.content
            ),
            None => format!("{} {}", self.code, self.content),
        }
    }
}

fn parse_enhanced(text: &str) -> (Option<EnhancedCode>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    match (c.parse::<u8>(), s.parse::<u16>(), d.parse::<u16>()) {
        (Ok(class @ 2..=5), Ok(subject), Ok(detail)) => (
            Some(EnhancedCode {
                class,
                subject,
                detail,
            }),
            rest,
        ),
        _ => (None, text),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerAddress {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    #[serde(rename = "type")]
    pub kind: RecordType,
    pub id: String,
    pub sender: String,
    /// A string for one recipient, an array for several.
    pub recipient: Value,
    pub queue: String,
    pub site: String,
    pub size: usize,
    pub response: Response,
    pub peer_address: Option<PeerAddress>,
    pub timestamp: i64,
    pub event_time: String,
    pub created: String,
    pub created_time: i64,
    pub num_attempts: u16,
    pub bounce_classification: &'static str,
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    pub source_address: Option<Value>,
    pub feedback_report: Option<Value>,
    pub meta: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub delivery_protocol: Option<String>,
    pub reception_protocol: Option<String>,
    pub nodeid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_protocol_version: Option<String>,
    /// The full message meta, for the per-sink `meta` selection; not logged.
    #[serde(skip)]
    pub all_meta: Map<String, Value>,
    /// Header block of the message, for the per-sink `headers` selection.
    #[serde(skip)]
    pub header_block: Option<String>,
    /// Exact creation time, for latency metrics.
    #[serde(skip)]
    pub created_at: Option<DateTime<Utc>>,
}

impl LogRecord {
    pub fn new(kind: RecordType, id: String, response: Response) -> Self {
        let now = Utc::now();
        LogRecord {
            kind,
            id,
            sender: String::new(),
            recipient: Value::String(String::new()),
            queue: String::new(),
            site: String::new(),
            size: 0,
            response,
            peer_address: None,
            timestamp: now.timestamp(),
            event_time: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            created: String::new(),
            created_time: 0,
            num_attempts: 0,
            bounce_classification: "Uncategorized",
            egress_pool: None,
            egress_source: None,
            source_address: None,
            feedback_report: None,
            meta: Map::new(),
            headers: Map::new(),
            delivery_protocol: None,
            reception_protocol: None,
            nodeid: String::new(),
            session_id: None,
            tls_cipher: None,
            tls_protocol_version: None,
            all_meta: Map::new(),
            header_block: None,
            created_at: None,
        }
    }

    pub fn set_created(&mut self, created: DateTime<Utc>) {
        self.created = created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.created_time = created.timestamp();
        self.created_at = Some(created);
    }

    pub fn set_recipients(&mut self, recipients: &[String]) {
        self.recipient = match recipients {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
    }
}

/// `kumo.configure_local_logs{...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLogConfig {
    pub log_dir: PathBuf,
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pub max_segment_duration: Option<Duration>,
    /// Accepted for KumoMTA compatibility. Sluice writes plain JSON lines so
    /// that `tail -f` and cluster log shippers can read live segments.
    #[serde(default)]
    pub compression_level: Option<i32>,
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_max_file_size() -> u64 {
    1_000_000_000
}
fn default_back_pressure() -> usize {
    128_000
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase()),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

enum Item {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
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
        for (name, value) in crate::headers::iter_headers(block) {
            if headers.iter().any(|p| name_matches(p, name)) {
                r.headers
                    .insert(name.to_ascii_lowercase(), Value::String(value.to_string()));
            }
        }
    }
    r
}

/// `kumo.configure_log_hook{...}` (spec §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHookConfig {
    pub name: String,
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    /// Queue hook messages without saving them to the spool first.
    #[serde(default)]
    pub deferred_spool: bool,
}

pub enum HookItem {
    Record(Box<LogRecord>),
    Flush(mpsc::Sender<()>),
}

/// The submitting end of one log hook: records wait here (at most
/// `back_pressure` of them) for the hook's worker to make them messages.
pub struct HookSender {
    pub config: LogHookConfig,
    pub tx: mpsc::SyncSender<HookItem>,
}

#[derive(Default)]
pub struct Logger {
    sinks: Vec<Sink>,
    hooks: std::sync::OnceLock<Vec<HookSender>>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Logger {
    pub fn new(configs: Vec<LocalLogConfig>) -> anyhow::Result<Self> {
        let mut sinks = vec![];
        for config in configs {
            fs::create_dir_all(&config.log_dir).map_err(|e| {
                anyhow::anyhow!("cannot create log_dir {}: {e}", config.log_dir.display())
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
            };
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || writer.run(rx))?;
            sinks.push(Sink { config, tx });
        }
        Ok(Logger {
            sinks,
            hooks: Default::default(),
            metrics: None,
        })
    }

    /// Count every record in these metrics too.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
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

    pub fn needs_headers(&self) -> bool {
        self.sinks.iter().any(|s| !s.config.headers.is_empty())
            || self.hooks().iter().any(|h| !h.config.headers.is_empty())
    }

    pub fn log(&self, record: LogRecord) {
        if let Some(m) = &self.metrics {
            m.observe(&record);
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
        if record.reception_protocol.as_deref() == Some(crate::log_hook::RECEPTION_PROTOCOL) {
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

struct OpenSegment {
    file: BufWriter<File>,
    size: u64,
    opened: Instant,
}

struct SegmentWriter {
    dir: PathBuf,
    max_size: u64,
    max_age: Option<Duration>,
    current: Option<OpenSegment>,
}

impl SegmentWriter {
    fn run(mut self, rx: mpsc::Receiver<Item>) {
        loop {
            // wake up now and then to close segments that have grown too old
            let item = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(item) => Some(item),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut waiters = vec![];
            let mut next = item;
            while let Some(item) = next {
                match item {
                    Item::Line(line) => self.write(&line),
                    Item::Flush(done) => waiters.push(done),
                }
                next = rx.try_recv().ok();
            }
            if let Some(seg) = &mut self.current {
                if let Err(e) = seg.file.flush() {
                    tracing::error!("log flush failed: {e}");
                }
                if self.max_age.is_some_and(|age| seg.opened.elapsed() >= age) {
                    self.current = None;
                }
            }
            for w in waiters {
                let _ = w.send(());
            }
        }
        if let Some(mut seg) = self.current.take() {
            let _ = seg.file.flush();
        }
    }

    fn open(&mut self) -> std::io::Result<OpenSegment> {
        let stamp = Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let mut path = self.dir.join(&stamp);
        let mut n = 1;
        while path.exists() {
            path = self.dir.join(format!("{stamp}.{n}"));
            n += 1;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(OpenSegment {
            file: BufWriter::with_capacity(256 << 10, file),
            size: 0,
            opened: Instant::now(),
        })
    }

    fn write(&mut self, line: &[u8]) {
        let rotate = self.current.as_ref().is_some_and(|s| {
            s.size + line.len() as u64 > self.max_size
                || self.max_age.is_some_and(|age| s.opened.elapsed() >= age)
        });
        if rotate && let Some(mut old) = self.current.take() {
            let _ = old.file.flush();
        }
        if self.current.is_none() {
            match self.open() {
                Ok(seg) => self.current = Some(seg),
                Err(e) => {
                    tracing::error!("cannot open log segment in {}: {e}", self.dir.display());
                    return;
                }
            }
        }
        let seg = self.current.as_mut().expect("opened above");
        match seg.file.write_all(line) {
            Ok(()) => seg.size += line.len() as u64,
            Err(e) => tracing::error!("log write failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_split_from_the_text() {
        let r = Response::new(550, "5.7.1 relaying not permitted");
        assert_eq!(
            r.enhanced_code,
            Some(EnhancedCode {
                class: 5,
                subject: 7,
                detail: 1
            })
        );
        assert_eq!(r.content, "relaying not permitted");
        assert_eq!(r.to_smtp_line(), "550 5.7.1 relaying not permitted");
        let r = Response::new(400, "KumoMTA internal: x");
        assert_eq!(r.enhanced_code, None);
        assert_eq!(r.content, "KumoMTA internal: x");
    }

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
