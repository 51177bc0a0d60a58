//! [`LogWriter`]: the dedicated storage thread that group-commits write batches.
//!
//! ```text
//!  submitters (actors, any thread)           "starling-log-writer" thread
//!  try_submit(batch, done) ──► bounded queue ──► take everything queued (≤ MAX_GROUP_BYTES)
//!        │ Full / Closed: batch and done             │ one write transaction, one fsync
//!        ▼ handed back                               ▼
//!                                               done(result) for each batch, in queue order
//! ```
//!
//! The queue is FIFO over all submitters, so each submitter's callbacks run in its submission
//! order. Callbacks run on the writer thread: they must be cheap (send a message and return).
//! A panicking callback is caught and logged; it does not stop the writer.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::Durability;

use crate::batch::WriteBatch;
use crate::error::{StorageError, SubmitError};
use crate::store::{FsyncPolicy, LogStore};

/// Completion callback of a submitted batch: called exactly once, on the writer thread, with the
/// outcome of the commit that carried the batch.
pub type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// The writer stops adding queued batches to a group commit once their
/// [`approx_bytes`](WriteBatch::approx_bytes) reach this (a single larger batch is still written
/// alone).
pub const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Name of the writer's OS thread.
pub const THREAD_NAME: &str = "starling-log-writer";

/// Counters of a [`LogWriter`], read with [`LogWriter::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write transactions committed successfully.
    pub commits: u64,
    /// Batches written by those commits.
    pub batches: u64,
    /// Log entries written by those commits.
    pub entries: u64,
    /// [`approx_bytes`](WriteBatch::approx_bytes) of those batches.
    pub bytes: u64,
    /// Batches whose callback got an error.
    pub failed_batches: u64,
    /// Duration of the most recent commit (write transaction including fsync), in microseconds.
    pub last_commit_micros: u64,
    /// Longest commit so far, in microseconds.
    pub max_commit_micros: u64,
    /// Durable commits made by the interval policy (including idle syncs).
    pub interval_syncs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    interval_syncs: AtomicU64,
    commits: AtomicU64,
    batches: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    failed_batches: AtomicU64,
    last_commit_micros: AtomicU64,
    max_commit_micros: AtomicU64,
}

struct Job {
    batch: WriteBatch,
    done: Done,
}

