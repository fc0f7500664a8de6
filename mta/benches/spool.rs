//! Why the spool is a group-commit log: store 20,000 messages of 2 KB from 50
//! concurrent writers, durably (synced before "acknowledged"), two ways:
//!
//! * `log`: sluice's `Spool` — one write + one fdatasync per batch of
//!   whatever arrived while the previous sync ran;
//! * `file-per-message`: the classic queue-file layout (Postfix, KumoMTA's
//!   LocalDisk with flush) — write a temp file, fsync it, rename it into
//!   place, fsync the directory.
//!
//! Run: `cargo bench -p sluice-mta --bench spool`. Prints messages/s for both.

use sluice_mta::message::MessageId;
use sluice_mta::spool::{NewMessage, Spool, SpoolOptions};
use std::sync::Arc;
use std::time::Instant;

const MESSAGES: usize = 20_000;
const WRITERS: usize = 50;
const SIZE: usize = 2048;

async fn log_spool(dir: &std::path::Path) -> f64 {
    let (spool, _) = Spool::open(dir, SpoolOptions::default()).unwrap();
    let spool = Arc::new(spool);
    let body = Arc::new(vec![b'x'; SIZE]);
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..WRITERS {
        let spool = spool.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..MESSAGES / WRITERS {
                let m = NewMessage {
                    id: MessageId::new(),
                    meta: br#"{"sender":"a@b","recipient":["c@d"],"meta":{}}"#.to_vec(),
                    data: body.clone(),
                };
                spool.put(vec![m]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    MESSAGES as f64 / start.elapsed().as_secs_f64()
}

fn store_file(dir: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let id = MessageId::new().to_string();
    let tmp = dir.join("tmp").join(&id);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join("data").join(&id))?;
    std::fs::File::open(dir.join("data"))?.sync_all()
}

async fn file_per_message(dir: &std::path::Path) -> f64 {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let dir = Arc::new(dir.to_path_buf());
    let body = Arc::new(vec![b'x'; SIZE]);
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..WRITERS {
        let dir = dir.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..MESSAGES / WRITERS {
                let (dir, body) = (dir.clone(), body.clone());
                tokio::task::spawn_blocking(move || store_file(&dir, &body))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    MESSAGES as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // on the same file system as the spool would be, not tmpfs
    let base = std::env::var("SPOOL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    for round in 1..=2 {
        let a = tempfile::tempdir_in(&base).unwrap();
        let b = tempfile::tempdir_in(&base).unwrap();
        let log = rt.block_on(log_spool(a.path()));
        let files = rt.block_on(file_per_message(b.path()));
        println!(
            "round {round}: {MESSAGES} x {SIZE} B, {WRITERS} writers, synced: \
             log {log:.0} msg/s, file-per-message {files:.0} msg/s, ratio {:.1}x",
            log / files
        );
    }
}
