//! The conformance suite every [`LogStore`] must pass: `suite::test_all(|| make_store())`.
//! Each check takes a fresh store from the builder.

use super::{Append, LogError, LogStore, NewRecord, PartitionAppend, StreamState, TopicSpec};

/// A record with value `v` (and key `k`, if any) at time `ts`.
pub fn rec(ts: i64, k: Option<&str>, v: &str) -> NewRecord {
    NewRecord {
        timestamp_ms: ts,
        key: k.map(|k| k.as_bytes().to_vec()),
        value: v.as_bytes().to_vec(),
        headers: vec![("h".into(), v.as_bytes().to_vec())],
    }
}

/// An append of `records` to one partition.
pub fn one(topic: &str, partition: u32, records: Vec<NewRecord>) -> Append {
    Append {
        partitions: vec![PartitionAppend {
            topic: topic.into(),
            partition,
            records,
        }],
        streams: vec![],
    }
}

/// Runs every check against stores made by `make`.
pub fn test_all<S: LogStore>(make: impl Fn() -> S) {
    topics(&make());
    dense_offsets_and_reads(&make());
    limits(&make());
    atomic_append(&make());
    streams_and_meta(&make());
    retention_by_bytes(&make());
    retention_by_age(&make());
    compaction(&make());
    truncation(&make());
    key_scan(&make());
    borrowed_reads(&make());
}

fn borrowed_reads(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("b", 1)).unwrap();
    for i in 0..4 {
        s.append(&one(
            "b",
            0,
            vec![rec(i, Some("k"), &format!("v{i}")), rec(i, None, "w")],
        ))
        .unwrap();
    }
    for (from, max) in [(0, usize::MAX), (3, 2), (5, 100), (8, 1), (1, 0)] {
        let mut got = Vec::new();
        let n = s
            .read_with("b", 0, from, max, &mut |r| {
                got.push(r.to_owned());
                true
            })
            .unwrap();
        let want = s.read("b", 0, from, max, usize::MAX).unwrap();
        assert_eq!((n, &got), (want.len(), &want), "from {from} max {max}");
    }
    let mut seen = 0;
    let n = s
        .read_with("b", 0, 0, usize::MAX, &mut |_| {
            seen += 1;
            seen < 3
        })
        .unwrap();
    assert_eq!((n, seen), (3, 3), "stops when asked");
}

fn key_scan(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("k", 1)).unwrap();
    for i in 0..6 {
        s.append(&one(
            "k",
            0,
            vec![rec(i, Some(&format!("d{i}")), "v"), rec(i, None, "w")],
        ))
        .unwrap();
    }
    let mut got = Vec::new();
    let n = s
        .scan_keys("k", 0, 3, 9, &mut |o, k| {
            got.push((o, k.map(|k| String::from_utf8(k.to_vec()).unwrap())))
        })
        .unwrap();
    let want: Vec<(u64, Option<String>)> = s
        .read("k", 0, 3, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r.offset < 9)
        .map(|r| (r.offset, r.key.map(|k| String::from_utf8(k).unwrap())))
        .collect();
    assert_eq!(n, 6);
    assert_eq!(got, want);
    assert_eq!(
        s.scan_keys("k", 0, 12, 20, &mut |_, _| panic!("nothing there"))
            .unwrap(),
        0
    );
}

fn truncation(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("q", 2)).unwrap();
    for i in 0..5 {
        // Chunks of two records: offsets 0-1, 2-3, ... 8-9.
        s.append(&one("q", 0, vec![rec(i, None, "a"), rec(i, None, "b")]))
            .unwrap();
    }
    assert_eq!(s.truncate("q", 0, 0).unwrap().records, 0);
    // A chunk straddling `below` stays whole.
    let rep = s.truncate("q", 0, 5).unwrap();
    assert_eq!((rep.chunks, rep.records), (2, 4));
    let st = s.partition_stats("q", 0).unwrap();
    assert_eq!((st.first_offset, st.next_offset, st.records), (4, 10, 6));
    assert_eq!(values(s, "q", 0, 0)[0].0, 4);
    // Everything may go, the newest chunk too; offsets are not reused.
    assert_eq!(s.truncate("q", 0, u64::MAX).unwrap().records, 6);
    let st = s.partition_stats("q", 0).unwrap();
    assert_eq!(
        (st.first_offset, st.next_offset, st.records, st.bytes),
        (10, 10, 0, 0)
    );
    assert_eq!(s.append(&one("q", 0, vec![rec(9, None, "c")])).unwrap(), vec![10]);
    assert_eq!(
        s.partition_stats("q", 1).unwrap().records,
        0,
        "other partitions untouched"
    );
    assert!(s.truncate("q", 2, 1).is_err());
}

fn values(s: &impl LogStore, t: &str, p: u32, from: u64) -> Vec<(u64, String)> {
    s.read(t, p, from, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, String::from_utf8(r.value).unwrap()))
        .collect()
}