/// Handle to the writer thread. Dropping it (or [`LogWriter::shutdown`]) closes the queue, lets
/// the thread write and acknowledge everything already queued, and joins it.
///
/// `LogWriter` is `Sync`: share it by reference or `Arc` between submitters.
pub struct LogWriter {
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("open", &self.sender.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl LogWriter {
    /// Starts the writer thread (named [`THREAD_NAME`]) with a queue of `queue_capacity` batches
    /// (at least 1).
    ///
    /// # Errors
    /// The OS error if the thread cannot be spawned.
    pub fn spawn(store: LogStore, queue_capacity: usize) -> std::io::Result<LogWriter> {
        let (sender, receiver) = sync_channel(queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || run(&store, &receiver, &thread_counters))?;
        Ok(LogWriter {
            sender: Some(sender),
            thread: Some(thread),
            counters,
        })
    }

    /// Queues `batch`; `done` is called with the commit's outcome once it is written.
    ///
    /// Never blocks.
    ///
    /// # Errors
    /// [`SubmitError::Full`] when the queue is at capacity, [`SubmitError::Closed`] when the
    /// writer has stopped; both hand back the batch and the (uncalled) callback.
    #[allow(
        clippy::result_large_err,
        reason = "handing the batch back by value is the API; boxing it would allocate on every Full"
    )]
    pub fn try_submit(&self, batch: WriteBatch, done: Done) -> Result<(), SubmitError> {
        let Some(sender) = &self.sender else {
            return Err(SubmitError::Closed(batch, done));
        };
        sender
            .try_send(Job { batch, done })
            .map_err(|err| match err {
                TrySendError::Full(job) => SubmitError::Full(job.batch, job.done),
                TrySendError::Disconnected(job) => SubmitError::Closed(job.batch, job.done),
            })
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            entries: c.entries.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            last_commit_micros: c.last_commit_micros.load(Ordering::Relaxed),
            max_commit_micros: c.max_commit_micros.load(Ordering::Relaxed),
            interval_syncs: c.interval_syncs.load(Ordering::Relaxed),
        }
    }

    /// Closes the queue, waits until everything queued is written and acknowledged, and joins the
    /// thread.
    pub fn shutdown(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            // A callback that drops the last handle runs on the writer thread itself: it cannot
            // join itself, and the thread ends on its own once the queue is drained.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                tracing::error!("log writer thread panicked");
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Durable commits of the interval policy: when the next commit must be durable.
struct Interval {
    every: Duration,
    last_durable: Instant,
    dirty: bool,
}

impl Interval {
    fn durability(&mut self) -> Durability {
        if self.last_durable.elapsed() >= self.every {
            self.last_durable = Instant::now();
            self.dirty = false;
            Durability::Immediate
        } else {
            self.dirty = true;
            Durability::None
        }
    }
}

/// The writer thread: group commits until the queue is closed and empty.
fn run(store: &LogStore, receiver: &Receiver<Job>, counters: &Counters) {
    tracing::debug!("log writer started");
    let mut group: Vec<Job> = Vec::new();
    let mut interval = match store.fsync_policy() {
        FsyncPolicy::Interval(every) => Some(Interval {
            every,
            last_durable: Instant::now(),
            dirty: false,
        }),
        _ => None,
    };
    loop {
        // With the interval policy, an idle queue still gets its durable commit on time.
        let first = match &mut interval {
            Some(i) if i.dirty => match receiver.recv_timeout(i.every) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    match store.sync() {
                        Ok(()) => {
                            i.dirty = false;
                            i.last_durable = Instant::now();
                            counters.interval_syncs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::error!(error = %e, "periodic sync failed"),
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            // `recv` keeps returning queued jobs after every sender is gone, and fails only once
            // the queue is empty: that is the drain on shutdown.
            _ => match receiver.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut bytes = first.batch.approx_bytes();
        group.push(first);
        while bytes < MAX_GROUP_BYTES {
            match receiver.try_recv() {
                Ok(job) => {
                    bytes = bytes.saturating_add(job.batch.approx_bytes());
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let durability = interval.as_mut().map(Interval::durability);
        if matches!(durability, Some(Durability::Immediate)) {
            counters.interval_syncs.fetch_add(1, Ordering::Relaxed);
        }
        commit_group(store, &mut group, counters, durability);
    }
    if interval.is_some_and(|i| i.dirty) {
        if let Err(e) = store.sync() {
            tracing::error!(error = %e, "final sync failed");
        }
    }
    tracing::debug!("log writer stopped");
}

/// Writes `group` in one transaction and calls every callback in order, emptying `group`.
fn commit_group(
    store: &LogStore,
    group: &mut Vec<Job>,
    counters: &Counters,
    durability: Option<Durability>,
) {
    // An invalid batch fails alone; the others are still written together.
    let verdicts: Vec<Result<(), StorageError>> =
        group.iter().map(|job| job.batch.validate()).collect();
    let valid = || {
        group
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(job, _)| &job.batch)
    };

    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| match durability {
        Some(d) => store.write_all_with(valid(), d),
        None => store.write_all(valid()),
    }))
    .unwrap_or_else(|panic| {
        Err(StorageError::Panicked {
            op: "write",
            message: panic_message(panic.as_ref()),
        })
    });
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);

    match &outcome {
        Ok(()) => {
            let (mut batches, mut entries, mut bytes) = (0u64, 0u64, 0u64);
            for batch in valid() {
                batches += 1;
                entries += batch.entries.len() as u64;
                bytes += batch.approx_bytes() as u64;
            }
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.batches.fetch_add(batches, Ordering::Relaxed);
            counters.entries.fetch_add(entries, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            counters.last_commit_micros.store(micros, Ordering::Relaxed);
            counters
                .max_commit_micros
                .fetch_max(micros, Ordering::Relaxed);
            tracing::trace!(batches, entries, bytes, micros, "group commit");
        }
        Err(err) => {
            tracing::error!(error = %err, batches = group.len(), "group commit failed");
        }
    }

    for (job, verdict) in group.drain(..).zip(verdicts) {
        let result = verdict.and_then(|()| outcome.clone());
        if result.is_err() {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
        let done = job.done;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || done(result))) {
            tracing::error!(
                panic = %panic_message(panic.as_ref()),
                "log writer callback panicked"
            );
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
