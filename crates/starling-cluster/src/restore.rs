//! `starling restore`: turns a [`Backup`] (what `GET /cluster/snapshot` exports) into a node's
//! storage, offline, the way `etcdctl snapshot restore` does.
//!
//! ```text
//!  Backup ──▶ State::decode_snapshot(snapshot) ──▶ apply_encoded(entry) … ──▶ state at the
//!             backup's applied index I (term T of entry I)
//!        ──▶ sessions still connected through nodes that are not members any more are handed
//!            to the lowest member (its start takes them offline, see below)
//!        ──▶ clustered: a Raft log that starts after a committed snapshot (I, T) whose
//!            configuration is the *configured* members (`cluster.peers`), with their addresses
//!            single node: the local log's snapshot at I
//!        ──▶ written to `starling.redb.restore`, then renamed over `starling.redb`
//! ```
//! Every node of the new cluster runs it with the same backup and the same `cluster.peers`, so
//! every node holds the same snapshot at the same index and term: started, they agree on the log,
//! elect a leader among the configured members and serve the restored state.
//!
//! Sessions that were connected when the backup was taken come back as sessions connected
//! through the node that restored them (their owner ids, or the lowest member for owners that
//! are not members). A node that starts and finds sessions connected through itself proposes
//! `NodeDown` for itself (as after a crash): they go offline and their wills are published once,
//! through the log.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::EntryType;
use starling_proto::cluster::v1 as cpb;
use starling_state::{pb, State, StateStats};
use starling_storage::{FsyncPolicy, LogStore, SnapshotRecord, StoreOptions, WriteBatch};

use crate::backup::Backup;
use crate::local::DB_FILE;
use crate::raft::storage::RaftStorage;
use crate::STATE_GROUP;

/// Where the restored state goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A node of a cluster whose members are `peers` (`id`, peer address), this node included.
    Cluster {
        /// This node.
        node_id: u64,
        /// Every member of the new cluster with its peer address (`cluster.peers`).
        peers: Vec<(u64, String)>,
    },
    /// A single node (the local log).
    Single,
}

impl Target {
    /// Member ids, ascending.
    fn members(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = match self {
            Target::Cluster { peers, .. } => peers.iter().map(|(id, _)| *id).collect(),
            Target::Single => vec![1],
        };
        ids.sort_unstable();
        ids
    }
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The database file written.
    pub path: PathBuf,
    /// Index of the restored snapshot (the backup's applied index).
    pub index: u64,
    /// Its term (0 on a single node).
    pub term: u64,
    /// Counts of the restored state.
    pub stats: StateStats,
    /// Digest of the restored state (as `/cluster/status` shows it once the node runs).
    pub digest: u64,
    /// Sessions connected through nodes that are not members, handed to the lowest member.
    pub reassigned: usize,
    /// Entries of the backup that were not batches of commands and were skipped (they were
    /// skipped when the cluster applied them too).
    pub undecodable: Vec<u64>,
}

/// A restore refused or failed; nothing was written (an earlier database is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup cannot be used.
    #[error("{0}")]
    Backup(String),
    /// The data directory holds something and `force` was not given.
    #[error(
        "data directory {0} is not empty; restore into an empty directory, or pass --force to \
         replace its database"
    )]
    NotEmpty(PathBuf),
    /// The configuration does not describe a cluster this node can be restored into.
    #[error("{0}")]
    Config(String),
    /// Reading the directory, writing the database.
    #[error("{0}")]
    Io(String),
}

/// The state as of `backup`'s applied index: the snapshot's state with every entry after it
/// applied, through the same [`State`] code the session store runs.
///
/// Also returns the indexes of entries that were skipped because they are not command batches.
///
/// # Errors
/// The snapshot's data is not a `SnapshotData` holding a state snapshot.
pub fn rebuild_state(backup: &Backup) -> Result<(State, Vec<u64>), RestoreError> {
    let data = cpb::SnapshotData::decode(backup.snapshot.data.clone())
        .map_err(|e| RestoreError::Backup(format!("backup snapshot data: {e}")))?;
    let mut state = State::decode_snapshot(data.state)
        .map_err(|e| RestoreError::Backup(format!("backup snapshot state: {e}")))?;
    state.skip(backup.snapshot_index());
    let mut effects = Vec::new();
    let mut undecodable = Vec::new();
    for e in &backup.entries {
        // What the Raft actor hands the session store: normal entries' bytes, nothing for
        // membership changes.
        let data: &[u8] = match e.get_entry_type() {
            EntryType::EntryNormal => &e.data,
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => &[],
        };
        if state.apply_encoded(e.index, data, &mut effects).is_err() {
            undecodable.push(e.index);
        }
        // Replies, deliveries and kicks are for connections of the old cluster.
        effects.clear();
    }
    Ok((state, undecodable))
}

