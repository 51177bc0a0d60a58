//! The Raft log as raft-rs reads it: an in-memory tail (entries after the latest snapshot, hard
//! and conf state, the snapshot itself) that every Ready updates at once, mirrored to redb by the
//! storage writer thread. raft-rs may read entries before they are durable (it only applies and
//! acknowledges what was persisted, which it learns through `on_persist_ready`).
//!
//! On disk (group `group`): entries as raft-rs `Entry` bytes, `HardState` and `ConfState` bytes,
//! the state-machine snapshot with its index and term, and metadata `snapshot_conf_state` (the
//! `ConfState` as of the snapshot) and `peers` (the address table).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use starling_proto::cluster::v1 as cpb;
use starling_storage::{LogStore, SnapshotRecord, StorageError, WriteBatch};

/// Metadata key of the `ConfState` that goes with the stored snapshot.
pub(crate) const SNAPSHOT_CONF_STATE: &str = "snapshot_conf_state";
/// Metadata key of the peer address table.
pub(crate) const PEERS: &str = "peers";
/// Index of the snapshot a new cluster's log starts after (see [`RaftStorage::bootstrap`]).
pub(crate) const BOOTSTRAP_INDEX: u64 = 1;
/// Term of that snapshot.
pub(crate) const BOOTSTRAP_INDEX_TERM: u64 = 1;

/// What raft-rs reads.
#[derive(Default)]
pub(crate) struct Core {
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    /// The latest state-machine snapshot; `metadata.index` is the compaction point.
    pub(crate) snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    pub(crate) entries: VecDeque<Entry>,
}

impl Core {
    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snap_index() + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.snap_index() + self.entries.len() as u64
    }

    pub(crate) fn term(&self, idx: u64) -> Option<u64> {
        if idx == self.snap_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        if idx < self.snap_index() || idx > self.last_index() {
            return None;
        }
        self.entries
            .get((idx - self.first_index()) as usize)
            .map(|e| e.term)
    }

    /// Appends entries, replacing any conflicting suffix.
    pub(crate) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let keep = first.index.saturating_sub(self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(ents.iter().cloned());
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub(crate) fn install(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.entries.clear();
        self.snapshot = snap;
    }

    /// Replaces the snapshot with a newer one taken locally and drops the entries it covers.
    pub(crate) fn compact(&mut self, index: u64, term: u64, conf_state: ConfState, data: Bytes) {
        let drop = (index.saturating_sub(self.snap_index())) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        let mut meta = SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data;
        self.snapshot = snap;
    }
}

/// raft-rs's view of the log of one group: the in-memory tail every Ready updates (shared between
/// raft-rs and [`RaftCore`](super::RaftCore), which updates it), loaded from and mirrored to a
/// [`LogStore`].
#[derive(Clone, Default)]
pub struct RaftStorage {
    core: Arc<RwLock<Core>>,
}

impl RaftStorage {
    pub(crate) fn rl(&self) -> RwLockReadGuard<'_, Core> {
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wl(&self) -> RwLockWriteGuard<'_, Core> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads group `group` from disk. `None` when the group has never been written.
    ///
    /// # Errors
    /// The store cannot be read, a record cannot be decoded, or the entries have a gap.
    pub fn load(store: &LogStore, group: u64) -> Result<Option<RaftStorage>, LoadError> {
        let hs = store.hard_state(group)?;
        let cs = store.conf_state(group)?;
        let snap = store.snapshot(group)?;
        if hs.is_none() && cs.is_none() && snap.is_none() {
            return Ok(None);
        }
        let mut core = Core::default();
        if let Some(b) = hs {
            core.hard_state = decode(&b)?;
        }
        if let Some(b) = cs {
            core.conf_state = decode(&b)?;
        }
        if let Some(SnapshotRecord { index, term, data }) = snap {
            let conf = match store.meta(group, SNAPSHOT_CONF_STATE)? {
                Some(b) => decode(&b)?,
                None => core.conf_state.clone(),
            };
            core.compact(index, term, conf, data);
        }
        let from = core.first_index();
        let last = store.last_index(group)?.unwrap_or(0);
        if last >= from {
            for (index, bytes) in store.entries(group, from, last + 1, None)? {
                let e: Entry = decode(&bytes)?;
                if e.index != index || index != core.last_index() + 1 {
                    return Err(LoadError::Gap(index));
                }
                core.entries.push_back(e);
            }
        }
        Ok(Some(RaftStorage {
            core: Arc::new(RwLock::new(core)),
        }))
    }

    /// A fresh log whose first configuration is `voters` (cluster bootstrap): it starts after
    /// a snapshot at index 1 (`BOOTSTRAP_INDEX`) that carries that configuration and `data` (the
    /// encoded initial state), and that snapshot counts as committed.
    ///
    /// The first configuration must be in the log's history, not only in each founder's conf
    /// state: a node added later starts empty and learns the configuration from what the leader
    /// sends it. Were the log to start at index 1, the leader would send it entries from 1 and
    /// it would never learn of the founding voters (it would count itself as the only voter and
    /// could elect itself alone). Starting after a snapshot makes the leader send that snapshot
    /// first, as TiKV does with its initial snapshot. Every founder builds the same one.
    pub fn bootstrap(voters: Vec<u64>, data: Bytes) -> RaftStorage {
        Self::starting_after(voters, BOOTSTRAP_INDEX, BOOTSTRAP_INDEX_TERM, data)
    }

