//! Crash consistency: SIGKILL a process that is appending through `LogWriter` with
//! `FsyncPolicy::Always`, at random moments, several rounds; after each kill the store must open
//! cleanly and hold every entry whose callback had fired, with a contiguous log whose hard state
//! and metadata match it (they are written in the same batches).
//!
//! The child is this same test binary, re-executed with `current_exe()` to run only
//! [`crash_child_writer`] (`--exact`) with [`CHILD_ENV`] set to the store's directory. Without the
//! variable that test returns at once, so a normal `cargo test` run passes it trivially.
//!
//! The child prints `@@ACK <first> <last>` (flushed) once a batch's callback has reported success.
//! The random seed is printed; set `STARLING_CRASH_SEED` to replay a run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_storage::{
    FsyncPolicy, LogStore, LogWriter, SnapshotRecord, StoreOptions, SubmitError, WriteBatch,
};

/// Set in the child's environment to the directory of the store; selects the child role.
const CHILD_ENV: &str = "STARLING_STORAGE_CRASH_CHILD_DIR";
const SEED_ENV: &str = "STARLING_CRASH_SEED";
const GROUP: u64 = 1;
const ROUNDS: usize = 12;
/// Batches between compactions / snapshots in the child.
const COMPACT_EVERY: u64 = 64;
const SNAPSHOT_EVERY: u64 = 97;
/// Entries kept behind the head by a compaction.
const KEEP: u64 = 3000;
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// What the child writes, derived from the index so that the parent can check every byte.

fn entry_payload(index: u64) -> Bytes {
    let len = 8 + (index % 193) as usize;
    let mut data = Vec::with_capacity(len);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend((8..len).map(|i| (index as usize).wrapping_mul(31).wrapping_add(i) as u8));
    data.into()
}