/// Hands sessions connected through a node that is not in `members` to the lowest member
/// (deterministic: every node restoring the same backup with the same members does the same).
/// Returns the state's snapshot encoding and how many sessions moved.
fn reassign_owners(state: &State, members: &[u64]) -> (Bytes, usize) {
    let mut snap = state.to_snapshot();
    let to = members.first().copied().unwrap_or(1);
    let mut moved = 0;
    for s in snap.sessions.iter_mut().filter(|s| s.connected) {
        if !members.contains(&s.owner_node) {
            s.owner_node = to;
            moved += 1;
        }
    }
    for c in &mut snap.clean_sessions {
        if !members.contains(&c.owner_node) {
            c.owner_node = to;
            moved += 1;
        }
    }
    (Bytes::from(pb::Snapshot::encode_to_vec(&snap)), moved)
}

/// Whether `dir` holds anything (a volume's `lost+found` does not count).
fn is_empty_dir(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(|e| RestoreError::Io(format!("{}: {e}", dir.display())))?;
                if e.file_name() != "lost+found" {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(RestoreError::Io(format!("{}: {e}", dir.display()))),
    }
}

/// Restores `backup` into the data directory `dir` for `target` (the replicated limits come
/// with the backup's state).
///
/// The directory must be empty unless `force`, which replaces its database (other files stay).
/// The new database is written beside it and renamed over it only once complete.
///
/// # Errors
/// A backup without state, a configuration without this node among the members, a non-empty
/// directory without `force`, a database in use by a running node, IO errors.
pub fn restore(
    backup: &Backup,
    dir: &Path,
    target: &Target,
    force: bool,
) -> Result<Restored, RestoreError> {
    if let Target::Cluster { node_id, peers } = target {
        if !peers.iter().any(|(id, _)| id == node_id) {
            return Err(RestoreError::Config(format!(
                "node {node_id} is not among the configured cluster members (cluster.peers / \
                 --peers): restore each member of the new cluster with the same peer list"
            )));
        }
    }
    if backup.snapshot_index() == 0 {
        return Err(RestoreError::Backup(
            "the backup holds no state (it was exported by a node that had not joined a \
             cluster yet)"
                .into(),
        ));
    }
    if !force && !is_empty_dir(dir)? {
        return Err(RestoreError::NotEmpty(dir.to_path_buf()));
    }
    let index = backup.applied_index();
    let term = backup
        .entries
        .last()
        .map_or_else(|| backup.snapshot_term(), |e| e.term);
    let (state, undecodable) = rebuild_state(backup)?;
    let members = target.members();
    let (state_bytes, reassigned) = reassign_owners(&state, &members);
    let stats = state.stats();
    // The state the node starts with (owners reassigned).
    let digest = State::decode_snapshot(state_bytes.clone())
        .map_err(|e| RestoreError::Backup(e.to_string()))?
        .digest();

    std::fs::create_dir_all(dir)
        .map_err(|e| RestoreError::Io(format!("{}: {e}", dir.display())))?;
    let path = dir.join(DB_FILE);
    let io =
        |e: &dyn std::fmt::Display, p: &Path| RestoreError::Io(format!("{}: {e}", p.display()));
    if path.exists() {
        // A node still running holds the database open (and locked): refuse rather than
        // replace a live node's log.
        drop(LogStore::open(&path, StoreOptions::default()).map_err(|e| {
            RestoreError::Io(format!(
                "{}: {e} (is the node still running? stop it first)",
                path.display()
            ))
        })?);
    }
    let tmp = dir.join(format!("{DB_FILE}.restore"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&e, &tmp)),
    }
    let term = match write_new(&tmp, target, &members, index, term, state_bytes) {
        Ok(term) => term,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&e, &tmp));
        }
    };
    std::fs::rename(&tmp, &path).map_err(|e| io(&e, &path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // The rename is durable once the directory is.
        let _ = d.sync_all();
    }
    Ok(Restored {
        path,
        index,
        term,
        stats,
        digest,
        reassigned,
        undecodable,
    })
}

