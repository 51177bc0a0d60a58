//! Storage conformance suite: the same checks run against a file store with each fsync policy
//! and against the in-memory store, plus reopen checks for the file store.

use bytes::Bytes;
use starling_storage::{
    FsyncPolicy, LogStore, SnapshotRecord, StorageError, StoreOptions, WriteBatch,
};

/// A store under test; keeps its temp dir alive.
struct Fixture {
    store: LogStore,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn file(fsync: FsyncPolicy) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open(&dir.path().join("node.redb"), StoreOptions { fsync })
            .expect("open file store");
        Fixture {
            store,
            _dir: Some(dir),
        }
    }

    fn memory() -> Fixture {
        Fixture {
            store: LogStore::open_in_memory().expect("open in-memory store"),
            _dir: None,
        }
    }
}

/// Payload of entry `index` as written under `tag`, so that rewrites are distinguishable.
fn payload(tag: &str, index: u64) -> Bytes {
    Bytes::from(format!("{tag}-entry-{index}"))
}

fn batch_with_entries(group: u64, tag: &str, indexes: std::ops::RangeInclusive<u64>) -> WriteBatch {
    let mut batch = WriteBatch::new(group);
    batch.entries = indexes.map(|i| (i, payload(tag, i))).collect();
    batch
}

fn append(store: &LogStore, group: u64, tag: &str, indexes: std::ops::RangeInclusive<u64>) {
    store
        .write(&[batch_with_entries(group, tag, indexes)])
        .expect("append");
}

fn indexes(entries: &[(u64, Bytes)]) -> Vec<u64> {
    entries.iter().map(|(i, _)| *i).collect()
}

fn all_entries(store: &LogStore, group: u64) -> Vec<(u64, Bytes)> {
    store.entries(group, 0, u64::MAX, None).expect("entries")
}

