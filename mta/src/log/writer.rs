//! The local log writer: JSON lines in segment files named
//! `YYYYMMDD-HHMMSS`, rotated by size and age, written by one thread per
//! `configure_local_logs`. Closed segments past `max_total_size` (oldest
//! first) or older than `retention` are deleted, so a log directory cannot
//! grow without bound.

use chrono::Utc;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(super) enum Item {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

pub(super) struct OpenSegment {
    file: BufWriter<File>,
    path: PathBuf,
    size: u64,
    opened: Instant,
}

pub(super) struct SegmentWriter {
    pub dir: PathBuf,
    pub max_size: u64,
    pub max_age: Option<Duration>,
    pub current: Option<OpenSegment>,
    pub retention: Retention,
    /// Records dropped by failed writes since the last report of them.
    pub dropped: u64,
    /// When failed writes were last reported (at most every 10 s).
    pub reported: Option<Instant>,
}

/// How much of a log directory is kept.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Retention {
    /// The most bytes all segments may take together.
    pub max_total_size: Option<u64>,
    /// Closed segments older than this are deleted.
    pub max_age: Option<Duration>,
}

/// How often retention is applied besides at each rotation.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Whether a file name is one of our segments: `YYYYMMDD-HHMMSS[.n]`.
pub(super) fn is_segment_name(name: &str) -> bool {
    let (stamp, suffix) = match name.split_once('.') {
        Some((stamp, n)) => (stamp, Some(n)),
        None => (name, None),
    };
    let b = stamp.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
        && suffix.is_none_or(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// A closed segment: its name, size and age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Closed {
    pub name: String,
    pub size: u64,
    pub age: Duration,
}

/// Which closed segments to delete (oldest first by name), so that the
/// rest plus `current` bytes fit `max_total_size` and none is older than
/// `max_age`.
pub(super) fn to_delete(mut closed: Vec<Closed>, current: u64, keep: &Retention) -> Vec<String> {
    closed.sort_by(|a, b| {
        let key = |c: &Closed| {
            let (stamp, n) = c.name.split_once('.').unwrap_or((&c.name, "0"));
            (stamp.to_string(), n.parse::<u64>().unwrap_or(0))
        };
        key(a).cmp(&key(b))
    });
    let mut total: u64 = current + closed.iter().map(|c| c.size).sum::<u64>();
    let mut out = vec![];
    for c in closed {
        let too_old = keep.max_age.is_some_and(|age| c.age > age);
        let too_big = keep.max_total_size.is_some_and(|max| total > max);
        if too_old || too_big {
            total -= c.size;
            out.push(c.name);
        }
    }
    out
}

impl SegmentWriter {
    pub fn run(mut self, rx: mpsc::Receiver<Item>) {
        let mut retained = Instant::now();
        self.apply_retention();
        loop {
            if retained.elapsed() >= RETENTION_EVERY {
                self.apply_retention();
                retained = Instant::now();
            }
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
                    self.apply_retention();
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
            .open(&path)?;
        Ok(OpenSegment {
            file: BufWriter::with_capacity(256 << 10, file),
            path,
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
            self.apply_retention();
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
            // a full volume, most often: the record is dropped, and what the
            // buffer holds is written once there is room again
            Err(e) => {
                self.dropped += 1;
                if self
                    .reported
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::error!(
                        dir = %self.dir.display(),
                        dropped = self.dropped,
                        "log write failed, records dropped: {e}"
                    );
                    self.dropped = 0;
                    self.reported = Some(Instant::now());
                }
            }
        }
    }

    /// Delete the closed segments that `retention` says go.
    fn apply_retention(&mut self) {
        let keep = self.retention;
        if keep.max_total_size.is_none() && keep.max_age.is_none() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let current = self.current.as_ref().map(|s| s.path.clone());
        let now = std::time::SystemTime::now();
        let closed = entries
            .filter_map(Result::ok)
            .filter(|e| is_segment_name(&e.file_name().to_string_lossy()))
            .filter(|e| Some(e.path()) != current)
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some(Closed {
                    name: e.file_name().to_string_lossy().into_owned(),
                    size: meta.len(),
                    age: now
                        .duration_since(meta.modified().ok()?)
                        .unwrap_or_default(),
                })
            })
            .collect();
        // room for the open segment to grow to max_file_size, so that the
        // directory never holds more than max_total_size
        for name in to_delete(closed, self.max_size, &keep) {
            let path = self.dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(segment = %path.display(), "log segment deleted by retention")
                }
                Err(e) => {
                    tracing::warn!(segment = %path.display(), "cannot delete log segment: {e}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(name: &str, size: u64, age_s: u64) -> Closed {
        Closed {
            name: name.into(),
            size,
            age: Duration::from_secs(age_s),
        }
    }

    #[test]
    fn segment_names_are_recognised() {
        for name in ["20261201-120000", "20261201-120000.1", "20261201-120000.12"] {
            assert!(is_segment_name(name), "{name}");
        }
        for name in [
            "20261201-12000",
            "20261201_120000",
            "20261201-120000.",
            "x",
            "20261201-120000.a",
            "notes.txt",
        ] {
            assert!(!is_segment_name(name), "{name}");
        }
    }

    #[test]
    fn the_oldest_go_first_until_the_rest_fit() {
        let keep = Retention {
            max_total_size: Some(240),
            max_age: None,
        };
        let segs = vec![
            closed("20261201-120002", 100, 0),
            closed("20261201-120000.2", 100, 0),
            closed("20261201-120000", 100, 0),
            closed("20261201-120000.10", 100, 0),
        ];
        // 400 closed + 50 current: the three oldest (by stamp, then number) go,
        // leaving 150
        assert_eq!(
            to_delete(segs, 50, &keep),
            vec!["20261201-120000", "20261201-120000.2", "20261201-120000.10"]
        );
    }

    #[test]
    fn age_and_size_limits_each_apply_and_none_keeps_everything() {
        let segs = || {
            vec![
                closed("20261201-100000", 10, 7200),
                closed("20261201-110000", 10, 3600),
                closed("20261201-120000", 10, 60),
            ]
        };
        let by_age = Retention {
            max_total_size: None,
            max_age: Some(Duration::from_secs(1800)),
        };
        assert_eq!(
            to_delete(segs(), 0, &by_age),
            vec!["20261201-100000", "20261201-110000"]
        );
        assert!(to_delete(segs(), 1_000_000, &Retention::default()).is_empty());
        let roomy = Retention {
            max_total_size: Some(1000),
            max_age: None,
        };
        assert!(to_delete(segs(), 0, &roomy).is_empty());
    }
}