fn topics(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("a", 2)).unwrap();
    s.ensure_topic(&TopicSpec::new("a", 2)).unwrap();
    let changed = TopicSpec {
        retention_bytes: Some(10),
        ..TopicSpec::new("a", 2)
    };
    s.ensure_topic(&changed).unwrap();
    assert_eq!(s.topics().unwrap(), vec![changed]);
    assert!(matches!(
        s.ensure_topic(&TopicSpec::new("a", 3)),
        Err(LogError::InvalidTopic(_))
    ));
    assert!(matches!(
        s.ensure_topic(&TopicSpec::new("bad/name", 1)),
        Err(LogError::InvalidTopic(_))
    ));
    assert!(matches!(
        s.ensure_topic(&TopicSpec::new("zero", 0)),
        Err(LogError::InvalidTopic(_))
    ));
    assert!(matches!(
        s.read("nope", 0, 0, 10, 10),
        Err(LogError::UnknownTopic(_))
    ));
    assert!(matches!(
        s.read("a", 2, 0, 10, 10),
        Err(LogError::UnknownPartition { .. })
    ));
    assert!(matches!(
        s.partition_stats("a", 5),
        Err(LogError::UnknownPartition { .. })
    ));
}

fn dense_offsets_and_reads(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("t", 2)).unwrap();
    assert_eq!(s.partition_stats("t", 0).unwrap().next_offset, 0);
    assert!(values(s, "t", 0, 0).is_empty());
    let bases = s
        .append(&Append {
            partitions: vec![
                PartitionAppend {
                    topic: "t".into(),
                    partition: 0,
                    records: vec![rec(1, None, "a"), rec(2, None, "b")],
                },
                PartitionAppend {
                    topic: "t".into(),
                    partition: 1,
                    records: vec![rec(1, None, "x")],
                },
            ],
            streams: vec![],
        })
        .unwrap();
    assert_eq!(bases, vec![0, 0]);
    assert_eq!(s.append(&one("t", 0, vec![rec(3, None, "c")])).unwrap(), vec![2]);
    assert_eq!(
        s.append(&one("t", 0, vec![])).unwrap(),
        vec![3],
        "an empty append assigns nothing"
    );
    assert_eq!(
        s.append(&one("t", 0, vec![rec(4, Some("k"), "d"), rec(5, None, "e")]))
            .unwrap(),
        vec![3]
    );
    let all = values(s, "t", 0, 0);
    let want: Vec<(u64, String)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.to_string()))
        .collect();
    assert_eq!(all, want);
    // From the middle of a chunk, and past the end.
    assert_eq!(values(s, "t", 0, 1), want[1..].to_vec());
    assert_eq!(values(s, "t", 0, 4), want[4..].to_vec());
    assert!(values(s, "t", 0, 5).is_empty());
    assert_eq!(values(s, "t", 1, 0), vec![(0, "x".to_string())]);
    let r = &s.read("t", 0, 3, 1, usize::MAX).unwrap()[0];
    assert_eq!(
        (r.timestamp_ms, r.key.as_deref(), r.header("h")),
        (4, Some(&b"k"[..]), Some(&b"d"[..]))
    );
    let st = s.partition_stats("t", 0).unwrap();
    assert_eq!((st.first_offset, st.next_offset, st.records), (0, 5, 5));
    assert!(st.bytes > 0);
}

fn limits(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("l", 1)).unwrap();
    let recs: Vec<NewRecord> = (0..10).map(|i| rec(i, None, "0123456789")).collect();
    s.append(&one("l", 0, recs)).unwrap();
    assert_eq!(s.read("l", 0, 0, 3, usize::MAX).unwrap().len(), 3);
    assert_eq!(
        s.read("l", 0, 0, 100, 25).unwrap().len(),
        2,
        "values of 10 bytes within 25"
    );
    assert_eq!(s.read("l", 0, 0, 100, 1).unwrap().len(), 1, "at least one record");
}

fn atomic_append(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
    let bad = Append {
        partitions: vec![
            PartitionAppend {
                topic: "t".into(),
                partition: 0,
                records: vec![rec(1, None, "a")],
            },
            PartitionAppend {
                topic: "t".into(),
                partition: 9,
                records: vec![rec(1, None, "b")],
            },
        ],
        streams: vec![StreamState {
            device: "d".into(),
            boot: 1,
            next_expected: 5,
        }],
    };
    assert!(s.append(&bad).is_err());
    assert_eq!(
        s.partition_stats("t", 0).unwrap().next_offset,
        0,
        "nothing of a failed append is kept"
    );
    assert_eq!(s.stream_state("d", 1).unwrap(), None);
}