/// Writes the new database at `path`: for a cluster member, a Raft log starting after a snapshot
/// at (`index`, `term`) holding `state` and the configured members; for a single node, the local
/// log's snapshot at `index`. Returns the term written (0 on a single node).
fn write_new(
    path: &Path,
    target: &Target,
    members: &[u64],
    index: u64,
    term: u64,
    state: Bytes,
) -> Result<u64, starling_storage::StorageError> {
    let store = LogStore::open(
        path,
        StoreOptions {
            fsync: FsyncPolicy::Always,
        },
    )?;
    match target {
        Target::Cluster { peers, .. } => {
            let table = cpb::PeerTable {
                members: peers
                    .iter()
                    .map(|(id, addr)| cpb::MemberContext {
                        node_id: *id,
                        raft_address: addr.clone(),
                        admin_address: String::new(),
                    })
                    .collect(),
            };
            let data = Bytes::from(
                cpb::SnapshotData {
                    state,
                    peers: Some(table.clone()),
                }
                .encode_to_vec(),
            );
            let log = RaftStorage::starting_after(members.to_vec(), index, term, data);
            log.write_initial(&store, STATE_GROUP, Bytes::from(table.encode_to_vec()))?;
            Ok(term)
        }
        Target::Single => {
            let mut batch = WriteBatch::new(STATE_GROUP);
            batch.snapshot = Some(SnapshotRecord {
                index,
                term: 0,
                data: state,
            });
            store.write(&[batch])?;
            Ok(0)
        }
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, Snapshot};

    fn batch(node: u64, kind: pb::command::Kind) -> Bytes {
        Bytes::from(
            pb::Batch {
                node_id: node,
                incarnation: 1,
                timestamp_ms: 1_000,
                commands: vec![pb::Command {
                    request_id: 0,
                    kind: Some(kind),
                }],
            }
            .encode_to_vec(),
        )
    }

    fn entry(index: u64, term: u64, data: Bytes) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data;
        e
    }

    /// A backup of a bootstrapped cluster (empty state at index 1) and three entries: a
    /// retained publish, an empty leader entry, a persistent session connected through node 7.
    fn sample() -> Backup {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 1;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().mut_conf_state().voters = vec![5, 6, 7];
        snapshot.data = Bytes::from(
            cpb::SnapshotData {
                state: Bytes::new(),
                peers: None,
            }
            .encode_to_vec(),
        );
        let retained = pb::command::Kind::Publish(pb::Publish {
            message: Some(pb::AppMessage {
                topic: "r/1".into(),
                payload: Bytes::from_static(b"kept"),
                qos: 1,
                retain: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let connect = pb::command::Kind::Connect(pb::SessionConnect {
            client_id: "c1".into(),
            clean_session: false,
            node_id: 7,
            connection_id: 3,
            ..Default::default()
        });
        Backup {
            snapshot,
            entries: vec![
                entry(2, 2, batch(5, retained)),
                entry(3, 3, Bytes::new()),
                entry(4, 3, batch(7, connect)),
            ],
        }
    }

    #[test]
    fn rebuilds_the_state_through_the_state_machine() {
        let (state, skipped) = rebuild_state(&sample()).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(state.applied_index(), 4);
        assert_eq!(state.stats().retained_messages, 1);
        assert_eq!(
            state.session("c1").and_then(|s| s.owner).map(|o| o.node),
            Some(7)
        );
    }

    #[test]
    fn writes_a_log_that_starts_after_the_backup_with_the_new_members() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Cluster {
            node_id: 2,
            peers: vec![(1, "a:1".into()), (2, "b:1".into()), (3, "c:1".into())],
        };
        let r = restore(&sample(), dir.path(), &target, false).unwrap();
        assert_eq!((r.index, r.term, r.reassigned), (4, 3, 1));
        let store = LogStore::open(&dir.path().join(DB_FILE), StoreOptions::default()).unwrap();
        let log = RaftStorage::load(&store, STATE_GROUP).unwrap().unwrap();
        let core = log.rl();
        assert_eq!((core.first_index(), core.last_index()), (5, 4));
        assert_eq!(core.conf_state.voters, vec![1, 2, 3]);
        assert_eq!((core.hard_state.term, core.hard_state.commit), (3, 4));
        let data = cpb::SnapshotData::decode(core.snapshot.data.clone()).unwrap();
        let members: Vec<u64> = data
            .peers
            .unwrap()
            .members
            .iter()
            .map(|m| m.node_id)
            .collect();
        assert_eq!(members, vec![1, 2, 3]);
        let state = State::decode_snapshot(data.state).unwrap();
        assert_eq!(state.applied_index(), 4);
        // Node 7 is gone: its session is node 1's to take offline.
        assert!(state.has_sessions_on(1));
        drop(core);
        drop(store);

        // The directory now holds a database.
        assert!(matches!(
            restore(&sample(), dir.path(), &target, false),
            Err(RestoreError::NotEmpty(_))
        ));
        restore(&sample(), dir.path(), &target, true).unwrap();
    }

    #[test]
    fn single_node_gets_the_local_logs_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let r = restore(&sample(), dir.path(), &Target::Single, false).unwrap();
        assert_eq!(r.index, 4);
        let store = LogStore::open(&dir.path().join(DB_FILE), StoreOptions::default()).unwrap();
        let snap = store.snapshot(STATE_GROUP).unwrap().unwrap();
        assert_eq!(snap.index, 4);
        let state = State::decode_snapshot(snap.data).unwrap();
        assert!(state.has_sessions_on(1));
        assert_eq!(state.stats().retained_messages, 1);
    }

    #[test]
    fn refuses_a_node_outside_the_members() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Cluster {
            node_id: 4,
            peers: vec![(1, "a:1".into())],
        };
        assert!(matches!(
            restore(&sample(), dir.path(), &target, false),
            Err(RestoreError::Config(_))
        ));
    }
}
