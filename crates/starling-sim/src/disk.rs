//! A node's simulated disk: a real [`LogStore`] (redb, in memory) that holds what was made
//! durable, and the writes submitted but not yet durable, which a crash loses.

use std::collections::VecDeque;

use starling_storage::{LogStore, StorageError, WriteBatch};

/// A node's disk.
pub struct SimDisk {
    /// What is durable.
    store: LogStore,
    /// Writes submitted and not yet durable, in order: (write number, batch).
    pending: VecDeque<(u64, WriteBatch)>,
}

impl SimDisk {
    /// An empty disk.
    ///
    /// # Panics
    /// redb cannot create an in-memory database.
    pub fn new() -> SimDisk {
        SimDisk {
            store: LogStore::open_in_memory().expect("an in-memory store"),
            pending: VecDeque::new(),
        }
    }

    /// The durable store (what a restarted process reads).
    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// A write submitted.
    pub fn submit(&mut self, seq: u64, batch: WriteBatch) {
        self.pending.push_back((seq, batch));
    }

    /// Every pending write becomes durable in one commit (the writer's group commit): the
    /// number of the last one (`None` if nothing was pending).
    ///
    /// # Errors
    /// The store refused them.
    pub fn complete(&mut self) -> Option<Result<u64, StorageError>> {
        let last = self.pending.back()?.0;
        let batches: Vec<WriteBatch> = self.pending.drain(..).map(|(_, b)| b).collect();
        Some(self.store.write(&batches).map(|()| last))
    }

    /// The process crashed: what was not durable is lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.len();
        self.pending.clear();
        lost
    }

    /// Writes waiting to be durable.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The disk is replaced by an empty one (disk loss).
    pub fn wipe(&mut self) {
        *self = SimDisk::new();
    }
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}
