//! [`Backup`]: what `GET /cluster/snapshot` exports — the node's latest stored state snapshot
//! and every entry it has applied after it, so the file holds the whole replicated state as of
//! [`Backup::applied_index`] even when the last snapshot is old.
//!
//! ```text
//!  "STARLING-BACKUP1"                      16 bytes
//!  u64 BE length, raft-rs Snapshot         metadata (index, term, conf state) + SnapshotData
//!  u64 BE count
//!  count × (u64 BE length, raft-rs Entry)  entries snapshot index + 1 ..= applied index
//! ```
//! Snapshot and entries are the bytes raft-rs (rust-protobuf) encodes; the snapshot's `data` is
//! `starling.cluster.v1.SnapshotData` (the state-machine snapshot and the peer table).

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{Entry, Snapshot};

use crate::raft::storage::{decode, encode};

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 16] = b"STARLING-BACKUP1";

/// A decoded (or to be encoded) backup.
#[derive(Clone, Debug, Default)]
pub struct Backup {
    /// The stored snapshot (raft-rs `Snapshot`).
    pub snapshot: Snapshot,
    /// Entries after it, contiguous, all applied on the exporting node.
    pub entries: Vec<Entry>,
}

/// A file is not a backup.
#[derive(Debug, thiserror::Error)]
#[error("not a Starling backup: {0}")]
pub struct BackupError(String);

impl Backup {
    /// Index the snapshot covers.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// Term of the snapshot's index.
    pub fn snapshot_term(&self) -> u64 {
        self.snapshot.get_metadata().term
    }

    /// The last index the backup covers.
    pub fn applied_index(&self) -> u64 {
        self.entries
            .last()
            .map_or_else(|| self.snapshot_index(), |e| e.index)
    }

    /// The file's bytes.
    pub fn encode(&self) -> Bytes {
        let snap = encode(&self.snapshot);
        let mut out = BytesMut::with_capacity(MAGIC.len() + 16 + snap.len());
        out.put_slice(MAGIC);
        out.put_u64(snap.len() as u64);
        out.put_slice(&snap);
        out.put_u64(self.entries.len() as u64);
        for e in &self.entries {
            let b = encode(e);
            out.put_u64(b.len() as u64);
            out.put_slice(&b);
        }
        out.freeze()
    }

    /// Parses a file.
    ///
    /// # Errors
    /// Wrong magic, truncated sections, undecodable snapshot or entries, a gap in the entries.
    pub fn decode(mut b: &[u8]) -> Result<Backup, BackupError> {
        let err = |s: &str| BackupError(s.to_string());
        if b.len() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
            return Err(err("wrong magic"));
        }
        b = &b[MAGIC.len()..];
        let section = |b: &mut &[u8]| -> Result<Vec<u8>, BackupError> {
            let n = take_u64(b).ok_or_else(|| err("truncated length"))? as usize;
            if b.len() < n {
                return Err(err("truncated section"));
            }
            let (head, tail) = b.split_at(n);
            *b = tail;
            Ok(head.to_vec())
        };
        let snapshot: Snapshot =
            decode(&section(&mut b)?).map_err(|e| BackupError(e.to_string()))?;
        let count = take_u64(&mut b).ok_or_else(|| err("truncated entry count"))?;
        let mut entries: Vec<Entry> = Vec::new();
        let first = snapshot.get_metadata().index + 1;
        for next in (first..).take(count as usize) {
            let e: Entry = decode(&section(&mut b)?).map_err(|e| BackupError(e.to_string()))?;
            if e.index != next {
                return Err(BackupError(format!(
                    "entry {} where {next} was expected",
                    e.index
                )));
            }
            entries.push(e);
        }
        if !b.is_empty() {
            return Err(err("trailing bytes"));
        }
        Ok(Backup { snapshot, entries })
    }
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    let (head, tail) = b.split_first_chunk::<8>()?;
    *b = tail;
    Some(u64::from_be_bytes(*head))
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_damage() {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 7;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snapshot.data = Bytes::from_static(b"state");
        let entries = (8..11)
            .map(|i| {
                let mut e = Entry::default();
                e.index = i;
                e.term = 2;
                e.data = Bytes::from(vec![i as u8; 3]);
                e
            })
            .collect();
        let b = Backup { snapshot, entries };
        let bytes = b.encode();
        let d = Backup::decode(&bytes).unwrap();
        assert_eq!((d.snapshot_index(), d.snapshot_term()), (7, 2));
        assert_eq!(d.applied_index(), 10);
        assert_eq!(d.snapshot.data, Bytes::from_static(b"state"));
        assert_eq!(d.entries[2].data, Bytes::from(vec![10u8; 3]));
        assert!(Backup::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Backup::decode(b"STARLING-BACKUP0").is_err());
    }
}