/// Bytes that are not all the same, of length `len`, seeded by `seed`.
fn pattern(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------------------------------------
// The suite: each function gets a fresh, empty store.

fn empty_store_reads_nothing(store: &LogStore) {
    assert_eq!(store.first_index(1).unwrap(), None);
    assert_eq!(store.last_index(1).unwrap(), None);
    assert!(store.entries(1, 0, u64::MAX, None).unwrap().is_empty());
    assert_eq!(store.hard_state(1).unwrap(), None);
    assert_eq!(store.conf_state(1).unwrap(), None);
    assert_eq!(store.snapshot(1).unwrap(), None);
    assert_eq!(store.meta(1, "applied").unwrap(), None);
    assert_eq!(store.compacted_to(1).unwrap(), 0);
    assert!(store.groups().unwrap().is_empty());
    // Empty batches commit nothing and create no group.
    store.write(&[]).unwrap();
    store.write(&[WriteBatch::new(9)]).unwrap();
    assert!(store.groups().unwrap().is_empty());
}

fn append_and_read_ranges(store: &LogStore) {
    append(store, 1, "a", 1..=40);
    append(store, 1, "a", 41..=100);
    assert_eq!(store.first_index(1).unwrap(), Some(1));
    assert_eq!(store.last_index(1).unwrap(), Some(100));

    let all = all_entries(store, 1);
    assert_eq!(indexes(&all), (1..=100).collect::<Vec<_>>());
    for (i, data) in &all {
        assert_eq!(data, &payload("a", *i));
    }
    assert_eq!(
        indexes(&store.entries(1, 10, 20, None).unwrap()),
        (10..20).collect::<Vec<_>>()
    );
    assert_eq!(
        indexes(&store.entries(1, 100, 101, None).unwrap()),
        vec![100]
    );
    assert_eq!(
        indexes(&store.entries(1, 95, 1000, None).unwrap()),
        (95..=100).collect::<Vec<_>>()
    );
    assert!(store.entries(1, 20, 20, None).unwrap().is_empty());
    assert!(store.entries(1, 30, 20, None).unwrap().is_empty());
    assert!(store.entries(1, 101, 200, None).unwrap().is_empty());
    assert!(store.entries(1, 0, 1, None).unwrap().is_empty());
}

fn entries_can_start_anywhere_and_hold_any_bytes(store: &LogStore) {
    let mut batch = WriteBatch::new(4);
    batch.entries = vec![
        (1_000_000, Bytes::new()),
        (1_000_001, Bytes::from(vec![0u8; 70_000])),
        (1_000_002, pattern(3, 5)),
    ];
    store.write(&[batch.clone()]).unwrap();
    assert_eq!(store.first_index(4).unwrap(), Some(1_000_000));
    assert_eq!(store.entries(4, 0, u64::MAX, None).unwrap(), batch.entries);

    let mut top = WriteBatch::new(5);
    top.entries = vec![(u64::MAX - 1, pattern(1, 3)), (u64::MAX, pattern(2, 3))];
    store.write(&[top.clone()]).unwrap();
    assert_eq!(store.last_index(5).unwrap(), Some(u64::MAX));
    // `hi` is exclusive, so u64::MAX itself is out of any range's reach but `last_index` sees it.
    assert_eq!(
        store.entries(5, 0, u64::MAX, None).unwrap(),
        top.entries[..1]
    );
}

fn overwriting_entries_replaces_them(store: &LogStore) {
    append(store, 1, "old", 1..=10);
    append(store, 1, "new", 5..=7);
    let all = all_entries(store, 1);
    assert_eq!(indexes(&all), (1..=10).collect::<Vec<_>>());
    for (i, data) in &all {
        let tag = if (5..=7).contains(i) { "new" } else { "old" };
        assert_eq!(data, &payload(tag, *i), "entry {i}");
    }
}

fn truncate_from_removes_the_tail(store: &LogStore) {
    append(store, 1, "a", 1..=10);

    // Conflict: entries 6.. are replaced by a shorter, different tail.
    let mut batch = batch_with_entries(1, "b", 6..=8);
    batch.truncate_from = Some(6);
    store.write(&[batch]).unwrap();
    assert_eq!(store.last_index(1).unwrap(), Some(8));
    let all = all_entries(store, 1);
    assert_eq!(indexes(&all), (1..=8).collect::<Vec<_>>());
    for (i, data) in &all {
        let tag = if *i >= 6 { "b" } else { "a" };
        assert_eq!(data, &payload(tag, *i));
    }

    // Truncation alone.
    let mut batch = WriteBatch::new(1);
    batch.truncate_from = Some(4);
    store.write(&[batch]).unwrap();
    assert_eq!(store.last_index(1).unwrap(), Some(3));

    // Truncating past the end is a no-op; truncating everything empties the log.
    let mut batch = WriteBatch::new(1);
    batch.truncate_from = Some(100);
    store.write(&[batch]).unwrap();
    assert_eq!(store.last_index(1).unwrap(), Some(3));
    let mut batch = WriteBatch::new(1);
    batch.truncate_from = Some(0);
    store.write(&[batch]).unwrap();
    assert_eq!(store.first_index(1).unwrap(), None);
    assert_eq!(store.last_index(1).unwrap(), None);
}

fn truncate_applies_before_the_new_entries(store: &LogStore) {
    append(store, 1, "a", 1..=5);
    // Truncating at 3 and writing 3..=4 in the same batch keeps the new entries.
    let mut batch = batch_with_entries(1, "b", 3..=4);
    batch.truncate_from = Some(3);
    store.write(&[batch]).unwrap();
    assert_eq!(indexes(&all_entries(store, 1)), vec![1, 2, 3, 4]);
    assert_eq!(store.entries(1, 3, 4, None).unwrap()[0].1, payload("b", 3));
}

fn compact_to_removes_the_head(store: &LogStore) {
    append(store, 1, "a", 1..=10);
    let mut batch = WriteBatch::new(1);
    batch.compact_to = Some(5);
    store.write(&[batch]).unwrap();
    assert_eq!(store.first_index(1).unwrap(), Some(5));
    assert_eq!(store.last_index(1).unwrap(), Some(10));
    assert_eq!(store.compacted_to(1).unwrap(), 5);
    // A compacted range returns what exists.
    assert_eq!(
        indexes(&store.entries(1, 1, 11, None).unwrap()),
        (5..=10).collect::<Vec<_>>()
    );
    assert!(store.entries(1, 1, 5, None).unwrap().is_empty());

    // A lower compact_to removes nothing and does not lower the mark.
    let mut batch = WriteBatch::new(1);
    batch.compact_to = Some(3);
    store.write(&[batch]).unwrap();
    assert_eq!(store.compacted_to(1).unwrap(), 5);
    assert_eq!(store.first_index(1).unwrap(), Some(5));

    // Compacting past the end empties the log but remembers the mark.
    let mut batch = WriteBatch::new(1);
    batch.compact_to = Some(20);
    store.write(&[batch]).unwrap();
    assert_eq!(store.first_index(1).unwrap(), None);
    assert_eq!(store.compacted_to(1).unwrap(), 20);

    // The log continues after the mark.
    append(store, 1, "b", 20..=22);
    assert_eq!(store.first_index(1).unwrap(), Some(20));
    assert_eq!(store.last_index(1).unwrap(), Some(22));
}

fn compact_applies_after_the_new_entries(store: &LogStore) {
    // Snapshot install: entries, snapshot and compaction in one batch.
    let mut batch = batch_with_entries(1, "a", 1..=10);
    batch.snapshot = Some(SnapshotRecord {
        index: 7,
        term: 2,
        data: Bytes::from_static(b"state@7"),
    });
    batch.compact_to = Some(8);
    store.write(&[batch]).unwrap();
    assert_eq!(store.first_index(1).unwrap(), Some(8));
    assert_eq!(store.last_index(1).unwrap(), Some(10));
    assert_eq!(store.snapshot(1).unwrap().unwrap().index, 7);
}

fn hard_and_conf_state_are_replaced(store: &LogStore) {
    let mut batch = WriteBatch::new(1);
    batch.hard_state = Some(Bytes::from_static(b"hs1"));
    batch.conf_state = Some(Bytes::from_static(b"cs1"));
    store.write(&[batch]).unwrap();
    assert_eq!(store.hard_state(1).unwrap().unwrap(), "hs1");
    assert_eq!(store.conf_state(1).unwrap().unwrap(), "cs1");

    // Replacing one leaves the other.
    let mut batch = WriteBatch::new(1);
    batch.hard_state = Some(Bytes::from_static(b"hs2-longer"));
    store.write(&[batch]).unwrap();
    assert_eq!(store.hard_state(1).unwrap().unwrap(), "hs2-longer");
    assert_eq!(store.conf_state(1).unwrap().unwrap(), "cs1");

    let mut batch = WriteBatch::new(1);
    batch.conf_state = Some(Bytes::new());
    store.write(&[batch]).unwrap();
    assert_eq!(store.conf_state(1).unwrap().unwrap(), Bytes::new());
    assert_eq!(store.groups().unwrap(), vec![1]);
}

fn snapshot_is_replaced_whole(store: &LogStore) {
    let chunk = starling_storage::store::SNAPSHOT_CHUNK_BYTES;
    let sizes = [
        3 * chunk + 12_345, // several chunks
        10,                 // smaller: every old chunk must go
        0,                  // empty
        2 * chunk,          // exact chunk multiple
        chunk - 1,
        chunk + 1,
    ];
    for (n, len) in (1u64..).zip(sizes) {
        let record = SnapshotRecord {
            index: 100 * n,
            term: n,
            data: pattern(n, len),
        };
        let mut batch = WriteBatch::new(1);
        batch.snapshot = Some(record.clone());
        store.write(&[batch]).unwrap();
        let read = store.snapshot(1).unwrap().expect("snapshot stored");
        assert_eq!(read.index, record.index);
        assert_eq!(read.term, record.term);
        assert_eq!(read.data.len(), len, "snapshot {n}");
        assert!(read.data == record.data, "snapshot {n} bytes differ");
    }
    // The snapshot of another group is independent.
    assert_eq!(store.snapshot(2).unwrap(), None);
}

fn meta_values_are_per_name(store: &LogStore) {
    let mut batch = WriteBatch::new(1);
    batch.meta = vec![
        ("applied".into(), Bytes::from_static(b"10")),
        ("".into(), Bytes::from_static(b"empty name")),
        ("applied.extra".into(), Bytes::from_static(b"x")),
    ];
    store.write(&[batch]).unwrap();
    assert_eq!(store.meta(1, "applied").unwrap().unwrap(), "10");
    assert_eq!(store.meta(1, "").unwrap().unwrap(), "empty name");
    assert_eq!(store.meta(1, "applied.extra").unwrap().unwrap(), "x");
    assert_eq!(store.meta(1, "appl").unwrap(), None);

    let mut batch = WriteBatch::new(1);
    batch.meta = vec![("applied".into(), Bytes::from_static(b"11"))];
    store.write(&[batch]).unwrap();
    assert_eq!(store.meta(1, "applied").unwrap().unwrap(), "11");
    assert_eq!(store.meta(1, "applied.extra").unwrap().unwrap(), "x");
}

fn groups_are_isolated(store: &LogStore) {
    let groups = [0u64, 1, 2, u64::MAX];
    for &g in &groups {
        let tag = format!("g{g}");
        let mut batch = batch_with_entries(g, &tag, 1..=20);
        batch.hard_state = Some(Bytes::from(format!("hs{g}")));
        batch.conf_state = Some(Bytes::from(format!("cs{g}")));
        batch.snapshot = Some(SnapshotRecord {
            index: g % 100,
            term: 1,
            data: pattern(g, 1000),
        });
        batch.meta = vec![("name".into(), Bytes::from(format!("meta{g}")))];
        store.write(&[batch]).unwrap();
    }
    // Disturb group 1 only.
    let mut batch = WriteBatch::new(1);
    batch.truncate_from = Some(15);
    batch.compact_to = Some(5);
    batch.snapshot = Some(SnapshotRecord {
        index: 14,
        term: 3,
        data: Bytes::new(),
    });
    store.write(&[batch]).unwrap();

    assert_eq!(store.groups().unwrap(), groups.to_vec());
    for &g in &groups {
        let tag = format!("g{g}");
        let all = all_entries(store, g);
        let expected: Vec<u64> = if g == 1 {
            (5..15).collect()
        } else {
            (1..=20).collect()
        };
        assert_eq!(indexes(&all), expected, "group {g}");
        for (i, data) in &all {
            assert_eq!(data, &payload(&tag, *i), "group {g} entry {i}");
        }
        assert_eq!(store.hard_state(g).unwrap().unwrap(), format!("hs{g}"));
        assert_eq!(store.conf_state(g).unwrap().unwrap(), format!("cs{g}"));
        assert_eq!(store.meta(g, "name").unwrap().unwrap(), format!("meta{g}"));
        let snapshot = store.snapshot(g).unwrap().unwrap();
        if g == 1 {
            assert_eq!((snapshot.index, snapshot.data.len()), (14, 0));
            assert_eq!(store.compacted_to(g).unwrap(), 5);
        } else {
            assert_eq!(snapshot.data, pattern(g, 1000), "group {g}");
            assert_eq!(store.compacted_to(g).unwrap(), 0);
        }
    }
}

fn max_bytes_limits_reads(store: &LogStore) {
    let mut batch = WriteBatch::new(1);
    batch.entries = (1..=10)
        .map(|i| (i, Bytes::from(vec![i as u8; 100])))
        .collect();
    store.write(&[batch]).unwrap();
    let read = |max| indexes(&store.entries(1, 1, 11, max).unwrap());
    assert_eq!(read(None).len(), 10);
    assert_eq!(read(Some(u64::MAX)).len(), 10);
    assert_eq!(read(Some(0)), vec![1], "at least one entry");
    assert_eq!(read(Some(99)), vec![1], "at least one entry");
    assert_eq!(read(Some(100)), vec![1]);
    assert_eq!(read(Some(199)), vec![1]);
    assert_eq!(read(Some(200)), vec![1, 2]);
    assert_eq!(read(Some(250)), vec![1, 2]);
    assert_eq!(read(Some(300)), vec![1, 2, 3]);
    assert_eq!(indexes(&store.entries(1, 8, 11, Some(0)).unwrap()), vec![8]);
    assert!(store.entries(1, 20, 30, Some(0)).unwrap().is_empty());
}

fn one_write_is_atomic(store: &LogStore) {
    append(store, 1, "a", 1..=3);
    let good = batch_with_entries(2, "b", 1..=3);
    let mut bad = WriteBatch::new(3);
    bad.entries = vec![(1, Bytes::new()), (3, Bytes::new())];
    let err = store.write(&[good.clone(), bad]).unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidBatch { group: 3, .. }),
        "{err:?}"
    );
    assert!(!err.is_fatal());
    assert!(
        all_entries(store, 2).is_empty(),
        "nothing of a failed write"
    );
    assert_eq!(store.groups().unwrap(), vec![1]);

    // Several groups in one write.
    let mut other = WriteBatch::new(3);
    other.hard_state = Some(Bytes::from_static(b"hs"));
    store.write(&[good, other]).unwrap();
    assert_eq!(store.groups().unwrap(), vec![1, 2, 3]);
    assert_eq!(indexes(&all_entries(store, 2)), vec![1, 2, 3]);
}

