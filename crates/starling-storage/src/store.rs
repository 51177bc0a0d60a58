//! [`LogStore`]: the per-node redb file and its tables.
//!
//! # Tables
//! Every key starts with the Raft group id, so groups never collide and a group's rows are one
//! contiguous key range.
//!
//! ```text
//! starling_info     &str          -> u64                  layout version
//! groups            group         -> ()                   every group ever written
//! log_entries       (group, index)-> bytes                Raft log / WAL entries
//! hard_state        group         -> bytes
//! conf_state        group         -> bytes
//! compacted_to      group         -> u64                  highest compact_to seen
//! snapshot_meta     group         -> (index, term, len, chunk_size)
//! snapshot_chunks   (group, n)    -> bytes                the snapshot cut in chunk_size pieces
//! meta              (group, name) -> bytes
//! ```
//!
//! A snapshot is stored in chunks of [`SNAPSHOT_CHUNK_BYTES`] so that writing one never asks
//! redb for a second contiguous buffer of the snapshot's size: redb keeps at most half of its
//! cache ([`CACHE_BYTES`]) of dirty pages and writes the rest out during the transaction.
//! Reading one back allocates the result once and copies the chunks into it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use crate::batch::{SnapshotRecord, WriteBatch};
use crate::error::{engine, StorageError};

/// Layout version written to and expected in [`INFO`]. Bump on incompatible table changes.
const FORMAT_VERSION: u64 = 1;
const FORMAT_VERSION_KEY: &str = "format_version";

/// Size of one stored snapshot chunk: 256 bytes under 512 KiB, so that a chunk plus its redb
/// leaf-page header fits a 512 KiB page (redb gives a large value a page of the next power of two,
/// so a full 512 KiB chunk would take 1 MiB). Measured on a 100 MB snapshot: 512 KiB chunks wrote
/// and read fastest and left the smallest file (1 MiB chunks grew the file to twice the size).
pub const SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024 - 256;

/// Memory redb may use for its page cache (read cache plus write buffer). The write buffer is
/// held to half of this; beyond that, dirty pages are written to the file before commit.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

const INFO: TableDefinition<'_, &str, u64> = TableDefinition::new("starling_info");
const GROUPS: TableDefinition<'_, u64, ()> = TableDefinition::new("groups");
const ENTRIES: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("log_entries");
const HARD_STATE: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("hard_state");
const CONF_STATE: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("conf_state");
const COMPACTED: TableDefinition<'_, u64, u64> = TableDefinition::new("compacted_to");
/// `(index, term, total length, chunk size)`.
const SNAPSHOT_META: TableDefinition<'_, u64, (u64, u64, u64, u64)> =
    TableDefinition::new("snapshot_meta");
const SNAPSHOT_CHUNKS: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("snapshot_chunks");
const META: TableDefinition<'_, (u64, &str), &[u8]> = TableDefinition::new("meta");

/// When a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Commits are not fsync'd, except that the [`LogWriter`](crate::LogWriter) makes one
    /// durable at least every given interval (and soon after the queue goes idle): a crash
    /// loses at most about that much. Without the writer it behaves like [`FsyncPolicy::Never`].
    Interval(std::time::Duration),
    /// Every commit is fsync'd before it returns (redb `Durability::Immediate`). The default.
    #[default]
    Always,
    /// Commits are not fsync'd (redb `Durability::None`). They are visible to readers at once but
    /// survive a crash only once a later durable commit ([`LogStore::sync`]) or a clean close
    /// (dropping the last handle) has written them: redb does not point its on-disk header at a
    /// non-durable commit, so after a crash the file reopens at the last durable one.
    Never,
}

/// How to open a [`LogStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreOptions {
    /// When commits are fsync'd.
    pub fsync: FsyncPolicy,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    durability: Durability,
    path: Option<PathBuf>,
    /// Set once at open; behind a mutex only so that `Inner` is built in one place.
    policy: Mutex<FsyncPolicy>,
}

