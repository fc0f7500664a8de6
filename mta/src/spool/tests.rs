//! The spool's unit tests: durability across reopen, torn tails, corrupt
//! records, segment deletion and compaction, and failed writes.

use super::*;

fn msg(i: u8, body: &[u8]) -> NewMessage {
    NewMessage {
        id: MessageId([i; 16]),
        meta: format!("{{\"n\":{i}}}").into_bytes(),
        data: Arc::new(body.to_vec()),
    }
}

fn small() -> SpoolOptions {
    SpoolOptions {
        segment_size: 4096,
        sync: true,
    }
}

#[tokio::test]
async fn put_survives_reopen_and_delete_is_final() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, rec) = Spool::open(dir.path(), small()).unwrap();
        assert!(rec.is_empty());
        spool
            .put(vec![msg(1, b"one"), msg(2, b"two")])
            .await
            .unwrap();
        spool
            .update_meta(MessageId([1; 16]), b"{\"n\":11}".to_vec())
            .unwrap();
        spool.remove(MessageId([2; 16])).unwrap();
        spool.flush().await.unwrap();
        assert_eq!(spool.read_data(MessageId([1; 16])).unwrap(), b"one");
    }
    let (spool, rec) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].id, MessageId([1; 16]));
    assert_eq!(rec[0].meta, b"{\"n\":11}");
    assert_eq!(spool.read_data(MessageId([1; 16])).unwrap(), b"one");
}

#[tokio::test]
async fn torn_tail_is_truncated_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        spool.put(vec![msg(1, b"one")]).await.unwrap();
        spool.put(vec![msg(2, b"two")]).await.unwrap();
    }
    // tear the last record in half, as a crash during write would
    let seg = segment_path(dir.path(), 1);
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (spool, rec) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(spool.read_data(MessageId([1; 16])).unwrap(), b"one");
    spool.put(vec![msg(3, b"three")]).await.unwrap();
    drop(spool);
    let (_, rec) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(rec.len(), 2);
}

#[tokio::test]
async fn empty_segments_are_deleted_and_sparse_ones_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 1000];
    let (spool, _) = Spool::open(dir.path(), small()).unwrap();
    for i in 0..40u8 {
        spool.put(vec![msg(i, &body)]).await.unwrap();
    }
    let count_segs = || {
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
    };
    assert!(count_segs() >= 8, "{}", count_segs());
    // keep message 0 (in the oldest segment) and delete the rest
    for i in 1..40u8 {
        spool.remove(MessageId([i; 16])).unwrap();
    }
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    assert!(count_segs() <= 2, "{}", count_segs());
    assert_eq!(spool.read_data(MessageId([0; 16])).unwrap(), body);
    drop(spool);
    let (spool, rec) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].meta, b"{\"n\":0}");
    assert_eq!(spool.read_data(MessageId([0; 16])).unwrap(), body);
}

/// The spool's segment files and their sizes, oldest first.
fn segments(dir: &Path) -> Vec<u64> {
    let mut segs: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    segs.sort();
    segs.into_iter().map(|(_, len)| len).collect()
}

fn one_mib() -> SpoolOptions {
    SpoolOptions {
        segment_size: 1 << 20,
        sync: true,
    }
}

#[tokio::test]
async fn an_emptied_segment_is_kept_while_small_and_freed_when_space_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 1000];
    let (spool, _) = Spool::open(dir.path(), one_mib()).unwrap();
    for i in 0..10u8 {
        spool.put(vec![msg(i, &body)]).await.unwrap();
    }
    for i in 0..10u8 {
        spool.remove(MessageId([i; 16])).unwrap();
    }
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    // 10 KB is under a sixteenth of the segment size: not worth a new file
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    assert!(segs[0] > 10_000, "{segs:?}");

    spool.set_space_short(true);
    spool.remove(MessageId([0; 16])).unwrap(); // any request wakes the writer
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0] < 100, "the emptied segment is gone: {segs:?}");
}

