//! The spool's record format: `MAGIC kind id meta_len data_len crc32`
//! then meta and body. Records are appended, never rewritten; replay skips
//! a record that is torn or does not check and goes on at the next one
//! that does.

use super::IndexEntry;
use crate::message::MessageId;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub(super) const MAGIC: u32 = 0x534c_5331; // "SLS1"
pub(super) const HEADER_LEN: usize = 33;
pub(super) const KIND_PUT: u8 = 1;
pub(super) const KIND_META: u8 = 2;
pub(super) const KIND_DEL: u8 = 3;
/// Records above this size are refused: they cannot be valid messages.
pub(super) const MAX_RECORD: usize = 1 << 30;

pub(super) fn encode(buf: &mut Vec<u8>, kind: u8, id: MessageId, meta: &[u8], data: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&id.0);
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[start + 4..]);
    crc.update(meta);
    crc.update(data);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(meta);
    buf.extend_from_slice(data);
}

/// One record that checks, as [`scan`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// PUT, META or DEL.
    pub kind: u8,
    /// The message it is about.
    pub id: MessageId,
    /// Where it starts in the segment.
    pub off: u64,
    /// Its meta length.
    pub meta_len: u32,
    /// Its body length.
    pub data_len: u32,
}

impl Record {
    /// The bytes it spans: header and payload.
    pub fn span(&self) -> u64 {
        (HEADER_LEN + self.meta_len as usize + self.data_len as usize) as u64
    }
}

/// What a segment's bytes hold: the records that check, in order; the byte
/// ranges that did not (torn or corrupted), each skipped to the next record
/// that checks; and where the last good record ends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every record whose header and CRC check.
    pub records: Vec<Record>,
    /// Ranges that hold no record that checks.
    pub skipped: Vec<std::ops::Range<u64>>,
    /// The end of the last good record (0 for none): past it is only a torn
    /// tail, or nothing.
    pub valid_end: u64,
}

/// CRC bytes a resynchronisation may compute per byte of segment: a body
/// full of fake headers cannot make recovery quadratic.
const RESYNC_BUDGET_PER_BYTE: u64 = 8;

/// The record at `off`, if a whole one is there and checks.
fn record_at(bytes: &[u8], off: usize, budget: &mut u64) -> Option<Record> {
    let header: &[u8; HEADER_LEN] = bytes.get(off..off + HEADER_LEN)?.try_into().ok()?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let kind = header[4];
    let (meta_len, data_len) = (word(21), word(25));
    let total = meta_len as usize + data_len as usize;
    if word(0) != MAGIC || !(KIND_PUT..=KIND_DEL).contains(&kind) || total > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(off + HEADER_LEN..off + HEADER_LEN + total)?;
    *budget = budget.checked_sub(total as u64)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[4..29]);
    h.update(payload);
    (h.finalize() == word(29)).then(|| Record {
        kind,
        id: MessageId(header[5..21].try_into().unwrap()),
        off: off as u64,
        meta_len,
        data_len,
    })
}

/// Read a segment's records. A record that is torn or does not check is
/// skipped, and reading goes on at the next record that checks, so one bad
/// record never loses the records after it.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut budget = (bytes.len() as u64).saturating_mul(RESYNC_BUDGET_PER_BYTE);
    let mut unlimited = u64::MAX;
    let mut off = 0usize;
    while off < bytes.len() {
        // records in sequence cost no budget: only the search after a bad one
        if let Some(rec) = record_at(bytes, off, &mut unlimited) {
            off += rec.span() as usize;
            out.valid_end = off as u64;
            out.records.push(rec);
            continue;
        }
        let next = memchr::memmem::find_iter(&bytes[off + 1..], &MAGIC.to_le_bytes())
            .map(|at| off + 1 + at)
            .find(|&at| budget > 0 && record_at(bytes, at, &mut budget).is_some());
        let end = next.unwrap_or(bytes.len());
        out.skipped.push(off as u64..end as u64);
        off = end;
    }
    out
}

/// Apply one segment's records to the index; returns what the scan found.
pub(super) fn replay_segment(
    path: &Path,
    seg: u64,
    index: &mut HashMap<MessageId, IndexEntry>,
) -> io::Result<Scan> {
    let bytes = std::fs::read(path)?;
    let found = scan(&bytes);
    for rec in &found.records {
        match rec.kind {
            KIND_PUT => {
                index.insert(
                    rec.id,
                    IndexEntry {
                        put_seg: seg,
                        put_off: rec.off,
                        put_meta_len: rec.meta_len,
                        data_len: rec.data_len,
                        meta_seg: seg,
                        meta_off: rec.off,
                    },
                );
            }
            KIND_META => {
                if let Some(e) = index.get_mut(&rec.id) {
                    e.meta_seg = seg;
                    e.meta_off = rec.off;
                }
            }
            _ => {
                index.remove(&rec.id);
            }
        }
    }
    Ok(found)
}

pub(super) fn read_record_meta(file: &File, off: u64) -> io::Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, off)?;
    let meta_len = u32::from_le_bytes(header[21..25].try_into().unwrap()) as usize;
    let mut meta = vec![0u8; meta_len];
    file.read_exact_at(&mut meta, off + HEADER_LEN as u64)?;
    Ok(meta)
}