fn snapshot_payload(index: u64) -> Bytes {
    let len = 50_000 + (index % 5) as usize * 300_000;
    (0..len)
        .map(|i| (index as usize).wrapping_add(i.wrapping_mul(7)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The hard state and `last` meta value written with the batch ending at `last`.
fn state_for(last: u64) -> Bytes {
    Bytes::from(format!("last={last}"))
}

// ---------------------------------------------------------------------------------------------
// Child role.

/// Child entry point; a no-op unless [`CHILD_ENV`] is set.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    child_main(Path::new(&dir));
}

fn child_main(dir: &Path) {
    let store = LogStore::open(
        &dir.join("node.redb"),
        StoreOptions {
            fsync: FsyncPolicy::Always,
        },
    )
    .expect("child: open store");
    let mut next = store.last_index(GROUP).unwrap().map_or(1, |last| last + 1);
    let writer = LogWriter::spawn(store, 32).expect("child: spawn writer");
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@READY {next}").unwrap();
    out.flush().unwrap();

    let (ack_tx, ack_rx) = mpsc::channel::<(u64, u64)>();
    let print = |out: &mut std::io::StdoutLock<'_>, (first, last): (u64, u64)| {
        writeln!(out, "@@ACK {first} {last}").unwrap();
        out.flush().unwrap();
    };
    for n in 1u64.. {
        let count = 1 + (n * 7919) % 24;
        let (first, last) = (next, next + count - 1);
        let mut batch = WriteBatch::new(GROUP);
        batch.entries = (first..=last).map(|i| (i, entry_payload(i))).collect();
        batch.hard_state = Some(state_for(last));
        batch.meta = vec![("last".to_owned(), state_for(last))];
        if n % SNAPSHOT_EVERY == 0 {
            batch.snapshot = Some(SnapshotRecord {
                index: first - 1,
                term: 1,
                data: snapshot_payload(first - 1),
            });
        }
        if n % COMPACT_EVERY == 0 && first > KEEP {
            batch.compact_to = Some(first - KEEP);
        }
        next = last + 1;

        let tx = ack_tx.clone();
        let mut done: starling_storage::Done = Box::new(move |result| {
            result.expect("child: commit failed");
            let _ = tx.send((first, last));
        });
        loop {
            while let Ok(ack) = ack_rx.try_recv() {
                print(&mut out, ack);
            }
            match writer.try_submit(batch, done) {
                Ok(()) => break,
                Err(SubmitError::Full(b, d)) => {
                    (batch, done) = (b, d);
                    // The queue is full, so a callback is due: wait for it.
                    let ack = ack_rx
                        .recv_timeout(DEADLINE)
                        .expect("child: no commit while the queue is full");
                    print(&mut out, ack);
                }
                Err(err) => panic!("child: {err}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parent role.

/// Small deterministic PRNG (splitmix64), so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Kills the child if the parent panics before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum Line {
    Ready,
    Ack(u64, u64),
}

fn spawn_child(
    dir: &Path,
) -> (
    ChildGuard,
    mpsc::Receiver<Line>,
    std::thread::JoinHandle<()>,
) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "crash_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    // Reads until EOF, i.e. until the child is dead, so every ACK it printed arrives.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints `test crash_child_writer ... ` without a newline before the test
            // runs, so the first marker shares its line: look for the marker, not the start.
            let Some(at) = line.find("@@") else { continue };
            let mut words = line[at + 2..].split_whitespace();
            let parsed = match words.next() {
                Some("READY") => Line::Ready,
                Some("ACK") => {
                    let mut num = || words.next().and_then(|w| w.parse().ok()).expect("ACK line");
                    Line::Ack(num(), num())
                }
                _ => continue, // libtest's own output
            };
            if tx.send(parsed).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx, reader)
}

/// Opens the store after a kill and checks it against everything acknowledged so far.
fn verify(path: &Path, acked: &BTreeSet<u64>, round: usize) -> String {
    let store = LogStore::open(path, StoreOptions::default())
        .unwrap_or_else(|err| panic!("round {round}: store does not reopen: {err}"));
    let compacted = store.compacted_to(GROUP).unwrap();
    let first = store.first_index(GROUP).unwrap();
    let last = store.last_index(GROUP).unwrap();
    let highest_acked = acked.last().copied();

    let (Some(first), Some(last)) = (first, last) else {
        assert!(
            highest_acked.is_none(),
            "round {round}: log is empty but {highest_acked:?} was acknowledged"
        );
        return "log empty".to_owned();
    };
    assert_eq!(
        first,
        compacted.max(1),
        "round {round}: first index vs compacted_to"
    );
    if let Some(highest) = highest_acked {
        assert!(
            last >= highest,
            "round {round}: acknowledged {highest} but the log ends at {last}"
        );
    }

    // Contiguous, and every byte as written.
    let entries = store.entries(GROUP, first, last + 1, None).unwrap();
    assert_eq!(
        entries.len() as u64,
        last - first + 1,
        "round {round}: log {first}..={last} has gaps"
    );
    for (expected, (index, data)) in (first..).zip(&entries) {
        assert_eq!(*index, expected, "round {round}: log is not contiguous");
        assert!(
            *data == entry_payload(*index),
            "round {round}: entry {index} has the wrong bytes"
        );
    }
    // Every acknowledged entry is there, or was compacted away on purpose.
    for &index in acked {
        assert!(
            index >= first || index < compacted,
            "round {round}: acknowledged entry {index} is missing"
        );
    }

    // Atomic with the entries of the same batch.
    assert_eq!(
        store.hard_state(GROUP).unwrap(),
        Some(state_for(last)),
        "round {round}: hard state does not match the last entry"
    );
    assert_eq!(store.meta(GROUP, "last").unwrap(), Some(state_for(last)));
    if let Some(snapshot) = store.snapshot(GROUP).unwrap() {
        assert!(
            snapshot.data == snapshot_payload(snapshot.index),
            "round {round}: snapshot at {} has the wrong bytes",
            snapshot.index
        );
        assert!(snapshot.index <= last);
    }
    let snapshot = store.snapshot(GROUP).unwrap().map(|s| s.index);
    if compacted > 0 {
        assert!(
            snapshot.is_some(),
            "round {round}: compacted to {compacted} without a snapshot"
        );
    }
    format!("log {first}..={last}, compacted_to {compacted}, snapshot at {snapshot:?}")
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("crash test seed: {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let child_dir: PathBuf = dir.path().to_path_buf();
    let path = child_dir.join("node.redb");
    let mut acked = BTreeSet::new();
    let started = Instant::now();

    for round in 0..ROUNDS {
        // 0 = kill as soon as the child has opened the store; otherwise after a random number
        // of acknowledged batches.
        let kill_after = if rng.below(5) == 0 {
            0
        } else {
            1 + rng.below(800)
        };
        let (mut child, lines, reader) = spawn_child(&child_dir);
        let deadline = Instant::now() + DEADLINE;
        let mut seen = 0;
        let mut ready = false;
        while !ready || seen < kill_after {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(timeout) {
                Ok(Line::Ready) => ready = true,
                Ok(Line::Ack(first, last)) => {
                    acked.extend(first..=last);
                    seen += 1;
                }
                Err(err) => panic!(
                    "round {round}: child stopped or stalled after {seen} acks \
                     (waiting for {kill_after}): {err:?}; exit: {:?}",
                    child.0.try_wait()
                ),
            }
        }
        child.0.kill().expect("SIGKILL child");
        let status = child.0.wait().expect("wait for child");
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: child was not killed by SIGKILL: {status:?}"
        );
        // Acks printed before the kill are still in the pipe: take them all.
        reader.join().unwrap();
        for line in lines.try_iter() {
            if let Line::Ack(first, last) = line {
                acked.extend(first..=last);
                seen += 1;
            }
        }
        let summary = verify(&path, &acked, round);
        eprintln!(
            "round {round}: killed after {seen} acks (target {kill_after}), {} entries \
             acknowledged so far; reopened: {summary}",
            acked.len()
        );
    }
    eprintln!("crash test: {ROUNDS} rounds in {:?}", started.elapsed());
}