    /// A fresh log that starts after a committed snapshot at `index` (of `term`) holding `data`
    /// and the configuration `voters`: a new cluster's log ([`RaftStorage::bootstrap`]), or a
    /// restored one (`starling restore`, at the backup's applied index). Nodes that start from
    /// the same one agree on the log so far and elect a leader among `voters`.
    pub fn starting_after(voters: Vec<u64>, index: u64, term: u64, data: Bytes) -> RaftStorage {
        let mut core = Core::default();
        core.conf_state.voters = voters;
        core.hard_state.term = term;
        core.hard_state.commit = index;
        let conf = core.conf_state.clone();
        core.compact(index, term, conf, data);
        RaftStorage {
            core: Arc::new(RwLock::new(core)),
        }
    }

    /// Writes this log, as built by [`RaftStorage::starting_after`], to group `group` of `store`
    /// with the peer table `peers` (encoded `PeerTable`): hard and conf state, the snapshot and
    /// the configuration that goes with it. `store` must not hold the group yet.
    ///
    /// # Errors
    /// The write fails.
    pub fn write_initial(
        &self,
        store: &LogStore,
        group: u64,
        peers: Bytes,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new(group);
        {
            let core = self.rl();
            batch.hard_state = Some(encode(&core.hard_state));
            batch.conf_state = Some(encode(&core.conf_state));
            batch
                .meta
                .push((SNAPSHOT_CONF_STATE.into(), encode(&core.conf_state)));
            let meta = core.snapshot.get_metadata();
            batch.snapshot = Some(SnapshotRecord {
                index: meta.index,
                term: meta.term,
                data: core.snapshot.data.clone(),
            });
        }
        batch.meta.push((PEERS.into(), peers));
        store.write(&[batch])
    }

    /// A fresh log with no configuration: a node waiting to be added to a cluster.
    pub fn empty() -> RaftStorage {
        RaftStorage::default()
    }

    /// Opens group `group` of `store` for node `node_id`, as a node starts: the log on disk if
    /// there is one; else, if `bootstrap` and the node is one of `configured` (the members as
    /// `(id, raft address)`), a new cluster's log whose first voters are `configured`, written to
    /// `store` at once; else an empty log (the node waits to be added). Returns the log, the peer
    /// table (the stored one, with the addresses in `configured` winning for the ids they name)
    /// and which of the three it was.
    ///
    /// # Errors
    /// The store cannot be read or written, or holds undecodable records.
    pub fn open(
        store: &LogStore,
        group: u64,
        node_id: u64,
        configured: &[(u64, String)],
        bootstrap: bool,
    ) -> Result<(RaftStorage, Vec<cpb::MemberContext>, Opened), LoadError> {
        let mut peers: Vec<cpb::MemberContext> = match store.meta(group, PEERS)? {
            Some(b) => cpb::PeerTable::decode(b)?.members,
            None => Vec::new(),
        };
        // Configured addresses win for the ids they name (addresses may change across restarts).
        for (id, addr) in configured {
            peers.retain(|p| p.node_id != *id);
            peers.push(cpb::MemberContext {
                node_id: *id,
                raft_address: addr.clone(),
                admin_address: String::new(),
            });
        }
        if let Some(s) = RaftStorage::load(store, group)? {
            return Ok((s, peers, Opened::Loaded));
        }
        if !bootstrap || !configured.iter().any(|(id, _)| *id == node_id) {
            return Ok((RaftStorage::empty(), peers, Opened::Empty));
        }
        let voters: Vec<u64> = configured.iter().map(|(id, _)| *id).collect();
        let table = cpb::PeerTable {
            members: peers.clone(),
        };
        // The initial snapshot: an empty state and the founders' addresses.
        let data = Bytes::from(
            cpb::SnapshotData {
                state: Bytes::new(),
                peers: Some(table.clone()),
            }
            .encode_to_vec(),
        );
        let s = RaftStorage::bootstrap(voters, data);
        s.write_initial(store, group, Bytes::from(table.encode_to_vec()))?;
        Ok((s, peers, Opened::Bootstrapped))
    }
}

/// What [`RaftStorage::open`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The group's log was on disk.
    Loaded,
    /// A new cluster's log was written.
    Bootstrapped,
    /// Nothing: the node waits to be added to a cluster.
    Empty,
}

