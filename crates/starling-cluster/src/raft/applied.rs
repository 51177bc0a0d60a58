//! Keeping raft-rs's applied index in step with a snapshot installed from the leader.
//!
//! The Raft actor hands a received snapshot to the session store while it handles the Ready
//! (the store restores it) and replaces its in-memory log with it. raft-rs, though, still counts
//! as applied only what the actor last told it (`advance_apply_to` after committed entries), so
//! until the next entry commits and is applied its applied index points before the snapshot, at
//! entries the log no longer has. Once the snapshot is persisted raft-rs stops covering for that
//! with the unstable snapshot; a campaign then (the leader died right after sending the snapshot)
//! reads the "unapplied" entries from its applied index and raft-rs panics ("unexpected error
//! getting unapplied entries ...: Store(Compacted)"): the Raft actor is gone and the node refuses
//! every commit from then on while its process keeps running. So after each persisted Ready the
//! applied index is advanced to what the actor has applied, snapshots included.

use raft::RawNode;

/// Tells raft-rs that everything up to `applied` (the actor's applied index, a snapshot's index
/// after one was installed) is applied, as far as it is committed and persisted.
pub(crate) fn advance_applied<S: raft::Storage>(raw: &mut RawNode<S>, applied: u64) {
    let log = &raw.raft.raft_log;
    let to = applied.min(log.committed).min(log.persisted);
    if to > log.applied {
        raw.advance_apply_to(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::RaftStorage;
    use bytes::Bytes;
    use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};

    /// Node 2 of {1, 2, 3}, fresh from bootstrap, receives a snapshot at index 10 from leader
    /// 1 and handles it as the Raft actor does; returns it with the snapshot persisted.
    fn follower_after_snapshot() -> (RawNode<RaftStorage>, RaftStorage) {
        let storage = RaftStorage::bootstrap(vec![1, 2, 3], Bytes::from_static(b"initial"));
        let config = raft::Config {
            id: 2,
            election_tick: 10,
            heartbeat_tick: 2,
            applied: 1,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&config, storage.clone(), &logger).unwrap();
        let mut meta = SnapshotMetadata::default();
        meta.index = 10;
        meta.term = 2;
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        meta.set_conf_state(cs);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = Bytes::from_static(b"state at 10");
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.term = 2;
        m.set_snapshot(snap);
        raw.step(m).unwrap();
        let rd = raw.ready();
        assert!(!rd.snapshot().is_empty());
        storage.wl().install(rd.snapshot().clone());
        let number = rd.number();
        raw.advance_append_async(rd);
        raw.on_persist_ready(number);
        (raw, storage)
    }

    #[test]
    fn without_it_a_campaign_after_a_snapshot_panics() {
        let (mut raw, _storage) = follower_after_snapshot();
        let campaign = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.campaign()));
        assert!(
            campaign.is_err(),
            "raft-rs reads entries the snapshot replaced"
        );
    }

    #[test]
    fn applied_follows_an_installed_snapshot_so_a_campaign_works() {
        let (mut raw, _storage) = follower_after_snapshot();
        advance_applied(&mut raw, 10);
        assert_eq!(raw.raft.raft_log.applied, 10);
        raw.campaign().unwrap();
        // Nothing beyond what is committed and persisted, and never backwards.
        advance_applied(&mut raw, 50);
        assert_eq!(raw.raft.raft_log.applied, 10);
        advance_applied(&mut raw, 3);
        assert_eq!(raw.raft.raft_log.applied, 10);
    }
}
