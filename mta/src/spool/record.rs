//! The spool's record format: `MAGIC kind id meta_len data_len crc32`
//! then meta and body. Records are appended, never rewritten; replay stops
//! at the first record that is torn or does not check.

use super::IndexEntry;
use crate::message::MessageId;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
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

/// Apply one segment's records to the index; returns the length of its valid prefix.
pub(super) fn replay_segment(
    path: &Path,
    seg: u64,
    index: &mut HashMap<MessageId, IndexEntry>,
) -> io::Result<u64> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut off = 0u64;
    let mut header = [0u8; HEADER_LEN];
    let mut payload = vec![];
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(off),
            Err(e) => return Err(e),
        }
        let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let kind = header[4];
        let id = MessageId(header[5..21].try_into().unwrap());
        let meta_len = u32::from_le_bytes(header[21..25].try_into().unwrap());
        let data_len = u32::from_le_bytes(header[25..29].try_into().unwrap());
        let crc = u32::from_le_bytes(header[29..33].try_into().unwrap());
        let total = meta_len as usize + data_len as usize;
        if magic != MAGIC || total > MAX_RECORD {
            return Ok(off);
        }
        payload.resize(total, 0);
        if r.read_exact(&mut payload).is_err() {
            return Ok(off);
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&header[4..29]);
        h.update(&payload);
        if h.finalize() != crc {
            return Ok(off);
        }
        match kind {
            KIND_PUT => {
                index.insert(
                    id,
                    IndexEntry {
                        put_seg: seg,
                        put_off: off,
                        put_meta_len: meta_len,
                        data_len,
                        meta_seg: seg,
                        meta_off: off,
                    },
                );
            }
            KIND_META => {
                if let Some(e) = index.get_mut(&id) {
                    e.meta_seg = seg;
                    e.meta_off = off;
                }
            }
            KIND_DEL => {
                index.remove(&id);
            }
            _ => return Ok(off),
        }
        off += (HEADER_LEN + total) as u64;
    }
}

pub(super) fn read_record_meta(file: &File, off: u64) -> io::Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, off)?;
    let meta_len = u32::from_le_bytes(header[21..25].try_into().unwrap()) as usize;
    let mut meta = vec![0u8; meta_len];
    file.read_exact_at(&mut meta, off + HEADER_LEN as u64)?;
    Ok(meta)
}
