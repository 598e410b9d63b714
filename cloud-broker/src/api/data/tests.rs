//! ListOffsets answered as Kafka answers it, case by case, on one node: an empty partition;
//! records whose timestamps do not grow with their offsets; after DeleteRecords cut inside a
//! batch; and a compacted partition.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use super::super::Broker;
use crate::config::Config;
use crate::errors::Code;
use crate::storage::mem::MemStorage;
use crate::storage::TopicConfig;

/// One batch of keyed records with the timestamps given.
fn batch(recs: &[(&str, i64)]) -> Vec<u8> {
    let recs: Vec<Record> = recs
        .iter()
        .enumerate()
        .map(|(i, (k, ts))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: *ts,
            key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        })
        .collect();
    let mut out = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    out.to_vec()
}

async fn produce(b: &Broker, topic: &str, recs: &[(&str, i64)]) {
    let rx = b.submit_produce(topic, 0, batch(recs), true).unwrap();
    assert_eq!(rx.await.unwrap().code, Code::None);
}

/// `(error code, offset, timestamp)` for `timestamp` on partition 0 of `topic`.
async fn ask(b: &Arc<Broker>, topic: &str, timestamp: i64) -> (i16, i64, i64) {
    let r = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    let resp = super::list_offsets(b, r, 7).await.unwrap();
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX: i64 = -3;

async fn check(b: &Arc<Broker>, topic: &str, what: &str, cases: &[(i64, (i64, i64))]) {
    for &(ts, want) in cases {
        let (code, offset, t) = ask(b, topic, ts).await;
        assert_eq!(
            (code, (offset, t)),
            (0, want),
            "{what}: ListOffsets {topic} at {ts}"
        );
    }
}

#[tokio::test]
async fn list_offsets_answers_every_case_as_kafka_does() {
    let b = Broker::start(Config::default(), Arc::new(MemStorage::new())).unwrap();
    for (name, compact) in [("empty", false), ("t", false), ("c", true)] {
        let config = TopicConfig {
            compact,
            ..TopicConfig::default()
        };
        assert_eq!(b.create_topic(name, 1, -1, config).await, Code::None);
    }
    check(
        &b,
        "empty",
        "an empty partition",
        &[
            (EARLIEST, (0, -1)),
            (LATEST, (0, -1)),
            (MAX, (-1, -1)),
            (0, (-1, -1)),
        ],
    )
    .await;

    // Offsets 0..=5 with timestamps 1000, 3000, 2000 | 5000, 4000 | 5000.
    produce(&b, "t", &[("a", 1000), ("b", 3000), ("c", 2000)]).await;
    produce(&b, "t", &[("d", 5000), ("e", 4000)]).await;
    produce(&b, "t", &[("f", 5000)]).await;
    check(
        &b,
        "t",
        "records out of time order",
        &[
            (EARLIEST, (0, -1)),
            (LATEST, (6, -1)),
            // The first record holding the largest timestamp, not its batch's last offset.
            (MAX, (3, 5000)),
            // Before the data: the first record.
            (0, (0, 1000)),
            (1000, (0, 1000)),
            // Inside: the first record in offset order at or after the time.
            (1500, (1, 3000)),
            (3500, (3, 5000)),
            (4500, (3, 5000)),
            (5000, (3, 5000)),
            // After the last record: offset -1 and timestamp -1.
            (5001, (-1, -1)),
            // Any other negative time is a time too: before everything.
            (-7, (0, 1000)),
        ],
    )
    .await;

    // DeleteRecords inside the first batch, then inside the second.
    assert_eq!(b.delete_records("t", 0, 2).await, (Code::None, 2));
    check(
        &b,
        "t",
        "after DeleteRecords to 2",
        &[
            (EARLIEST, (2, -1)),
            (0, (2, 2000)),
            (MAX, (3, 5000)),
            (LATEST, (6, -1)),
        ],
    )
    .await;
    assert_eq!(b.delete_records("t", 0, 4).await, (Code::None, 4));
    check(
        &b,
        "t",
        "after DeleteRecords to 4",
        &[
            (EARLIEST, (4, -1)),
            (0, (4, 4000)),
            (MAX, (5, 5000)),
            (4500, (5, 5000)),
        ],
    )
    .await;
    assert_eq!(b.delete_records("t", 0, 7).await.0, Code::OffsetOutOfRange);
    assert_eq!(
        b.delete_records("t", 0, 1).await,
        (Code::None, 4),
        "below the log start"
    );

    // Compacted: k1 and k2 are written again later; the newest batch is never compacted.
    produce(&b, "c", &[("k1", 100), ("k2", 200)]).await;
    produce(&b, "c", &[("k1", 300), ("k3", 400)]).await;
    produce(&b, "c", &[("k2", 500)]).await;
    b.writer().unwrap().send(crate::state::Request::Compact);
    // The writer serves requests in order: once this is answered, compaction is done.
    assert_eq!(b.init_producer_id().await.0, Code::None);
    let start = b.catalog.topic("c").unwrap().partitions[0]
        .log_start
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        start <= 2,
        "compaction kept offset 2 and above: log start {start}"
    );
    check(
        &b,
        "c",
        "a compacted partition",
        &[
            (EARLIEST, (start, -1)),
            (LATEST, (5, -1)),
            (MAX, (4, 500)),
            // Offsets 0 and 1 are gone: the first record left is k1 at 2.
            (0, (2, 300)),
            (350, (3, 400)),
            (501, (-1, -1)),
        ],
    )
    .await;
}