fn streams_and_meta(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
    let mut a = one("t", 0, vec![rec(1, None, "a")]);
    a.streams = vec![
        StreamState {
            device: "d1".into(),
            boot: 7,
            next_expected: 10,
        },
        StreamState {
            device: "d2".into(),
            boot: 7,
            next_expected: 3,
        },
    ];
    s.append(&a).unwrap();
    a.streams = vec![StreamState {
        device: "d1".into(),
        boot: 7,
        next_expected: 12,
    }];
    s.append(&a).unwrap();
    assert_eq!(s.stream_state("d1", 7).unwrap(), Some(12));
    assert_eq!(s.stream_state("d2", 7).unwrap(), Some(3));
    assert_eq!(s.stream_state("d1", 8).unwrap(), None);
    assert_eq!(s.meta("gw").unwrap(), None);
    s.set_meta("gw", b"abc").unwrap();
    s.set_meta("gw", b"xyz").unwrap();
    assert_eq!(s.meta("gw").unwrap().as_deref(), Some(&b"xyz"[..]));
}

fn retention_by_bytes(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec::new("r", 1)).unwrap();
    for i in 0..10 {
        s.append(&one("r", 0, vec![rec(i, None, &"x".repeat(100))]))
            .unwrap();
    }
    let full = s.partition_stats("r", 0).unwrap();
    let per_chunk = full.bytes / 10;
    s.ensure_topic(&TopicSpec {
        retention_bytes: Some(per_chunk * 3),
        ..TopicSpec::new("r", 1)
    })
    .unwrap();
    let rep = s.apply_retention(0).unwrap();
    assert_eq!((rep.chunks, rep.records), (7, 7));
    let st = s.partition_stats("r", 0).unwrap();
    assert_eq!(
        (st.first_offset, st.next_offset, st.records, st.bytes),
        (7, 10, 3, per_chunk * 3)
    );
    // A reader from a removed offset starts at the first one left.
    assert_eq!(values(s, "r", 0, 2)[0].0, 7);
    // Offsets are never reused.
    assert_eq!(
        s.append(&one("r", 0, vec![rec(11, None, "y")])).unwrap(),
        vec![10]
    );
    // The newest chunk stays even when it alone is over the limit.
    s.ensure_topic(&TopicSpec {
        retention_bytes: Some(1),
        ..TopicSpec::new("r", 1)
    })
    .unwrap();
    s.apply_retention(0).unwrap();
    assert_eq!(values(s, "r", 0, 0), vec![(10, "y".to_string())]);
}

fn retention_by_age(s: &impl LogStore) {
    let day: i64 = 86_400_000;
    s.ensure_topic(&TopicSpec {
        retention_ms: Some(day as u64),
        ..TopicSpec::new("age", 1)
    })
    .unwrap();
    s.ensure_topic(&TopicSpec::new("keep", 1)).unwrap();
    for (i, ts) in [0, 10, 2 * day, 3 * day].into_iter().enumerate() {
        s.append(&one("age", 0, vec![rec(ts, None, &i.to_string())]))
            .unwrap();
        s.append(&one("keep", 0, vec![rec(ts, None, &i.to_string())]))
            .unwrap();
    }
    let rep = s.apply_retention(2 * day + 5).unwrap();
    assert_eq!(rep.records, 2, "two chunks older than a day");
    assert_eq!(
        values(s, "age", 0, 0).iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(values(s, "keep", 0, 0).len(), 4, "no retention configured");
    s.apply_retention(100 * day).unwrap();
    assert_eq!(
        values(s, "age", 0, 0).iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![3],
        "newest chunk stays"
    );
}

fn compaction(s: &impl LogStore) {
    s.ensure_topic(&TopicSpec {
        compact: true,
        ..TopicSpec::new("c", 1)
    })
    .unwrap();
    s.append(&one(
        "c",
        0,
        vec![
            rec(1, Some("a"), "a1"),
            rec(1, Some("b"), "b1"),
            rec(1, None, "n1"),
        ],
    ))
    .unwrap();
    s.append(&one("c", 0, vec![rec(2, Some("a"), "a2")])).unwrap();
    s.append(&one(
        "c",
        0,
        vec![rec(3, Some("b"), "b2"), rec(3, Some("a"), "a3")],
    ))
    .unwrap();
    let removed = s.compact("c").unwrap();
    assert_eq!(removed, 3, "a1, b1, a2 are superseded");
    assert_eq!(
        values(s, "c", 0, 0),
        vec![
            (2, "n1".to_string()),
            (4, "b2".to_string()),
            (5, "a3".to_string())
        ],
        "offsets are kept; keyless records stay"
    );
    let st = s.partition_stats("c", 0).unwrap();
    assert_eq!((st.first_offset, st.next_offset, st.records), (2, 6, 3));
    assert_eq!(s.compact("c").unwrap(), 0, "idempotent");
    assert_eq!(
        s.append(&one("c", 0, vec![rec(4, Some("a"), "a4")])).unwrap(),
        vec![6]
    );
}
