//! The conformance suite for [`Storage`] implementations.

use super::*;
use crate::batch::tests::make_batch;
use crate::batch::{self};

fn topic(id: u32, name: &str) -> TopicMeta {
    TopicMeta {
        replicas: Vec::new(),
        id,
        uuid: [id as u8; 16],
        name: name.into(),
        partitions: 2,
        config: TopicConfig::default(),
    }
}

fn stored(n: i32, base: i64, ts: i64) -> Vec<u8> {
    let mut b = make_batch(n, -1, -1, -1, ts);
    batch::set_base_offset(&mut b, base);
    b
}

/// Runs every check against storages made by `make`.
pub fn test_all<S: Storage>(make: impl Fn() -> S) {
    metadata_round_trip(&make());
    reads_whole_batches_from_any_offset(&make());
    truncate_and_delete(&make());
}

fn metadata_round_trip(s: &impl Storage) {
    let mut w = WriteSet::default();
    w.put_topics.push(topic(1, "a"));
    w.heads.push((
        1,
        0,
        PartitionHead {
            log_start: 0,
            next_offset: 5,
            bytes: 99,
        },
    ));
    w.producers.push((
        1,
        0,
        42,
        ProducerState {
            epoch: 3,
            batches: vec![SeqEntry {
                first_seq: 0,
                last_seq: 4,
                base_offset: 0,
            }],
        },
    ));
    w.offsets.push((
        "g".into(),
        "a".into(),
        1,
        Some(CommittedOffset {
            offset: 7,
            metadata: "m".into(),
        }),
    ));
    w.meta
        .push(("next_producer_id".into(), 43i64.to_be_bytes().to_vec()));
    s.apply(&w).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.topics, vec![topic(1, "a")]);
    assert_eq!(snap.heads[&(1, 0)].next_offset, 5);
    assert_eq!(snap.producers[&(1, 0, 42)].epoch, 3);
    assert_eq!(snap.offsets[&("g".to_string(), "a".to_string(), 1)].offset, 7);
    assert_eq!(snap.meta["next_producer_id"], 43i64.to_be_bytes().to_vec());
    let mut w = WriteSet::default();
    w.offsets.push(("g".into(), "a".into(), 1, None));
    s.apply(&w).unwrap();
    assert!(s.load().unwrap().offsets.is_empty());
    assert!(WriteSet::default().is_empty());
}

fn reads_whole_batches_from_any_offset(s: &impl Storage) {
    let (a, b, c) = (stored(3, 0, 100), stored(2, 3, 200), stored(4, 5, 300));
    let w = WriteSet {
        put_topics: vec![topic(2, "r")],
        batches: vec![(2, 0, 0, a.clone()), (2, 0, 3, b.clone()), (2, 0, 5, c.clone())],
        ..WriteSet::default()
    };
    s.apply(&w).unwrap();
    assert_eq!(
        s.read(2, 0, 0, usize::MAX).unwrap(),
        [a.clone(), b.clone(), c.clone()].concat()
    );
    // From inside a batch: that whole batch first.
    assert_eq!(
        s.read(2, 0, 4, usize::MAX).unwrap(),
        [b.clone(), c.clone()].concat()
    );
    assert_eq!(s.read(2, 0, 8, usize::MAX).unwrap(), c.clone());
    assert!(s.read(2, 0, 9, usize::MAX).unwrap().is_empty());
    // At least one batch even over the limit; then only what fits.
    assert_eq!(s.read(2, 0, 0, 1).unwrap(), a.clone());
    assert_eq!(
        s.read(2, 0, 0, a.len() + b.len()).unwrap(),
        [a.clone(), b.clone()].concat()
    );
    assert!(s.read(2, 1, 0, usize::MAX).unwrap().is_empty(), "other partition");
    let h = s.headers(2, 0, 4, 10).unwrap();
    assert_eq!(
        h.iter()
            .map(|h| (h.base_offset, h.max_timestamp))
            .collect::<Vec<_>>(),
        vec![(3, 201), (5, 303)]
    );
    assert_eq!(s.headers(2, 0, 0, 1).unwrap().len(), 1);
}

