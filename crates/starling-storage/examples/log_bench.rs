//! Storage micro-benchmark: commit throughput and latency of `LogStore::write`, group commit
//! through `LogWriter`, and snapshot write/read times, with fsync on and off.
//!
//! ```text
//! cargo run --release -p starling-storage --example log_bench [-- <dir>]
//! ```
//!
//! The store lives in a fresh temp dir under `<dir>` (default: the system temp dir, `/tmp`).
//! Each configuration runs for about [`RUN_FOR`] on a fresh file.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_storage::{
    Done, FsyncPolicy, LogStore, LogWriter, SnapshotRecord, StorageError, StoreOptions,
    SubmitError, WriteBatch,
};

/// Wall-clock budget of one configuration.
const RUN_FOR: Duration = Duration::from_secs(2);
const ENTRY_BYTES: usize = 100;
const BATCH_SIZES: [u64; 4] = [1, 16, 256, 1024];
const SNAPSHOT_MB: [usize; 2] = [10, 100];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&base)?;
    println!("store directory: temp dirs under {}", base.display());
    println!("entries of {ENTRY_BYTES} bytes, one batch per commit, ~{RUN_FOR:?} per row\n");

    println!("LogStore::write, one caller");
    println!(
        "{:<7} {:>6} {:>9} {:>11} {:>12} {:>10} {:>10} {:>10}",
        "fsync", "batch", "commits", "commits/s", "entries/s", "p50 µs", "p99 µs", "max µs"
    );
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for batch in BATCH_SIZES {
            let dir = tempfile::tempdir_in(&base)?;
            let store = open(dir.path(), fsync)?;
            let row = append_run(&store, batch)?;
            println!(
                "{:<7} {:>6} {:>9} {:>11.0} {:>12.0} {:>10} {:>10} {:>10}",
                policy_name(fsync),
                batch,
                row.commits,
                row.commits as f64 / row.elapsed.as_secs_f64(),
                (row.commits * batch) as f64 / row.elapsed.as_secs_f64(),
                row.percentile(50.0),
                row.percentile(99.0),
                row.percentile(100.0),
            );
        }
    }

    println!("\nLogWriter group commit: 4 submitters, 1-entry batches, queue 1024");
    println!(
        "{:<7} {:>9} {:>11} {:>9} {:>14} {:>13}",
        "fsync", "batches", "batches/s", "commits", "batches/commit", "max commit µs"
    );
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let dir = tempfile::tempdir_in(&base)?;
        let store = open(dir.path(), fsync)?;
        let (batches, elapsed, stats) = writer_run(&store, 4)?;
        println!(
            "{:<7} {:>9} {:>11.0} {:>9} {:>14.1} {:>13}",
            policy_name(fsync),
            batches,
            batches as f64 / elapsed.as_secs_f64(),
            stats.commits,
            stats.batches as f64 / stats.commits.max(1) as f64,
            stats.max_commit_micros,
        );
    }

    println!("\nsnapshots (write = replace the group's snapshot in one commit; read = one Bytes)");
    println!(
        "{:<7} {:>7} {:>11} {:>11} {:>11} {:>13}",
        "fsync", "size", "write ms", "rewrite ms", "read ms", "file MB"
    );
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for mb in SNAPSHOT_MB {
            let dir = tempfile::tempdir_in(&base)?;
            let path = dir.path().join("bench.redb");
            let store = LogStore::open(&path, StoreOptions { fsync })?;
            let data: Bytes = (0..mb * 1_000_000)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect::<Vec<u8>>()
                .into();
            let write = |index| -> Result<Duration, StorageError> {
                let mut batch = WriteBatch::new(1);
                batch.snapshot = Some(SnapshotRecord {
                    index,
                    term: 1,
                    data: data.clone(),
                });
                let started = Instant::now();
                store.write(&[batch])?;
                Ok(started.elapsed())
            };
            let first = write(1)?;
            let second = write(2)?;
            let started = Instant::now();
            let read = store.snapshot(1)?.ok_or("snapshot missing")?;
            let read_time = started.elapsed();
            if read.data != data || read.index != 2 {
                return Err("snapshot read back differs".into());
            }
            let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
            println!(
                "{:<7} {:>4} MB {:>11.1} {:>11.1} {:>11.1} {:>13.0}",
                policy_name(fsync),
                mb,
                first.as_secs_f64() * 1e3,
                second.as_secs_f64() * 1e3,
                read_time.as_secs_f64() * 1e3,
                file_mb,
            );
        }
    }
    Ok(())
}