#[tokio::test]
async fn an_emptied_large_segment_is_freed_without_waiting_to_fill() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 10_000];
    let (spool, _) = Spool::open(dir.path(), one_mib()).unwrap();
    // 100 KB: more than a sixteenth of 1 MiB, far less than the whole
    for i in 0..10u8 {
        spool.put(vec![msg(i, &body)]).await.unwrap();
    }
    for i in 0..10u8 {
        spool.remove(MessageId([i; 16])).unwrap();
    }
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    let segs = segments(dir.path());
    assert!(segs.iter().sum::<u64>() < 1000, "{segs:?}");
}

#[tokio::test]
async fn while_space_is_short_a_sparse_lone_segment_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 1000];
    let (spool, _) = Spool::open(dir.path(), one_mib()).unwrap();
    for i in 0..8u8 {
        spool.put(vec![msg(i, &body)]).await.unwrap();
    }
    for i in 2..8u8 {
        spool.remove(MessageId([i; 16])).unwrap();
    }
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    let before = segments(dir.path())[0];

    spool.set_space_short(true);
    spool
        .update_meta(MessageId([0; 16]), b"{\"n\":100}".to_vec())
        .unwrap();
    spool.flush().await.unwrap();
    spool.flush().await.unwrap();
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0] < before / 2, "{before} -> {segs:?}");
    drop(spool);
    let (spool, rec) = Spool::open(dir.path(), one_mib()).unwrap();
    let mut metas: Vec<_> = rec.iter().map(|r| r.meta.clone()).collect();
    metas.sort();
    let mut want = vec![b"{\"n\":1}".to_vec(), b"{\"n\":100}".to_vec()];
    want.sort();
    assert_eq!(metas, want);
    assert_eq!(spool.read_data(MessageId([1; 16])).unwrap(), body);
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_and_the_records_after_it_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        for i in 1..=3 {
            spool.put(vec![msg(i, &[b'a' + i; 100])]).await.unwrap();
        }
    }
    // flip one byte of the second body, as a bad sector would
    let seg = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&seg).unwrap();
    let second = record::scan(&bytes).records[1];
    bytes[(second.off + second.span() - 1) as usize] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    let (spool, rec) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let mut ids: Vec<u8> = rec.iter().map(|r| r.id.0[0]).collect();
    ids.sort();
    assert_eq!(ids, [1, 3]);
    assert_eq!(
        spool.read_data(MessageId([3; 16])).unwrap(),
        [b'a' + 3; 100]
    );
    // the segment was not cut at the bad record
    assert_eq!(fs::metadata(&seg).unwrap().len(), bytes.len() as u64);
}

#[test]
fn scan_resynchronises_after_garbage_and_reports_a_torn_tail() {
    let mut bytes = vec![];
    record::encode(
        &mut bytes,
        record::KIND_PUT,
        MessageId([1; 16]),
        b"m",
        b"one",
    );
    let first = bytes.len() as u64;
    bytes.extend_from_slice(b"garbage SLS1 not a record");
    let junk_end = bytes.len() as u64;
    record::encode(&mut bytes, record::KIND_DEL, MessageId([1; 16]), b"", b"");
    let good = bytes.len() as u64;
    let mut torn = vec![];
    record::encode(
        &mut torn,
        record::KIND_PUT,
        MessageId([2; 16]),
        b"m",
        b"two",
    );
    bytes.extend_from_slice(&torn[..torn.len() - 2]);

    let found = record::scan(&bytes);
    let kinds: Vec<u8> = found.records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [record::KIND_PUT, record::KIND_DEL]);
    assert_eq!(found.skipped, [first..junk_end, good..bytes.len() as u64]);
    assert_eq!(found.valid_end, good);
}

#[tokio::test]
async fn a_spool_open_elsewhere_is_refused_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    spool.put(vec![msg(1, b"one")]).await.unwrap();
    let err = Spool::open(dir.path(), SpoolOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, SpoolError::Locked(_)), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(spool);
    let (_, rec) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(rec.len(), 1);
}
