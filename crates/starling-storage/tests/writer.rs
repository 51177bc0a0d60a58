//! `LogWriter`: group commit, callback order, backpressure and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_storage::{
    Done, FsyncPolicy, LogStore, LogWriter, StorageError, StoreOptions, SubmitError, WriteBatch,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn file_store(fsync: FsyncPolicy) -> (tempfile::TempDir, LogStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(&dir.path().join("node.redb"), StoreOptions { fsync }).unwrap();
    (dir, store)
}

fn entry_batch(group: u64, index: u64) -> WriteBatch {
    let mut batch = WriteBatch::new(group);
    batch.entries = vec![(index, Bytes::from(format!("g{group}-e{index}")))];
    batch
}

/// A callback that sends `tag` and the result.
fn reporter<T: Send + 'static>(tx: &Sender<(T, Result<(), StorageError>)>, tag: T) -> Done {
    let tx = tx.clone();
    Box::new(move |result| {
        let _ = tx.send((tag, result));
    })
}

/// Submits, waiting (bounded by a deadline) while the queue is full.
fn submit_until_taken(writer: &LogWriter, mut batch: WriteBatch, mut done: Done) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match writer.try_submit(batch, done) {
            Ok(()) => return,
            Err(SubmitError::Full(b, d)) => {
                assert!(
                    Instant::now() < deadline,
                    "queue still full after {DEADLINE:?}"
                );
                (batch, done) = (b, d);
                std::thread::yield_now();
            }
            Err(err @ SubmitError::Closed(..)) => panic!("writer closed: {err}"),
        }
    }
}

/// Blocks the writer thread inside a callback until the returned sender is dropped or sent to.
/// Returns once the writer is stuck, so that everything submitted next stays queued.
fn block_writer(writer: &LogWriter, group: u64) -> Sender<()> {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let done: Done = Box::new(move |result| {
        result.expect("gate batch written");
        entered_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(DEADLINE);
    });
    writer.try_submit(entry_batch(group, 1), done).unwrap();
    entered_rx
        .recv_timeout(DEADLINE)
        .expect("writer thread did not reach the gate callback");
    release_tx
}

fn collect<T>(rx: &Receiver<T>, n: usize) -> Vec<T> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("timed out waiting for callback {i} of {n}"))
        })
        .collect()
}

#[test]
fn concurrent_submitters_each_get_every_callback_once_in_order() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 400;
    let (_dir, store) = file_store(FsyncPolicy::Always);
    // A small queue, so that submitters also meet `Full`.
    let writer = LogWriter::spawn(store.clone(), 16).unwrap();

    let receivers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let writer = &writer;
                scope.spawn(move || {
                    let (tx, rx) = mpsc::channel();
                    let mut next = 1;
                    for i in 1..=PER_THREAD {
                        // Each submitter owns a group; batches of 1..=3 entries.
                        let mut batch = WriteBatch::new(t);
                        let count = 1 + i % 3;
                        batch.entries = (next..next + count)
                            .map(|e| (e, Bytes::from(format!("t{t}-e{e}"))))
                            .collect();
                        next += count;
                        batch.meta = vec![("last".into(), Bytes::from(i.to_string()))];
                        submit_until_taken(writer, batch, reporter(&tx, i));
                    }
                    rx
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (t, rx) in (0u64..).zip(&receivers) {
        let got = collect(rx, PER_THREAD as usize);
        let order: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (1..=PER_THREAD).collect::<Vec<_>>(), "submitter {t}");
        for (i, result) in &got {
            assert!(result.is_ok(), "submitter {t} batch {i}: {result:?}");
        }
    }
    let stats = writer.stats();
    writer.shutdown();
    // After shutdown every sender clone held by a callback is gone: nothing was called twice.
    for rx in &receivers {
        assert!(rx.try_recv().is_err(), "a callback ran more than once");
    }

    assert_eq!(stats.batches, THREADS * PER_THREAD);
    assert_eq!(stats.failed_batches, 0);
    assert!(stats.commits >= 1 && stats.commits <= stats.batches);
    assert!(stats.max_commit_micros >= stats.last_commit_micros);
    assert!(stats.bytes > 0);
    let mut entries = 0;
    for t in 0..THREADS {
        let all = store.entries(t, 0, u64::MAX, None).unwrap();
        assert!(
            all.iter().map(|(e, _)| *e).eq(1..=all.len() as u64),
            "log of submitter {t} is not contiguous"
        );
        for (e, data) in &all {
            assert_eq!(data, &Bytes::from(format!("t{t}-e{e}")));
        }
        entries += all.len() as u64;
        assert_eq!(
            store.meta(t, "last").unwrap().unwrap(),
            PER_THREAD.to_string()
        );
    }
    assert_eq!(stats.entries, entries);
    assert_eq!(store.groups().unwrap(), (0..THREADS).collect::<Vec<_>>());
}