fn later_batches_of_a_write_see_earlier_ones(store: &LogStore) {
    let first = batch_with_entries(1, "a", 1..=5);
    let mut second = batch_with_entries(1, "b", 4..=6);
    second.truncate_from = Some(4);
    store.write(&[first, second]).unwrap();
    let all = all_entries(store, 1);
    assert_eq!(indexes(&all), (1..=6).collect::<Vec<_>>());
    assert_eq!(all[3].1, payload("b", 4));
}

fn clones_share_the_database(store: &LogStore) {
    let other = store.clone();
    append(&other, 1, "a", 1..=3);
    assert_eq!(store.last_index(1).unwrap(), Some(3));
    let reader = std::thread::spawn({
        let store = store.clone();
        move || store.last_index(1).unwrap()
    });
    assert_eq!(reader.join().unwrap(), Some(3));
}

fn sync_is_harmless(store: &LogStore) {
    append(store, 1, "a", 1..=3);
    store.sync().unwrap();
    assert_eq!(store.last_index(1).unwrap(), Some(3));
}

/// Runs every suite function against fresh stores of the backend built by `$fixture`.
macro_rules! suite {
    ($module:ident, $fixture:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            suite!(@tests $fixture;
                empty_store_reads_nothing,
                append_and_read_ranges,
                entries_can_start_anywhere_and_hold_any_bytes,
                overwriting_entries_replaces_them,
                truncate_from_removes_the_tail,
                truncate_applies_before_the_new_entries,
                compact_to_removes_the_head,
                compact_applies_after_the_new_entries,
                hard_and_conf_state_are_replaced,
                snapshot_is_replaced_whole,
                meta_values_are_per_name,
                groups_are_isolated,
                max_bytes_limits_reads,
                one_write_is_atomic,
                later_batches_of_a_write_see_earlier_ones,
                clones_share_the_database,
                sync_is_harmless,
            );
        }
    };
    (@tests $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fixture: Fixture = $fixture;
                super::$name(&fixture.store);
            }
        )*
    };
}

