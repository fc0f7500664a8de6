//! The local log writer: JSON lines in segment files named
//! `YYYYMMDD-HHMMSS`, rotated by size and age, written by one thread per
//! `configure_local_logs`.

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
    size: u64,
    opened: Instant,
}

pub(super) struct SegmentWriter {
    pub dir: PathBuf,
    pub max_size: u64,
    pub max_age: Option<Duration>,
    pub current: Option<OpenSegment>,
}

impl SegmentWriter {
    pub fn run(mut self, rx: mpsc::Receiver<Item>) {
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
