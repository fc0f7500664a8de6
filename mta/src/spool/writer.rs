//! The spool's one writer thread: group commit (every request that
//! arrived during the previous sync shares the next `write` and
//! `fdatasync`), segment roll-over, deletion of dead segments and
//! compaction of a sparse oldest one.
//!
//! A failed write (a full volume, most often) loses nothing and leaves
//! nothing behind: the segment is cut back to where the batch began, so no
//! torn record sits in the middle of the log; PUTs are refused to their
//! senders (who answer 4xx); DELs take effect in memory at once and, with
//! META records, are written again with a later batch. Because a message
//! whose segment is deleted cannot come back, dead segments are still freed
//! while the volume is full, which is how the space returns.

use super::record::{HEADER_LEN, KIND_DEL, KIND_META, KIND_PUT, encode};
use super::{IndexEntry, Request, Segment, Shared, SpoolOptions, create_segment, read_meta};
use crate::message::MessageId;
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

/// How often records that failed to be written are tried again when no new
/// request comes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) segments: VecDeque<(u64, Segment)>,
    pub(super) shared: Arc<Shared>,
    pub(super) opts: SpoolOptions,
    pub(super) buf: Vec<u8>,
    /// META and DEL requests whose write failed, written with the next batch.
    pub(super) retry: Vec<Request>,
    /// A write failed since the current segment was opened.
    pub(super) pressure: bool,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let first = if self.retry.is_empty() {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(r) => Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut batch: Vec<Request> = std::mem::take(&mut self.retry);
            batch.extend(first);
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if self.buf.len() > 8 << 20 {
                    break;
                }
            }
            if let Err(e) = self.write_batch(batch) {
                tracing::error!("spool write failed: {e}");
            }
            if let Err(e) = self.maintain() {
                tracing::error!("spool maintenance failed: {e}");
            }
        }
    }

    fn current(&mut self) -> &mut (u64, Segment) {
        self.segments
            .back_mut()
            .expect("there is always a current segment")
    }

    fn write_batch(&mut self, batch: Vec<Request>) -> io::Result<()> {
        let mut waiters = vec![];
        let mut flushes = vec![];
        let mut dels = vec![];
        let mut meta_acks = vec![];
        self.buf.clear();
        let (seg_no, base) = {
            let (n, seg) = self.current();
            (*n, seg.file.metadata()?.len())
        };
        let mut puts = vec![];
        let mut metas = vec![];
        for req in batch {
            match req {
                Request::Put(msgs, done) => {
                    for m in msgs {
                        let off = base + self.buf.len() as u64;
                        encode(&mut self.buf, KIND_PUT, m.id, &m.meta, &m.data);
                        puts.push((m.id, off, m.meta.len() as u32, m.data.len() as u32));
                    }
                    waiters.push(done);
                }
                Request::Meta(id, meta, ack) => {
                    let off = base + self.buf.len() as u64;
                    encode(&mut self.buf, KIND_META, id, &meta, &[]);
                    metas.push((id, off, meta, ack));
                }
                Request::Del(id) => {
                    encode(&mut self.buf, KIND_DEL, id, &[], &[]);
                    dels.push(id);
                }
                Request::Flush(done) => flushes.push(done),
            }
        }
        if let Err(e) = self.write_and_sync(base) {
            let shared = Arc::new(io::Error::new(e.kind(), e.to_string()));
            for w in waiters.into_iter().chain(flushes) {
                let _ = w.send(Err(shared.clone()));
            }
            self.forget(&dels);
            self.retry.extend(dels.into_iter().map(Request::Del));
            self.retry.extend(
                metas
                    .into_iter()
                    .map(|(id, _, meta, ack)| Request::Meta(id, meta, ack)),
            );
            return Err(e);
        }
        {
            let mut index = self.shared.index.lock();
            let n_puts = puts.len() as u64;
            for (id, off, meta_len, data_len) in puts {
                index.insert(
                    id,
                    IndexEntry {
                        put_seg: seg_no,
                        put_off: off,
                        put_meta_len: meta_len,
                        data_len,
                        meta_seg: seg_no,
                        meta_off: off,
                    },
                );
            }
            for (id, off, _, ack) in metas {
                if let Some(e) = index.get_mut(&id) {
                    e.meta_seg = seg_no;
                    e.meta_off = off;
                }
                meta_acks.extend(ack);
            }
            drop(index);
            let cur = self.current();
            cur.1.live += n_puts;
            cur.1.puts += n_puts;
        }
        self.forget(&dels);
        for w in waiters.into_iter().chain(flushes) {
            let _ = w.send(Ok(()));
        }
        for ack in meta_acks {
            let _ = ack.send(());
        }
        Ok(())
    }

    /// Drop deleted messages from the index and their segments' live counts.
    fn forget(&mut self, dels: &[MessageId]) {
        let mut dead_in: HashMap<u64, u64> = HashMap::new();
        {
            let mut index = self.shared.index.lock();
            for id in dels {
                if let Some(e) = index.remove(id) {
                    *dead_in.entry(e.put_seg).or_default() += 1;
                }
            }
        }
        for (seg, n) in dead_in {
            if let Some((_, s)) = self.segments.iter_mut().find(|(k, _)| *k == seg) {
                s.live = s.live.saturating_sub(n);
            }
        }
    }

    /// Roll the current segment when it is full, or when it is the only one
    /// and rolling lets its space be freed: its messages are all gone (it is
    /// then deleted) or, while space is short, few are left (they are then
    /// compacted into the new one). Then free dead segments.
    fn maintain(&mut self) -> io::Result<()> {
        let short = self.short();
        let alone = self.segments.len() == 1;
        let (live, puts, len) = {
            let seg = &self.current().1;
            (seg.live, seg.puts, seg.file.metadata()?.len())
        };
        let freeable = alone
            && len > 0
            && ((live == 0 && len >= self.opts.segment_size / 16) || (short && live * 4 <= puts));
        if len >= self.opts.segment_size || freeable {
            self.roll()?;
        }
        self.collect_garbage()
    }

    /// Space is short: the monitor says so, or a write failed since the
    /// current segment was opened.
    fn short(&self) -> bool {
        self.pressure || self.shared.space_short.load(Ordering::Relaxed)
    }

    /// Write the buffer at the end of the current segment and sync it; on
    /// failure cut the segment back to `base`, where the buffer began.
    fn write_and_sync(&mut self, base: u64) -> io::Result<()> {
        let file = self.current().1.file.clone();
        let result: io::Result<()> = (|| {
            if !self.buf.is_empty() {
                (&*file).write_all(&self.buf)?;
            }
            if self.opts.sync {
                file.sync_data()?;
            }
            Ok(())
        })();
        if result.is_ok() && !self.buf.is_empty() {
            *self.shared.last_success.lock() = Some(std::time::Instant::now());
        }
        if let Err(e) = &result {
            *self.shared.last_failure.lock() = Some((e.kind(), std::time::Instant::now()));
            self.pressure = true;
            if let Err(t) = file.set_len(base).and_then(|()| file.sync_data()) {
                // the torn tail stays: close the segment so nothing follows it
                tracing::error!("cannot cut a failed write out of the spool segment: {t}");
                let _ = self.roll();
            }
        }
        result
    }

    fn roll(&mut self) -> io::Result<()> {
        let next = self.current().0 + 1;
        let seg = create_segment(&self.dir, next)?;
        self.shared.files.lock().insert(next, seg.file.clone());
        self.segments.push_back((next, seg));
        self.pressure = false;
        Ok(())
    }

    /// Delete empty segments from the oldest end, and compact a sparse oldest
    /// segment by copying its live messages into the current one.
    pub(super) fn collect_garbage(&mut self) -> io::Result<()> {
        loop {
            if self.segments.len() < 2 {
                return Ok(());
            }
            let (n, oldest) = self.segments.front().expect("len >= 2");
            let n = *n;
            if oldest.live == 0 {
                let (_, seg) = self.segments.pop_front().expect("len >= 2");
                self.shared.files.lock().remove(&n);
                fs::remove_file(&seg.path)?;
                continue;
            }
            // compaction needs room for the copy: not after a failed write
            // (until the next roll); with only one other segment, only when
            // space is short (otherwise a just-rolled segment would be
            // compacted at once)
            let sparse = oldest.live * 4 <= oldest.puts;
            if sparse && !self.pressure && (self.segments.len() >= 3 || self.short()) {
                self.compact_oldest(n)?;
                continue;
            }
            return Ok(());
        }
    }

    fn compact_oldest(&mut self, oldest: u64) -> io::Result<()> {
        let moving: Vec<(MessageId, IndexEntry)> = self
            .shared
            .index
            .lock()
            .iter()
            .filter(|(_, e)| e.put_seg == oldest)
            .map(|(id, e)| (*id, *e))
            .collect();
        tracing::info!(
            segment = oldest,
            messages = moving.len(),
            "compacting spool segment"
        );
        self.buf.clear();
        let (seg_no, base) = {
            let (n, seg) = self.current();
            (*n, seg.file.metadata()?.len())
        };
        let mut moved = vec![];
        for (id, e) in &moving {
            let meta = read_meta(&self.shared, e)?;
            let file = self.shared.files.lock().get(&e.put_seg).cloned();
            let Some(file) = file else { continue };
            let mut data = vec![0u8; e.data_len as usize];
            file.read_exact_at(
                &mut data,
                e.put_off + HEADER_LEN as u64 + u64::from(e.put_meta_len),
            )?;
            let off = base + self.buf.len() as u64;
            encode(&mut self.buf, KIND_PUT, *id, &meta, &data);
            moved.push((*id, off, meta.len() as u32, data.len() as u32));
        }
        self.write_and_sync(base)?;
        let mut index = self.shared.index.lock();
        let mut n_moved = 0;
        for (id, off, meta_len, data_len) in moved {
            // a message deleted meanwhile is not resurrected
            if let Some(e) = index.get_mut(&id) {
                *e = IndexEntry {
                    put_seg: seg_no,
                    put_off: off,
                    put_meta_len: meta_len,
                    data_len,
                    meta_seg: seg_no,
                    meta_off: off,
                };
                n_moved += 1;
            }
        }
        drop(index);
        let cur = self.current();
        cur.1.live += n_moved;
        cur.1.puts += n_moved;
        if let Some((_, s)) = self.segments.front_mut() {
            s.live = 0;
        }
        Ok(())
    }
}