#[test]
fn full_queue_hands_the_batch_back_and_queued_batches_commit_together() {
    const CAPACITY: usize = 4;
    let (_dir, store) = file_store(FsyncPolicy::Always);
    let writer = LogWriter::spawn(store.clone(), CAPACITY).unwrap();
    let gate = block_writer(&writer, 99);

    let (tx, rx) = mpsc::channel();
    for i in 1..=CAPACITY as u64 {
        writer
            .try_submit(entry_batch(1, i), reporter(&tx, i))
            .expect("queue has room");
    }
    let called = Arc::new(AtomicUsize::new(0));
    let rejected = entry_batch(1, 5);
    let done: Done = {
        let called = Arc::clone(&called);
        Box::new(move |_| {
            called.fetch_add(1, Ordering::SeqCst);
        })
    };
    let err = writer.try_submit(rejected.clone(), done).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert!(err.to_string().contains("full"), "{err}");
    let (batch, done) = err.into_parts();
    assert_eq!(batch, rejected);
    assert_eq!(
        called.load(Ordering::SeqCst),
        0,
        "callback of a rejected batch ran"
    );

    // Open the gate: the queued batches go out in one commit, then the retried one.
    drop(gate);
    let got = collect(&rx, CAPACITY);
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(got.iter().all(|(_, r)| r.is_ok()));
    submit_until_taken(&writer, batch, done);
    writer.shutdown();
    assert_eq!(called.load(Ordering::SeqCst), 1);
    assert_eq!(store.last_index(1).unwrap(), Some(5));
}

#[test]
fn queued_batches_are_group_committed() {
    const QUEUED: u64 = 50;
    let (_dir, store) = file_store(FsyncPolicy::Always);
    let writer = LogWriter::spawn(store, 64).unwrap();
    let gate = block_writer(&writer, 99);
    let (tx, rx) = mpsc::channel();
    for i in 1..=QUEUED {
        writer
            .try_submit(entry_batch(1, i), reporter(&tx, i))
            .unwrap();
    }
    drop(gate);
    collect(&rx, QUEUED as usize);
    let stats = writer.stats();
    // The gate batch, then all queued batches in one transaction.
    assert_eq!(stats.commits, 2, "{stats:?}");
    assert_eq!(stats.batches, QUEUED + 1);
    assert_eq!(stats.entries, QUEUED + 1);
}

#[test]
fn shutdown_drains_the_queue() {
    const QUEUED: u64 = 100;
    let (_dir, store) = file_store(FsyncPolicy::Always);
    let writer = LogWriter::spawn(store.clone(), 128).unwrap();
    let gate = block_writer(&writer, 99);
    let results = Arc::new(Mutex::new(Vec::new()));
    for i in 1..=QUEUED {
        let results = Arc::clone(&results);
        let done: Done = Box::new(move |r| results.lock().unwrap().push((i, r)));
        writer.try_submit(entry_batch(1, i), done).unwrap();
    }
    // Shut down while everything is still queued behind the gate.
    let shutdown = std::thread::spawn(move || writer.shutdown());
    drop(gate);
    shutdown.join().unwrap();
    let results = results.lock().unwrap();
    assert_eq!(results.len(), QUEUED as usize);
    assert!(results.iter().map(|(i, _)| *i).eq(1..=QUEUED));
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(store.last_index(1).unwrap(), Some(QUEUED));
}

#[test]
fn dropping_the_writer_also_drains() {
    let (_dir, store) = file_store(FsyncPolicy::Never);
    let writer = LogWriter::spawn(store.clone(), 8).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    for i in 1..=8 {
        let count = Arc::clone(&count);
        let done: Done = Box::new(move |r| {
            r.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
        });
        submit_until_taken(&writer, entry_batch(3, i), done);
    }
    drop(writer);
    assert_eq!(count.load(Ordering::SeqCst), 8);
    assert_eq!(store.last_index(3).unwrap(), Some(8));
}