/// One node's durable store: one redb database holding, per Raft group, the log entries, hard and
/// conf state, latest snapshot and metadata.
///
/// Cheap to clone (an `Arc`); every clone is the same database. Reads run on MVCC snapshots and
/// never block the writer. Writes may come from any thread (redb serialises write
/// transactions), but the broker funnels them through one [`LogWriter`](crate::LogWriter) so that
/// they are group-committed off the actor threads.
///
/// The file is closed when the last clone is dropped; a clean close also makes pending
/// non-durable commits ([`FsyncPolicy::Never`]) durable.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// The tables a write transaction touches, opened once per transaction.
struct WriteTables<'txn> {
    groups: Table<'txn, u64, ()>,
    entries: Table<'txn, (u64, u64), &'static [u8]>,
    hard_state: Table<'txn, u64, &'static [u8]>,
    conf_state: Table<'txn, u64, &'static [u8]>,
    compacted: Table<'txn, u64, u64>,
    snapshot_meta: Table<'txn, u64, (u64, u64, u64, u64)>,
    snapshot_chunks: Table<'txn, (u64, u64), &'static [u8]>,
    meta: Table<'txn, (u64, &'static str), &'static [u8]>,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        let op = "open tables";
        Ok(WriteTables {
            groups: txn.open_table(GROUPS).map_err(engine(op))?,
            entries: txn.open_table(ENTRIES).map_err(engine(op))?,
            hard_state: txn.open_table(HARD_STATE).map_err(engine(op))?,
            conf_state: txn.open_table(CONF_STATE).map_err(engine(op))?,
            compacted: txn.open_table(COMPACTED).map_err(engine(op))?,
            snapshot_meta: txn.open_table(SNAPSHOT_META).map_err(engine(op))?,
            snapshot_chunks: txn.open_table(SNAPSHOT_CHUNKS).map_err(engine(op))?,
            meta: txn.open_table(META).map_err(engine(op))?,
        })
    }

    /// Applies one batch, in the order documented on [`WriteBatch`].
    fn apply(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        let g = batch.group;
        if batch.is_empty() {
            return Ok(());
        }
        self.groups.insert(g, ()).map_err(engine("write group"))?;

        if let Some(from) = batch.truncate_from {
            self.entries
                .retain_in((g, from)..=(g, u64::MAX), |_, _| false)
                .map_err(engine("truncate entries"))?;
        }
        for (index, data) in &batch.entries {
            self.entries
                .insert((g, *index), data.as_ref())
                .map_err(engine("append entries"))?;
        }
        if let Some(hard_state) = &batch.hard_state {
            self.hard_state
                .insert(g, hard_state.as_ref())
                .map_err(engine("write hard state"))?;
        }
        if let Some(conf_state) = &batch.conf_state {
            self.conf_state
                .insert(g, conf_state.as_ref())
                .map_err(engine("write conf state"))?;
        }
        if let Some(snapshot) = &batch.snapshot {
            self.put_snapshot(g, snapshot)?;
        }
        if let Some(to) = batch.compact_to {
            self.compact(g, to)?;
        }
        for (name, value) in &batch.meta {
            self.meta
                .insert((g, name.as_str()), value.as_ref())
                .map_err(engine("write meta"))?;
        }
        Ok(())
    }

    fn put_snapshot(&mut self, g: u64, snapshot: &SnapshotRecord) -> Result<(), StorageError> {
        let op = "write snapshot";
        self.snapshot_chunks
            .retain_in((g, 0)..=(g, u64::MAX), |_, _| false)
            .map_err(engine(op))?;
        for (n, chunk) in (0u64..).zip(snapshot.data.chunks(SNAPSHOT_CHUNK_BYTES)) {
            self.snapshot_chunks
                .insert((g, n), chunk)
                .map_err(engine(op))?;
        }
        let record = (
            snapshot.index,
            snapshot.term,
            snapshot.data.len() as u64,
            SNAPSHOT_CHUNK_BYTES as u64,
        );
        self.snapshot_meta.insert(g, record).map_err(engine(op))?;
        Ok(())
    }

    fn compact(&mut self, g: u64, to: u64) -> Result<(), StorageError> {
        let op = "compact entries";
        if to > 0 {
            self.entries
                .retain_in((g, 0)..(g, to), |_, _| false)
                .map_err(engine(op))?;
        }
        let previous = self
            .compacted
            .get(g)
            .map_err(engine(op))?
            .map(|guard| guard.value());
        if previous.is_none_or(|previous| to > previous) {
            self.compacted.insert(g, to).map_err(engine(op))?;
        }
        Ok(())
    }
}