/// The log on disk cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A raft-rs record cannot be decoded.
    #[error("undecodable raft record: {0}")]
    Decode(#[from] protobuf::ProtobufError),
    /// The peer table cannot be decoded.
    #[error("undecodable peer table: {0}")]
    Peers(#[from] prost::DecodeError),
    /// Entries are missing in the middle of the log.
    #[error("raft log has a gap at index {0}")]
    Gap(u64),
}

/// Whether `id` is a voter or learner (incoming or outgoing) of `cs`.
fn conf_has(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .any(|v| *v == id)
}

pub(crate) fn decode<M: protobuf::Message>(b: &[u8]) -> Result<M, protobuf::ProtobufError> {
    let mut m = M::new();
    m.merge_from_bytes(b)?;
    Ok(m)
}

pub(crate) fn encode<M: protobuf::Message>(m: &M) -> Bytes {
    Bytes::from(m.write_to_bytes().unwrap_or_default())
}

/// Adds the entries of a Ready to a write batch (truncating any conflicting suffix on disk).
pub(crate) fn persist_entries(batch: &mut WriteBatch, ents: &[Entry]) {
    if let Some(first) = ents.first() {
        batch.truncate_from = Some(first.index);
        batch.entries = ents.iter().map(|e| (e.index, encode(e))).collect();
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.rl();
        Ok(RaftState {
            hard_state: core.hard_state.clone(),
            conf_state: core.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.rl();
        if low < core.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut ents: Vec<Entry> = core
            .entries
            .range((low - offset) as usize..(high - offset) as usize)
            .cloned()
            .collect();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.rl();
        if idx < core.snap_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        core.term(idx)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let core = self.rl();
        if core.snap_index() == 0 {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = core.snapshot.clone();
        // raft-rs drops a snapshot whose configuration lacks the recipient. A node added after
        // the latest snapshot was taken is in that position: give the snapshot the current
        // configuration, which includes it (the leader only replicates to members of the
        // configuration it has applied, so that configuration is committed). The recipient then
        // replays the membership changes after the snapshot's index; each is idempotent (adding
        // a voter twice, removing a non-member are no-ops), so it ends where the leader is.
        if !conf_has(snap.get_metadata().get_conf_state(), to) {
            snap.mut_metadata().set_conf_state(core.conf_state.clone());
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = Bytes::from(format!("e{index}"));
        e
    }

    #[test]
    fn append_replaces_conflicting_suffix_and_compact_keeps_terms() {
        let s = RaftStorage::empty();
        s.wl().append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.wl().append(&[ent(2, 2)]);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        s.wl()
            .compact(1, 1, ConfState::default(), Bytes::from_static(b"state"));
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(
            s.term(1).unwrap(),
            1,
            "term of the snapshot index stays known"
        );
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert_eq!(
            s.entries(2, 3, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(s.snapshot(0, 0).unwrap().get_metadata().index, 1);
    }

    #[test]
    fn bootstrap_starts_after_a_snapshot_with_the_first_configuration() {
        let s = RaftStorage::bootstrap(vec![1, 2, 3], Bytes::from_static(b"initial"));
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
        let state = s.initial_state().unwrap();
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            (state.hard_state.term, state.hard_state.commit),
            (BOOTSTRAP_INDEX_TERM, BOOTSTRAP_INDEX)
        );
        // A node added later has nothing; what it needs from index 1 on is the snapshot, with
        // the founders in its configuration.
        assert!(matches!(
            s.entries(1, 2, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        let snap = s.snapshot(1, 4).unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (BOOTSTRAP_INDEX, BOOTSTRAP_INDEX_TERM)
        );
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(snap.data, Bytes::from_static(b"initial"));
    }

    #[test]
    fn a_snapshot_for_a_node_added_since_carries_the_current_configuration() {
        let s = RaftStorage::bootstrap(vec![1, 2, 3], Bytes::from_static(b"initial"));
        s.wl().conf_state.voters = vec![1, 2, 3, 4];
        let for_4 = s.snapshot(1, 4).unwrap();
        assert_eq!(
            for_4.get_metadata().get_conf_state().voters,
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            (for_4.get_metadata().index, for_4.data.clone()),
            (BOOTSTRAP_INDEX, Bytes::from_static(b"initial"))
        );
        // A member of the snapshot's configuration gets it as it was taken.
        let for_3 = s.snapshot(1, 3).unwrap();
        assert_eq!(for_3.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn reload_from_disk_gives_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("r.redb"), Default::default()).unwrap();
        let mut b = WriteBatch::new(1);
        persist_entries(&mut b, &[ent(1, 1), ent(2, 1), ent(3, 2)]);
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 3;
        b.hard_state = Some(encode(&hs));
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        b.conf_state = Some(encode(&cs));
        b.snapshot = Some(SnapshotRecord {
            index: 1,
            term: 1,
            data: Bytes::from_static(b"s"),
        });
        b.meta.push((SNAPSHOT_CONF_STATE.into(), encode(&cs)));
        b.compact_to = Some(2);
        store.write(&[b]).unwrap();
        let s = RaftStorage::load(&store, 1).unwrap().unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 3));
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        assert_eq!(s.snapshot(0, 0).unwrap().data, Bytes::from_static(b"s"));
        assert!(RaftStorage::load(&store, 2).unwrap().is_none());
    }
}
