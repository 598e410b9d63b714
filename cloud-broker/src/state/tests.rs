//! The single-node shell: what its writes leave in storage and what readers see.

use super::*;
use crate::batch::tests::{keyed_batch, make_batch, values};
use crate::storage::mem::MemStorage;

fn call<T>(w: &Writer, f: impl FnOnce(oneshot::Sender<T>) -> Request) -> T {
    let (tx, rx) = oneshot::channel();
    assert!(w.send(f(tx)));
    rx.blocking_recv().unwrap()
}

fn produce(w: &Writer, topic: &str, records: Vec<u8>) -> ProduceResult {
    call(w, |tx| Request::Produce {
        topic: topic.into(),
        partition: 0,
        records,
        reply: Some(tx),
    })
}

fn create(w: &Writer, name: &str, config: TopicConfig) -> Code {
    call(w, |tx| Request::CreateTopic {
        name: name.into(),
        partitions: 1,
        config,
        reply: tx,
    })
}

fn started() -> (Writer, Catalog, Arc<MemStorage>) {
    let storage = Arc::new(MemStorage::new());
    let (w, c, _, _) = start(storage.clone()).unwrap();
    (w, c, storage)
}

#[test]
fn offsets_are_dense_and_watermarks_move_after_the_write() {
    let (w, cat, _) = started();
    assert_eq!(create(&w, "t", TopicConfig::default()), Code::None);
    assert_eq!(create(&w, "t", TopicConfig::default()), Code::TopicAlreadyExists);
    assert_eq!(produce(&w, "t", make_batch(3, -1, -1, -1, 10)).base_offset, 0);
    assert_eq!(produce(&w, "t", make_batch(2, -1, -1, -1, 20)).base_offset, 3);
    assert_eq!(cat.topic("t").unwrap().partitions[0].hw.load(Ordering::SeqCst), 5);
    assert_eq!(
        produce(&w, "nope", make_batch(1, -1, -1, -1, 0)).code,
        Code::UnknownTopicOrPartition
    );
    assert_eq!(produce(&w, "t", vec![1, 2, 3]).code, Code::CorruptMessage);
}

#[test]
fn a_refused_record_set_writes_nothing() {
    let (w, cat, storage) = started();
    create(&w, "t", TopicConfig::default());
    let mut set = make_batch(1, -1, -1, -1, 1);
    set.extend(make_batch(1, -1, -1, -1, 2));
    set.extend(make_batch(1, -1, -1, -1, 3)[..40].to_vec());
    assert_eq!(produce(&w, "t", set).code, Code::CorruptMessage);
    let ok = produce(&w, "t", make_batch(3, -1, -1, -1, 6));
    assert_eq!((ok.code, ok.base_offset), (Code::None, 0));
    let tid = cat.topic("t").unwrap().meta.id;
    let stored: Vec<(i64, i32)> = storage
        .headers(tid, 0, 0, 10)
        .unwrap()
        .iter()
        .map(|h| (h.base_offset, h.record_count))
        .collect();
    assert_eq!(stored, vec![(0, 3)], "only the accepted batch is stored");
}

#[test]
fn producer_state_survives_a_restart_and_ids_are_not_reused() {
    let storage = Arc::new(MemStorage::new());
    let pid;
    {
        let (w, _, _, _) = start(storage.clone()).unwrap();
        create(&w, "t", TopicConfig::default());
        pid = call(&w, |tx| Request::InitProducerId { reply: tx }).1;
        let second = call(&w, |tx| Request::InitProducerId { reply: tx }).1;
        assert_eq!(second, pid + 1, "ids come from the node's block");
        produce(&w, "t", make_batch(2, pid, 0, 0, 1));
    }
    let (w, _, _, _) = start(storage).unwrap();
    let dup = produce(&w, "t", make_batch(2, pid, 0, 0, 1));
    assert_eq!(
        (dup.code, dup.base_offset),
        (Code::None, 0),
        "a retry after a restart is still a duplicate"
    );
    let after = call(&w, |tx| Request::InitProducerId { reply: tx }).1;
    assert!(
        after > pid + 1,
        "producer ids are not reused: {after} after {pid}"
    );
}