impl LogStore {
    /// Opens the store at `path`, creating the file and its parent directory if missing.
    ///
    /// After an unclean shutdown redb repairs the file while opening (it walks the whole file, so
    /// this takes time proportional to its size); the repair is logged.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the directory cannot be created; [`StorageError::Engine`] if redb
    /// cannot open the file (including "already open" by another handle or process);
    /// [`StorageError::FormatVersion`] if the file has an incompatible layout.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<LogStore, StorageError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|err| StorageError::Io {
                    op: "create data directory",
                    path: parent.to_path_buf(),
                    message: err.to_string(),
                })?;
            }
        }
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(move |session| {
                tracing::warn!(
                    path = %shown,
                    progress = session.progress(),
                    "repairing storage file after an unclean shutdown"
                );
            })
            .create(path)
            .map_err(|err| StorageError::Engine {
                op: "open",
                message: format!("{}: {err}", path.display()),
            })?;
        let durability = match opts.fsync {
            FsyncPolicy::Always => Durability::Immediate,
            FsyncPolicy::Never | FsyncPolicy::Interval(_) => Durability::None,
        };
        let store = LogStore::init(db, durability, Some(path.to_path_buf()))?;
        *store.inner.policy.lock().unwrap_or_else(|e| e.into_inner()) = opts.fsync;
        tracing::debug!(path = %path.display(), fsync = ?opts.fsync, "storage opened");
        Ok(store)
    }

    /// Opens a store that lives in memory only (redb's in-memory backend), for
    /// `persistence = false`. It behaves like a file store, and is gone when the last clone drops.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails to initialise the database.
    pub fn open_in_memory() -> Result<LogStore, StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(engine("open in memory"))?;
        // Nothing to fsync: skip the durable-commit work.
        let store = LogStore::init(db, Durability::None, None)?;
        *store.inner.policy.lock().unwrap_or_else(|e| e.into_inner()) = FsyncPolicy::Never;
        Ok(store)
    }

    /// Creates the tables (read transactions cannot open a table that was never created) and
    /// checks the layout version.
    fn init(
        db: Database,
        durability: Durability,
        path: Option<PathBuf>,
    ) -> Result<LogStore, StorageError> {
        let op = "initialise";
        let txn = db.begin_write().map_err(engine(op))?;
        {
            let mut info = txn.open_table(INFO).map_err(engine(op))?;
            let found = info
                .get(FORMAT_VERSION_KEY)
                .map_err(engine(op))?
                .map(|guard| guard.value());
            match found {
                None => {
                    info.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)
                        .map_err(engine(op))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(StorageError::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    })
                }
            }
            WriteTables::open(&txn)?;
        }
        txn.commit().map_err(engine(op))?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                durability,
                path,
                policy: Mutex::new(FsyncPolicy::Always),
            }),
        })
    }

    /// The policy the store was opened with ([`FsyncPolicy::Never`] for an in-memory store,
    /// which has nothing to fsync).
    pub fn fsync_policy(&self) -> FsyncPolicy {
        *self.inner.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file this store lives in (`None` for an in-memory store).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Writes `batches` in ONE redb write transaction, committed with the store's
    /// [`FsyncPolicy`]: either all of them are stored or none.
    ///
    /// Blocks for the commit (an fsync with [`FsyncPolicy::Always`]): call it from a storage
    /// thread such as [`LogWriter`](crate::LogWriter), never from an async or actor thread.
    /// Batches that are all empty commit nothing.
    ///
    /// # Errors
    /// [`StorageError::InvalidBatch`] (nothing written) if a batch breaks its rules;
    /// [`StorageError::Engine`] if redb fails. After a failed commit redb refuses further writes
    /// until the store is reopened (see [`StorageError::is_fatal`]).
    pub fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.write_all(batches.iter())
    }

    /// [`LogStore::write`] over any sequence of batch references (the writer thread's groups).
    pub(crate) fn write_all<'b, I>(&self, batches: I) -> Result<(), StorageError>
    where
        I: Iterator<Item = &'b WriteBatch> + Clone,
    {
        self.write_all_with(batches, self.inner.durability)
    }

    /// [`LogStore::write_all`] with an explicit durability (the writer's interval policy).
    pub(crate) fn write_all_with<'b, I>(
        &self,
        batches: I,
        durability: Durability,
    ) -> Result<(), StorageError>
    where
        I: Iterator<Item = &'b WriteBatch> + Clone,
    {
        let mut any = false;
        for batch in batches.clone() {
            batch.validate()?;
            any |= !batch.is_empty();
        }
        if !any {
            return Ok(());
        }
        let mut txn = self.inner.db.begin_write().map_err(engine("begin write"))?;
        txn.set_durability(durability)
            .map_err(engine("set durability"))?;
        {
            let mut tables = WriteTables::open(&txn)?;
            for batch in batches {
                tables.apply(batch)?;
            }
        }
        txn.commit().map_err(engine("commit"))
    }

    /// Makes every commit so far durable (one durable, empty commit). A no-op in effect with
    /// [`FsyncPolicy::Always`]; with [`FsyncPolicy::Never`] it bounds what a crash can lose.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut txn = self.inner.db.begin_write().map_err(engine("begin sync"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(engine("set durability"))?;
        txn.commit().map_err(engine("sync"))
    }

    fn read_txn(&self, op: &'static str) -> Result<ReadTransaction, StorageError> {
        self.inner.db.begin_read().map_err(engine(op))
    }

    /// Entries of `group` with `lo <= index < hi`, in index order.
    ///
    /// With `max_bytes`, stops before the total payload size would exceed it, but returns at
    /// least one entry if there is any in the range. Returns what exists: a compacted or never
    /// written part of the range is simply absent (the Raft adapter maps gaps to its own
    /// `Compacted`/`Unavailable` errors; see [`LogStore::compacted_to`]).
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<(u64, Bytes)>, StorageError> {
        let op = "read entries";
        if lo >= hi {
            return Ok(Vec::new());
        }
        let txn = self.read_txn(op)?;
        let table = txn.open_table(ENTRIES).map_err(engine(op))?;
        let mut out = Vec::new();
        let mut total: u64 = 0;
        for item in table.range((group, lo)..(group, hi)).map_err(engine(op))? {
            let (key, value) = item.map_err(engine(op))?;
            let data = value.value();
            let size = data.len() as u64;
            if let Some(max) = max_bytes {
                if !out.is_empty() && total.saturating_add(size) > max {
                    break;
                }
            }
            total = total.saturating_add(size);
            out.push((key.value().1, Bytes::copy_from_slice(data)));
        }
        Ok(out)
    }

    /// Index of the first stored entry of `group`, if any.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn first_index(&self, group: u64) -> Result<Option<u64>, StorageError> {
        self.edge_index(group, false)
    }

    /// Index of the last stored entry of `group`, if any.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn last_index(&self, group: u64) -> Result<Option<u64>, StorageError> {
        self.edge_index(group, true)
    }

    fn edge_index(&self, group: u64, last: bool) -> Result<Option<u64>, StorageError> {
        let op = if last {
            "read last index"
        } else {
            "read first index"
        };
        let txn = self.read_txn(op)?;
        let table = txn.open_table(ENTRIES).map_err(engine(op))?;
        let mut range = table
            .range((group, 0)..=(group, u64::MAX))
            .map_err(engine(op))?;
        let item = if last {
            range.next_back()
        } else {
            range.next()
        };
        match item {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item.map_err(engine(op))?;
                Ok(Some(key.value().1))
            }
        }
    }

    /// The highest `compact_to` ever written for `group` (0 if never compacted).
    ///
    /// Entries below it were deleted on purpose: a read below it is "compacted", one at or above
    /// it that finds nothing is "not written (yet)".
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn compacted_to(&self, group: u64) -> Result<u64, StorageError> {
        let op = "read compacted_to";
        let txn = self.read_txn(op)?;
        let table = txn.open_table(COMPACTED).map_err(engine(op))?;
        let value = table.get(group).map_err(engine(op))?;
        Ok(value.map_or(0, |guard| guard.value()))
    }

    /// The stored hard state of `group`.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn hard_state(&self, group: u64) -> Result<Option<Bytes>, StorageError> {
        self.get_bytes(HARD_STATE, group, "read hard state")
    }

    /// The stored conf state of `group`.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn conf_state(&self, group: u64) -> Result<Option<Bytes>, StorageError> {
        self.get_bytes(CONF_STATE, group, "read conf state")
    }

    fn get_bytes(
        &self,
        table: TableDefinition<'_, u64, &[u8]>,
        group: u64,
        op: &'static str,
    ) -> Result<Option<Bytes>, StorageError> {
        let txn = self.read_txn(op)?;
        let table = txn.open_table(table).map_err(engine(op))?;
        let value = table.get(group).map_err(engine(op))?;
        Ok(value.map(|guard| Bytes::copy_from_slice(guard.value())))
    }

    /// The latest snapshot stored for `group`, as one contiguous `Bytes`.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails; [`StorageError::Corrupt`] if the stored chunks do
    /// not add up to the recorded length.
    pub fn snapshot(&self, group: u64) -> Result<Option<SnapshotRecord>, StorageError> {
        let op = "read snapshot";
        let txn = self.read_txn(op)?;
        let meta = txn.open_table(SNAPSHOT_META).map_err(engine(op))?;
        let Some((index, term, len, chunk_size)) = meta
            .get(group)
            .map_err(engine(op))?
            .map(|guard| guard.value())
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            what: "snapshot",
            group,
            reason,
        };
        let len = usize::try_from(len)
            .map_err(|_| corrupt(format!("length {len} does not fit in memory")))?;
        let chunk_size = usize::try_from(chunk_size)
            .ok()
            .filter(|size| *size > 0)
            .ok_or_else(|| corrupt(format!("invalid chunk size {chunk_size}")))?;
        let chunks = txn.open_table(SNAPSHOT_CHUNKS).map_err(engine(op))?;
        // Check the chunk count before trusting `len` with an allocation.
        let last_chunk = match chunks
            .range((group, 0)..=(group, u64::MAX))
            .map_err(engine(op))?
            .next_back()
        {
            None => None,
            Some(item) => Some(item.map_err(engine(op))?.0.value().1),
        };
        let chunk_count = len.div_ceil(chunk_size) as u64;
        if last_chunk != chunk_count.checked_sub(1) {
            return Err(corrupt(format!(
                "{len} bytes need {chunk_count} chunks, last stored chunk is {last_chunk:?}"
            )));
        }
        let mut data = BytesMut::with_capacity(len);
        let range = chunks
            .range((group, 0)..=(group, u64::MAX))
            .map_err(engine(op))?;
        for (expected, item) in (0u64..).zip(range) {
            let (key, value) = item.map_err(engine(op))?;
            let chunk = value.value();
            let n = key.value().1;
            let remaining = len - data.len();
            if n != expected || chunk.len() != remaining.min(chunk_size) || remaining == 0 {
                return Err(corrupt(format!(
                    "chunk {n} of {} bytes does not fit (expected chunk {expected}, {remaining} \
                     of {len} bytes left, chunk size {chunk_size})",
                    chunk.len()
                )));
            }
            data.extend_from_slice(chunk);
        }
        if data.len() != len {
            return Err(corrupt(format!(
                "chunks hold {} bytes, {len} recorded",
                data.len()
            )));
        }
        Ok(Some(SnapshotRecord {
            index,
            term,
            data: data.freeze(),
        }))
    }

    /// The metadata value `key` of `group`.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn meta(&self, group: u64, key: &str) -> Result<Option<Bytes>, StorageError> {
        let op = "read meta";
        let txn = self.read_txn(op)?;
        let table = txn.open_table(META).map_err(engine(op))?;
        let value = table.get((group, key)).map_err(engine(op))?;
        Ok(value.map(|guard| Bytes::copy_from_slice(guard.value())))
    }

    /// Every group that any non-empty batch has written to, ascending.
    ///
    /// # Errors
    /// [`StorageError::Engine`] if redb fails.
    pub fn groups(&self) -> Result<Vec<u64>, StorageError> {
        let op = "read groups";
        let txn = self.read_txn(op)?;
        let table = txn.open_table(GROUPS).map_err(engine(op))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(engine(op))? {
            let (key, _) = item.map_err(engine(op))?;
            out.push(key.value());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_snapshot(len: usize) -> LogStore {
        let store = LogStore::open_in_memory().unwrap();
        let mut batch = WriteBatch::new(1);
        batch.snapshot = Some(SnapshotRecord {
            index: 5,
            term: 1,
            data: Bytes::from(vec![1u8; len]),
        });
        store.write(&[batch]).unwrap();
        store
    }

    fn tamper(store: &LogStore, f: impl FnOnce(&WriteTransaction)) {
        let txn = store.inner.db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }

    #[test]
    fn snapshot_with_a_missing_chunk_is_reported_corrupt() {
        let store = store_with_snapshot(3 * SNAPSHOT_CHUNK_BYTES);
        tamper(&store, |txn| {
            let mut chunks = txn.open_table(SNAPSHOT_CHUNKS).unwrap();
            chunks.remove((1, 1)).unwrap();
        });
        let err = store.snapshot(1).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Corrupt {
                    what: "snapshot",
                    group: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn snapshot_with_a_wrong_length_is_reported_corrupt() {
        let store = store_with_snapshot(10);
        tamper(&store, |txn| {
            let mut meta = txn.open_table(SNAPSHOT_META).unwrap();
            meta.insert(1, (5, 1, 11, SNAPSHOT_CHUNK_BYTES as u64))
                .unwrap();
        });
        assert!(matches!(
            store.snapshot(1),
            Err(StorageError::Corrupt { .. })
        ));
        tamper(&store, |txn| {
            let mut meta = txn.open_table(SNAPSHOT_META).unwrap();
            meta.insert(1, (5, 1, 10, 0)).unwrap();
        });
        assert!(matches!(
            store.snapshot(1),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_newer_layout_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let store = LogStore::open(&path, StoreOptions::default()).unwrap();
        tamper(&store, |txn| {
            let mut info = txn.open_table(INFO).unwrap();
            info.insert(FORMAT_VERSION_KEY, FORMAT_VERSION + 1).unwrap();
        });
        drop(store);
        let err = LogStore::open(&path, StoreOptions::default()).unwrap_err();
        assert_eq!(
            err,
            StorageError::FormatVersion {
                found: FORMAT_VERSION + 1,
                expected: FORMAT_VERSION
            }
        );
    }
}
