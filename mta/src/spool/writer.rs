//! The spool's one writer thread: group commit (every request that
//! arrived during the previous sync shares the next `write` and
//! `fdatasync`), segment roll-over, deletion of dead segments and
//! compaction of a sparse oldest one.

use super::record::{HEADER_LEN, KIND_DEL, KIND_META, KIND_PUT, encode};
use super::{IndexEntry, Request, Segment, Shared, SpoolOptions, create_segment, read_meta};
use crate::message::MessageId;
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) segments: VecDeque<(u64, Segment)>,
    pub(super) shared: Arc<Shared>,
    pub(super) opts: SpoolOptions,
    pub(super) buf: Vec<u8>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if self.buf.len() > 8 << 20 {
                    break;
                }
            }
            if let Err(e) = self.write_batch(batch) {
                tracing::error!("spool write failed: {e}");
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
                    metas.push((id, off));
                    if let Some(ack) = ack {
                        meta_acks.push(ack);
                    }
                }
                Request::Del(id) => {
                    encode(&mut self.buf, KIND_DEL, id, &[], &[]);
                    dels.push(id);
                }
                Request::Flush(done) => flushes.push(done),
            }
        }
        let result = self.write_and_sync();
        if let Err(e) = &result {
            let shared = Arc::new(io::Error::new(e.kind(), e.to_string()));
            for w in waiters {
                let _ = w.send(Err(shared.clone()));
            }
            return result;
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
            for (id, off) in metas {
                if let Some(e) = index.get_mut(&id) {
                    e.meta_seg = seg_no;
                    e.meta_off = off;
                }
            }
            let mut dead_in: HashMap<u64, u64> = HashMap::new();
            for id in dels {
                if let Some(e) = index.remove(&id) {
                    *dead_in.entry(e.put_seg).or_default() += 1;
                }
            }
            drop(index);
            let cur = self.current();
            cur.1.live += n_puts;
            cur.1.puts += n_puts;
            for (seg, n) in dead_in {
                if let Some((_, s)) = self.segments.iter_mut().find(|(k, _)| *k == seg) {
                    s.live = s.live.saturating_sub(n);
                }
            }
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        for f in flushes.into_iter().chain(meta_acks) {
            let _ = f.send(());
        }
        if self.current().1.file.metadata()?.len() >= self.opts.segment_size {
            self.roll()?;
        }
        self.collect_garbage()
    }

    fn write_and_sync(&mut self) -> io::Result<()> {
        let file = self.current().1.file.clone();
        if !self.buf.is_empty() {
            (&*file).write_all(&self.buf)?;
        }
        if self.opts.sync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        let next = self.current().0 + 1;
        let seg = create_segment(&self.dir, next)?;
        self.shared.files.lock().insert(next, seg.file.clone());
        self.segments.push_back((next, seg));
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
            if oldest.live * 4 <= oldest.puts && self.segments.len() >= 3 {
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
        self.write_and_sync()?;
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