fn truncate_and_delete(s: &impl Storage) {
    let mut w = WriteSet {
        put_topics: vec![topic(3, "x"), topic(4, "y")],
        batches: vec![
            (3, 0, 0, stored(1, 0, 1)),
            (3, 0, 1, stored(1, 1, 2)),
            (4, 0, 0, stored(1, 0, 1)),
        ],
        ..WriteSet::default()
    };
    w.offsets.push((
        "g".into(),
        "x".into(),
        0,
        Some(CommittedOffset {
            offset: 1,
            metadata: String::new(),
        }),
    ));
    s.apply(&w).unwrap();
    let mut w = WriteSet::default();
    w.truncate.push((3, 0, 1));
    s.apply(&w).unwrap();
    assert_eq!(
        s.headers(3, 0, 0, 10)
            .unwrap()
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        vec![1]
    );
    // A cut inside a batch (DeleteRecords) keeps the batch holding the new start.
    let w = WriteSet {
        batches: vec![(3, 0, 2, stored(3, 2, 3)), (3, 0, 5, stored(2, 5, 4))],
        ..WriteSet::default()
    };
    s.apply(&w).unwrap();
    let mut w = WriteSet::default();
    w.truncate.push((3, 0, 6));
    s.apply(&w).unwrap();
    assert_eq!(
        s.headers(3, 0, 0, 10)
            .unwrap()
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        vec![5],
        "batches 1 and 2..4 are wholly below 6; 5..6 holds it"
    );
    let w = WriteSet {
        remove_batches: vec![(3, 0, 5)],
        batches: vec![(3, 0, 1, stored(1, 1, 2))],
        ..WriteSet::default()
    };
    s.apply(&w).unwrap();
    // A rewrite: remove one batch and put its replacement under a new base, in one write.
    let w = WriteSet {
        remove_batches: vec![(3, 0, 1)],
        batches: vec![(3, 0, 2, stored(1, 2, 3))],
        ..WriteSet::default()
    };
    s.apply(&w).unwrap();
    assert_eq!(
        s.headers(3, 0, 0, 10)
            .unwrap()
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        vec![2]
    );
    let mut w = WriteSet::default();
    w.delete_topics.push(topic(3, "x"));
    s.apply(&w).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.topics.iter().map(|t| t.id).collect::<Vec<_>>(), vec![4]);
    assert!(snap.offsets.is_empty(), "a deleted topic's group offsets go too");
    assert!(s.read(3, 0, 0, usize::MAX).unwrap().is_empty());
    assert_eq!(s.headers(4, 0, 0, 10).unwrap().len(), 1, "other topics stay");
}

#[test]
fn mem_storage_conforms() {
    test_all(mem::MemStorage::new);
}

#[test]
fn redb_storage_conforms_and_persists() {
    let dir = std::env::temp_dir().join(format!(
        "cloud-store-{}-{}",
        std::process::id(),
        foundation::ids::random_u64()
    ));
    let n = std::cell::Cell::new(0);
    test_all(|| {
        n.set(n.get() + 1);
        redb_store::RedbStorage::open(&dir.join(format!("s{}.redb", n.get()))).unwrap()
    });
    let path = dir.join("persist.redb");
    {
        let s = redb_store::RedbStorage::open(&path).unwrap();
        let mut w = WriteSet::default();
        w.put_topics.push(topic(9, "p"));
        w.batches.push((9, 1, 0, stored(2, 0, 5)));
        s.apply(&w).unwrap();
    }
    let s = redb_store::RedbStorage::open(&path).unwrap();
    assert_eq!(s.load().unwrap().topics[0].name, "p");
    assert_eq!(s.headers(9, 1, 0, 10).unwrap()[0].record_count, 2);
    std::fs::remove_dir_all(dir).ok();
}