suite!(file_fsync_always, Fixture::file(FsyncPolicy::Always));
suite!(file_fsync_never, Fixture::file(FsyncPolicy::Never));
suite!(in_memory, Fixture::memory());

// ---------------------------------------------------------------------------------------------
// File-only behaviour.

/// Writes a bit of everything to two groups.
fn fill(store: &LogStore) {
    for g in [1u64, 7] {
        let mut batch = batch_with_entries(g, "r", 1..=50);
        batch.hard_state = Some(Bytes::from(format!("hs{g}")));
        batch.conf_state = Some(Bytes::from(format!("cs{g}")));
        batch.snapshot = Some(SnapshotRecord {
            index: 9,
            term: 2,
            data: pattern(g, 600_000),
        });
        batch.compact_to = Some(10);
        batch.meta = vec![("applied".into(), Bytes::from_static(b"9"))];
        store.write(&[batch]).unwrap();
    }
}

fn check_filled(store: &LogStore) {
    assert_eq!(store.groups().unwrap(), vec![1, 7]);
    for g in [1u64, 7] {
        assert_eq!(store.first_index(g).unwrap(), Some(10));
        assert_eq!(store.last_index(g).unwrap(), Some(50));
        assert_eq!(store.compacted_to(g).unwrap(), 10);
        let all = all_entries(store, g);
        assert_eq!(indexes(&all), (10..=50).collect::<Vec<_>>());
        for (i, data) in &all {
            assert_eq!(data, &payload("r", *i));
        }
        assert_eq!(store.hard_state(g).unwrap().unwrap(), format!("hs{g}"));
        assert_eq!(store.conf_state(g).unwrap().unwrap(), format!("cs{g}"));
        assert_eq!(store.meta(g, "applied").unwrap().unwrap(), "9");
        let snapshot = store.snapshot(g).unwrap().unwrap();
        assert_eq!((snapshot.index, snapshot.term), (9, 2));
        assert!(snapshot.data == pattern(g, 600_000));
    }
}

#[test]
fn reopen_after_drop_keeps_everything() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let store = LogStore::open(&path, StoreOptions { fsync }).unwrap();
        fill(&store);
        check_filled(&store);
        drop(store);
        // Reopen with the other policy too: the policy is not part of the file.
        for reopen in [fsync, FsyncPolicy::Always] {
            let store = LogStore::open(&path, StoreOptions { fsync: reopen }).unwrap();
            check_filled(&store);
        }
    }
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/node.redb");
    let store = LogStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    assert!(path.exists());
    assert_eq!(LogStore::open_in_memory().unwrap().path(), None);
}

#[test]
fn a_second_open_of_the_same_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let _store = LogStore::open(&path, StoreOptions::default()).unwrap();
    let err = LogStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StorageError::Engine { op: "open", .. }),
        "{err}"
    );
    assert!(err.is_fatal());
}

#[test]
fn open_reports_an_unusable_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = LogStore::open(&file.join("node.redb"), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");

    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0xAB; 10_000]).unwrap();
    let err = LogStore::open(&garbage, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Engine { .. }), "{err}");
}
