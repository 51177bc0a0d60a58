//! What one write carries for one Raft group: [`WriteBatch`] and [`SnapshotRecord`].

use bytes::Bytes;

use crate::error::StorageError;

/// A state-machine snapshot as stored: the log position it covers and its opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotRecord {
    /// Index of the last log entry the snapshot includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The encoded state (opaque to this crate).
    pub data: Bytes,
}

/// Everything to write for one group in one commit.
///
/// The parts are applied in this order inside the transaction:
///
/// 1. `truncate_from`: delete entries with index `>= truncate_from` (Raft log conflict);
/// 2. `entries`: put these (indexes contiguous and ascending, replacing what is there);
/// 3. `hard_state`, `conf_state`: replace the stored values;
/// 4. `snapshot`: replace the stored snapshot of the group;
/// 5. `compact_to`: delete entries with index `< compact_to` and remember the highest value
///    (see [`LogStore::compacted_to`](crate::LogStore::compacted_to));
/// 6. `meta`: put these small named values.
///
/// All of it is atomic with every other batch of the same [`LogStore::write`](crate::LogStore::write)
/// call (or of the same writer group commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The Raft group this batch belongs to.
    pub group: u64,
    /// First, delete entries with index `>=` this.
    pub truncate_from: Option<u64>,
    /// Then put these entries; indexes must be contiguous and ascending.
    pub entries: Vec<(u64, Bytes)>,
    /// Replaces the stored hard state.
    pub hard_state: Option<Bytes>,
    /// Replaces the stored conf state.
    pub conf_state: Option<Bytes>,
    /// Replaces the stored snapshot of the group.
    pub snapshot: Option<SnapshotRecord>,
    /// Delete entries with index `<` this.
    pub compact_to: Option<u64>,
    /// Small named values (e.g. the applied index), replaced by name.
    pub meta: Vec<(String, Bytes)>,
}

impl WriteBatch {
    /// An empty batch for `group`.
    pub fn new(group: u64) -> Self {
        WriteBatch {
            group,
            ..WriteBatch::default()
        }
    }

    /// Whether the batch would write nothing.
    pub fn is_empty(&self) -> bool {
        self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && self.snapshot.is_none()
            && self.compact_to.is_none()
            && self.meta.is_empty()
    }

    /// Approximate size of what the batch writes, in bytes: payloads plus a fixed cost per key.
    ///
    /// Used for the writer's group-commit cap and its byte counter; not an exact on-disk size.
    pub fn approx_bytes(&self) -> usize {
        const KEY: usize = 16;
        let entries: usize = self.entries.iter().map(|(_, data)| KEY + data.len()).sum();
        let meta: usize = self
            .meta
            .iter()
            .map(|(name, value)| KEY + name.len() + value.len())
            .sum();
        let state = |value: &Option<Bytes>| value.as_ref().map_or(0, |v| KEY + v.len());
        let snapshot = self
            .snapshot
            .as_ref()
            .map_or(0, |snap| 4 * KEY + snap.data.len());
        let ops = [self.truncate_from, self.compact_to]
            .iter()
            .filter(|op| op.is_some())
            .count()
            * KEY;
        entries + meta + state(&self.hard_state) + state(&self.conf_state) + snapshot + ops
    }

    /// Checks the rules a batch must follow, without touching the store.
    ///
    /// # Errors
    /// [`StorageError::InvalidBatch`] when the entry indexes are not contiguous and ascending.
    pub(crate) fn validate(&self) -> Result<(), StorageError> {
        for pair in self.entries.windows(2) {
            let (prev, next) = (pair[0].0, pair[1].0);
            if prev.checked_add(1) != Some(next) {
                return Err(StorageError::InvalidBatch {
                    group: self.group,
                    reason: format!(
                        "entry indexes must be contiguous and ascending, found {prev} then {next}"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_batch_is_empty_and_small() {
        let batch = WriteBatch::new(7);
        assert_eq!(batch.group, 7);
        assert!(batch.is_empty());
        assert_eq!(batch.approx_bytes(), 0);
    }

    #[test]
    fn any_part_makes_a_batch_non_empty() {
        let parts: Vec<fn(&mut WriteBatch)> = vec![
            |b| b.truncate_from = Some(1),
            |b| b.entries.push((1, Bytes::from_static(b"x"))),
            |b| b.hard_state = Some(Bytes::new()),
            |b| b.conf_state = Some(Bytes::new()),
            |b| b.snapshot = Some(SnapshotRecord::default()),
            |b| b.compact_to = Some(1),
            |b| b.meta.push(("k".into(), Bytes::new())),
        ];
        for set in parts {
            let mut batch = WriteBatch::new(1);
            set(&mut batch);
            assert!(!batch.is_empty(), "{batch:?}");
            assert!(batch.approx_bytes() > 0, "{batch:?}");
        }
    }

    #[test]
    fn approx_bytes_counts_payloads() {
        let mut batch = WriteBatch::new(1);
        batch.entries = (1..=10).map(|i| (i, Bytes::from(vec![0; 100]))).collect();
        assert!(batch.approx_bytes() >= 1000);
        assert!(batch.approx_bytes() < 1500);
    }

    #[test]
    fn validate_rejects_gaps_and_descending_indexes() {
        let mut batch = WriteBatch::new(3);
        batch.entries = vec![(5, Bytes::new()), (6, Bytes::new()), (7, Bytes::new())];
        assert!(batch.validate().is_ok());
        batch.entries = vec![(5, Bytes::new()), (7, Bytes::new())];
        assert!(matches!(
            batch.validate(),
            Err(StorageError::InvalidBatch { group: 3, .. })
        ));
        batch.entries = vec![(5, Bytes::new()), (4, Bytes::new())];
        assert!(batch.validate().is_err());
        batch.entries = vec![(u64::MAX, Bytes::new()), (0, Bytes::new())];
        assert!(batch.validate().is_err());
    }
}
