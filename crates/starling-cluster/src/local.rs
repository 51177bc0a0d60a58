//! The single-node log: entries are committed when the storage writer has made them durable
//! (one fsync per group commit, as configured), then handed to the session store in order.
//!
//! At start it replays the stored snapshot and the entries after it, from its own thread and in
//! bounded chunks (each chunk waits until the store has applied the previous one).
//!
//! Without persistence (`persistence = false`) there is nothing to make durable: an entry is
//! committed as soon as it is proposed, in order, without a storage thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::Recipient;
use bytes::Bytes;
use starling_broker::{LogEvent, LogStartError, LogStatus, ProposeError, ReplicatedLog};
pub use starling_storage::FsyncPolicy;
use starling_storage::{LogStore, LogWriter, SnapshotRecord, StoreOptions, WriteBatch};
use tracing::{error, info, warn};

use crate::STATE_GROUP;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "starling.redb";

/// Bytes of entries handed to the store per replay step.
const REPLAY_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// A node's own write-ahead log.
pub struct LocalLog {
    /// `None`: nothing is kept (`persistence = false`).
    store: Option<LogStore>,
    queue_capacity: usize,
    writer: Option<LogWriter>,
    sink: Option<Recipient<LogEvent>>,
    next_index: u64,
    committed: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    pending_snapshot: Option<WriteBatch>,
}

impl LocalLog {
    /// Opens (or creates) the log in `dir`.
    ///
    /// # Errors
    /// The database cannot be opened (e.g. another process holds it).
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
        queue_capacity: usize,
    ) -> Result<LocalLog, LogStartError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogStartError(format!("{}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let store = LogStore::open(&path, StoreOptions { fsync })
            .map_err(|e| LogStartError(format!("{}: {e}", path.display())))?;
        Ok(Self::with_store(Some(store), queue_capacity))
    }

    /// A log that keeps nothing across restarts (`persistence = false`): entries commit at once.
    ///
    /// # Errors
    /// None today; kept fallible like [`LocalLog::open`].
    pub fn in_memory(queue_capacity: usize) -> Result<LocalLog, LogStartError> {
        Ok(Self::with_store(None, queue_capacity))
    }

    fn with_store(store: Option<LogStore>, queue_capacity: usize) -> LocalLog {
        LocalLog {
            store,
            queue_capacity: queue_capacity.max(1),
            writer: None,
            sink: None,
            next_index: 1,
            committed: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicBool::new(false)),
            pending_snapshot: None,
        }
    }

    fn submit_snapshot(&mut self) {
        let (Some(writer), Some(batch)) = (&self.writer, self.pending_snapshot.take()) else {
            return;
        };
        let done = Box::new(|r: Result<(), starling_storage::StorageError>| match r {
            Ok(()) => {}
            Err(e) => error!(error = %e, "snapshot write failed"),
        });
        if let Err(e) = writer.try_submit(batch, done) {
            if e.is_full() {
                self.pending_snapshot = Some(e.into_parts().0);
            }
        }
    }
}

fn replay(store: &LogStore, sink: &Recipient<LogEvent>) -> Result<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let send = |ev: LogEvent| {
        rt.block_on(sink.send(ev))
            .map_err(|e| format!("session store gone: {e}"))
    };
    let mut from = 1;
    if let Some(SnapshotRecord { index, data, .. }) =
        store.snapshot(STATE_GROUP).map_err(|e| e.to_string())?
    {
        send(LogEvent::Restore { index, data })?;
        from = index + 1;
    }
    let last = store
        .last_index(STATE_GROUP)
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let first = store
        .first_index(STATE_GROUP)
        .map_err(|e| e.to_string())?
        .unwrap_or(from);
    from = from.max(first);
    let mut replayed = 0u64;
    while from <= last {
        let chunk = store
            .entries(STATE_GROUP, from, last + 1, Some(REPLAY_CHUNK_BYTES))
            .map_err(|e| e.to_string())?;
        let Some((end, _)) = chunk.last() else { break };
        if chunk.first().map(|(i, _)| *i) != Some(from) {
            return Err(format!("log has a gap before index {from}"));
        }
        from = end + 1;
        replayed += chunk.len() as u64;
        send(LogEvent::Committed(chunk))?;
    }
    send(LogEvent::Recovered)?;
    Ok(replayed)
}