#[test]
fn retention_moves_the_log_start_and_removes_stored_batches() {
    let (w, cat, storage) = started();
    let config = TopicConfig {
        retention_ms: Some(1_000),
        ..TopicConfig::default()
    };
    create(&w, "r", config);
    for ts in [100, 200, 5_000, 9_000] {
        produce(&w, "r", make_batch(2, -1, -1, -1, ts));
    }
    let pv = cat.topic("r").unwrap().partitions[0].clone();
    assert!(w.send(Request::Retention { now_ms: 5_500 }));
    produce(&w, "r", make_batch(1, -1, -1, -1, 9_500)); // a round trip: the retention write is done
    assert_eq!(
        pv.log_start.load(Ordering::SeqCst),
        4,
        "the two batches older than 1 s are gone"
    );
    let tid = cat.topic("r").unwrap().meta.id;
    assert_eq!(storage.headers(tid, 0, 0, 10).unwrap()[0].base_offset, 4);
    assert_eq!(pv.hw.load(Ordering::SeqCst), 9);
}

#[test]
fn compaction_rewrites_stored_batches() {
    use kafka_protocol::records::Compression;
    let (w, cat, storage) = started();
    let config = TopicConfig {
        compact: true,
        ..TopicConfig::default()
    };
    create(&w, "c", config);
    produce(
        &w,
        "c",
        keyed_batch(&[(Some("a"), "a1"), (None, "n1")], Compression::Lz4),
    );
    produce(&w, "c", keyed_batch(&[(Some("a"), "a2")], Compression::None));
    assert!(w.send(Request::Compact));
    produce(&w, "none", make_batch(1, -1, -1, -1, 0));
    let tid = cat.topic("c").unwrap().meta.id;
    let raw = storage.read(tid, 0, 0, usize::MAX).unwrap();
    assert_eq!(values(&raw), vec![(1, "n1".to_string()), (2, "a2".to_string())]);
    let pv = &cat.topic("c").unwrap().partitions[0];
    assert_eq!(
        (pv.log_start.load(Ordering::SeqCst), pv.hw.load(Ordering::SeqCst)),
        (1, 3)
    );
}

/// Regression: offsets committed and the topic deleted in the same group commit left the
/// offsets in storage (the commit's rows were written after the deletion's cleanup).
#[test]
fn deleting_a_topic_forgets_its_offsets_even_in_the_same_group_commit() {
    let storage = Arc::new(MemStorage::new());
    let (w, _, table, _) = start(storage.clone()).unwrap();
    create(&w, "t", TopicConfig::default());
    let (tx1, rx1) = oneshot::channel();
    let (tx2, rx2) = oneshot::channel();
    // Both requests are queued before the writer wakes, usually landing in one group commit;
    // either way the outcome must be the same.
    assert!(w.send(Request::CommitOffsets {
        group: "g".into(),
        offsets: vec![("t".into(), 0, 5, String::new())],
        reply: tx1,
    }));
    assert!(w.send(Request::DeleteTopic {
        name: "t".into(),
        reply: tx2,
    }));
    assert_eq!(rx1.blocking_recv().unwrap(), vec![Code::None]);
    assert_eq!(rx2.blocking_recv().unwrap(), Code::None);
    assert!(table.read().unwrap().is_empty());
    assert!(storage.load().unwrap().offsets.is_empty());
}

/// Regression: OffsetCommit clamped a negative partition index to 0, so a client could
/// overwrite partition 0's committed offset; the index now reaches the writer out of range.
#[test]
fn a_commit_to_a_partition_out_of_range_is_refused() {
    let (w, _, _) = started();
    create(&w, "t", TopicConfig::default());
    let codes = call(&w, |tx| Request::CommitOffsets {
        group: "g".into(),
        offsets: vec![
            ("t".into(), u32::MAX, 5, String::new()),
            ("t".into(), 0, 7, String::new()),
        ],
        reply: tx,
    });
    assert_eq!(codes, vec![Code::UnknownTopicOrPartition, Code::None]);
}