fn policy_name(fsync: FsyncPolicy) -> &'static str {
    match fsync {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Never => "never",
        FsyncPolicy::Interval(_) => "interval",
    }
}

fn open(dir: &Path, fsync: FsyncPolicy) -> Result<LogStore, StorageError> {
    LogStore::open(&dir.join("bench.redb"), StoreOptions { fsync })
}

fn payload(index: u64) -> Bytes {
    let mut data = vec![0u8; ENTRY_BYTES];
    data[..8].copy_from_slice(&index.to_le_bytes());
    data.into()
}

struct Row {
    commits: u64,
    elapsed: Duration,
    micros: Vec<u64>,
}

impl Row {
    fn percentile(&self, p: f64) -> u64 {
        if self.micros.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        self.micros[rank.min(self.micros.len() - 1)]
    }
}

/// Appends `batch`-entry batches, one commit each, for [`RUN_FOR`].
fn append_run(store: &LogStore, batch: u64) -> Result<Row, StorageError> {
    let mut next = 1;
    let mut micros = Vec::new();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        let mut write = WriteBatch::new(1);
        write.entries = (next..next + batch).map(|i| (i, payload(i))).collect();
        write.hard_state = Some(Bytes::from_static(b"hard-state"));
        next += batch;
        let t = Instant::now();
        store.write(&[write])?;
        micros.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let elapsed = started.elapsed();
    micros.sort_unstable();
    Ok(Row {
        commits: micros.len() as u64,
        elapsed,
        micros,
    })
}

/// `submitters` threads each append 1-entry batches to their own group through one writer.
fn writer_run(
    store: &LogStore,
    submitters: u64,
) -> Result<(u64, Duration, starling_storage::WriterStats), Box<dyn std::error::Error>> {
    let writer = LogWriter::spawn(store.clone(), 1024)?;
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..submitters)
            .map(|group| {
                let writer = &writer;
                scope.spawn(move || {
                    let (tx, rx) = mpsc::channel::<()>();
                    let mut submitted = 0u64;
                    let mut acked = 0u64;
                    while started.elapsed() < RUN_FOR {
                        let mut batch = WriteBatch::new(group);
                        batch.entries = vec![(submitted + 1, payload(submitted + 1))];
                        let tx = tx.clone();
                        let mut done: Done = Box::new(move |result| {
                            if result.is_ok() {
                                let _ = tx.send(());
                            }
                        });
                        loop {
                            match writer.try_submit(batch, done) {
                                Ok(()) => break,
                                Err(SubmitError::Full(b, d)) => {
                                    (batch, done) = (b, d);
                                    // Full: wait for one of our own completions.
                                    if rx.recv().is_ok() {
                                        acked += 1;
                                    }
                                }
                                Err(SubmitError::Closed(..)) => return acked,
                            }
                        }
                        submitted += 1;
                        // Keep at most 256 of our own in flight.
                        while submitted - acked > 256 {
                            if rx.recv().is_err() {
                                break;
                            }
                            acked += 1;
                        }
                    }
                    drop(tx);
                    while acked < submitted && rx.recv().is_ok() {
                        acked += 1;
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let elapsed = started.elapsed();
    let stats = writer.stats();
    writer.shutdown();
    Ok((total, elapsed, stats))
}