#[test]
fn an_invalid_batch_fails_alone_in_its_group_commit() {
    let (_dir, store) = file_store(FsyncPolicy::Always);
    let writer = LogWriter::spawn(store.clone(), 16).unwrap();
    let gate = block_writer(&writer, 99);
    let (tx, rx) = mpsc::channel();
    writer
        .try_submit(entry_batch(1, 1), reporter(&tx, "a"))
        .unwrap();
    let mut bad = WriteBatch::new(2);
    bad.entries = vec![(1, Bytes::new()), (5, Bytes::new())];
    writer.try_submit(bad, reporter(&tx, "bad")).unwrap();
    writer
        .try_submit(entry_batch(1, 2), reporter(&tx, "c"))
        .unwrap();
    drop(gate);
    let got = collect(&rx, 3);
    assert_eq!(got[0].0, "a");
    assert!(got[0].1.is_ok());
    assert_eq!(got[1].0, "bad");
    assert!(matches!(
        got[1].1,
        Err(StorageError::InvalidBatch { group: 2, .. })
    ));
    assert_eq!(got[2].0, "c");
    assert!(got[2].1.is_ok());
    writer.shutdown();
    assert_eq!(store.last_index(1).unwrap(), Some(2));
    assert_eq!(store.last_index(2).unwrap(), None);
}

#[test]
fn a_panicking_callback_does_not_stop_the_writer() {
    let (_dir, store) = file_store(FsyncPolicy::Never);
    let writer = LogWriter::spawn(store, 4).unwrap();
    writer
        .try_submit(
            entry_batch(1, 1),
            Box::new(|_| panic!("callback panics on purpose")),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    submit_until_taken(&writer, entry_batch(1, 2), reporter(&tx, ()));
    let got = collect(&rx, 1);
    assert!(got[0].1.is_ok());
    writer.shutdown();
}

#[test]
fn writer_thread_has_its_name_and_works_in_memory() {
    let store = LogStore::open_in_memory().unwrap();
    let writer = LogWriter::spawn(store.clone(), 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let done: Done = Box::new(move |r| {
        let name = std::thread::current().name().map(str::to_owned);
        let _ = tx.send((name, r));
    });
    writer.try_submit(entry_batch(1, 1), done).unwrap();
    let (name, result) = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(name.as_deref(), Some("starling-log-writer"));
    assert!(result.is_ok());
    assert!(format!("{writer:?}").contains("LogWriter"));
    writer.shutdown();
    assert_eq!(store.last_index(1).unwrap(), Some(1));
}

#[test]
fn a_callback_may_drop_the_last_writer_handle() {
    let (_dir, store) = file_store(FsyncPolicy::Never);
    let writer = Arc::new(Mutex::new(Some(
        LogWriter::spawn(store.clone(), 4).unwrap(),
    )));
    let (tx, rx) = mpsc::channel();
    let done: Done = {
        let writer = Arc::clone(&writer);
        Box::new(move |r| {
            // Dropping the writer from its own thread must neither deadlock nor panic.
            drop(writer.lock().unwrap().take());
            let _ = tx.send(r);
        })
    };
    writer
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .try_submit(entry_batch(1, 1), done)
        .unwrap();
    assert!(rx.recv_timeout(DEADLINE).unwrap().is_ok());
    assert!(writer.lock().unwrap().is_none());
    assert_eq!(store.last_index(1).unwrap(), Some(1));
}

#[test]
fn interval_policy_makes_commits_durable_on_time_and_when_idle() {
    let every = Duration::from_millis(20);
    let (_dir, store) = file_store(FsyncPolicy::Interval(every));
    let writer = LogWriter::spawn(store.clone(), 64).unwrap();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let mut index = 1;
    // Keep it busy for several intervals: some group commits must have been durable.
    while started.elapsed() < every * 6 {
        submit_until_taken(&writer, entry_batch(1, index), reporter(&tx, index));
        collect(&rx, 1);
        index += 1;
    }
    let busy = writer.stats().interval_syncs;
    assert!(busy >= 2, "only {busy} durable commits in 6 intervals");
    // One more non-durable commit, then idle: the writer syncs within about an interval.
    submit_until_taken(&writer, entry_batch(1, index), reporter(&tx, index));
    collect(&rx, 1);
    let deadline = Instant::now() + DEADLINE;
    while writer.stats().interval_syncs == busy {
        assert!(Instant::now() < deadline, "no idle sync");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(store.last_index(1).unwrap(), Some(index));
    writer.shutdown();
}