impl ReplicatedLog for LocalLog {
    fn start(&mut self, sink: Recipient<LogEvent>) -> Result<(), LogStartError> {
        let Some(store) = self.store.clone() else {
            sink.do_send(LogEvent::Recovered);
            self.sink = Some(sink);
            return Ok(());
        };
        let err = |e: starling_storage::StorageError| LogStartError(e.to_string());
        let snap = store
            .snapshot(STATE_GROUP)
            .map_err(err)?
            .map_or(0, |s| s.index);
        let last = store
            .last_index(STATE_GROUP)
            .map_err(err)?
            .unwrap_or(0)
            .max(snap);
        self.next_index = last + 1;
        self.committed.store(last, Ordering::Relaxed);
        self.writer = Some(
            LogWriter::spawn(store.clone(), self.queue_capacity)
                .map_err(|e| LogStartError(format!("cannot start the log writer: {e}")))?,
        );
        self.sink = Some(sink.clone());
        std::thread::Builder::new()
            .name("starling-replay".into())
            .spawn(move || match replay(&store, &sink) {
                Ok(n) => info!(entries = n, last_index = last, "log replayed"),
                Err(e) => error!(error = %e, "log replay failed"),
            })
            .map_err(|e| LogStartError(format!("cannot start replay: {e}")))?;
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(ProposeError::Unavailable("storage failed".into()));
        }
        let index = self.next_index;
        if self.store.is_none() {
            let Some(sink) = &self.sink else {
                return Err(ProposeError::Unavailable("log not started".into()));
            };
            self.next_index += 1;
            self.committed.store(index, Ordering::Relaxed);
            sink.do_send(LogEvent::Committed(vec![(index, data)]));
            return Ok(());
        }
        let (Some(writer), Some(sink)) = (&self.writer, &self.sink) else {
            return Err(ProposeError::Unavailable("log not started".into()));
        };
        let mut batch = WriteBatch::new(STATE_GROUP);
        batch.entries.push((index, data.clone()));
        let (sink, committed, failed) = (sink.clone(), self.committed.clone(), self.failed.clone());
        let done = Box::new(move |r: Result<(), starling_storage::StorageError>| {
            // Callbacks run in order: after a failure nothing later may commit (no gaps).
            if failed.load(Ordering::Relaxed) {
                return;
            }
            match r {
                Ok(()) => {
                    committed.store(index, Ordering::Relaxed);
                    sink.do_send(LogEvent::Committed(vec![(index, data)]));
                }
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    error!(index, error = %e, "log write failed; refusing further writes");
                }
            }
        });
        match writer.try_submit(batch, done) {
            Ok(()) => {
                self.next_index += 1;
                self.submit_snapshot();
                Ok(())
            }
            Err(e) if e.is_full() => Err(ProposeError::Busy),
            Err(e) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    fn save_snapshot(&mut self, index: u64, data: Bytes) {
        if self.store.is_none() {
            return;
        }
        let mut batch = WriteBatch::new(STATE_GROUP);
        batch.snapshot = Some(SnapshotRecord {
            index,
            term: 0,
            data,
        });
        batch.compact_to = Some(index + 1);
        self.pending_snapshot = Some(batch);
        self.submit_snapshot();
        if self.pending_snapshot.is_some() {
            warn!(index, "log writer queue full; snapshot deferred");
        }
    }

    fn commits_as_proposed(&self) -> bool {
        true
    }

    fn status(&self) -> LogStatus {
        LogStatus {
            role: "single",
            term: 0,
            leader: None,
            commit_index: self.committed.load(Ordering::Relaxed),
            members: Vec::new(),
        }
    }

    fn shutdown(&mut self, _done: tokio::sync::oneshot::Sender<()>) {
        // Written synchronously: `_done` is dropped on return.
        self.submit_snapshot();
        if let Some(w) = self.writer.take() {
            w.shutdown();
        }
        // The queue was full: the writer has drained it now, write the snapshot directly.
        if let (Some(store), Some(batch)) = (&self.store, self.pending_snapshot.take()) {
            if let Err(e) = store.write(&[batch]) {
                error!(error = %e, "final snapshot write failed");
            }
        }
    }
}
