//! The ingest pipeline on the in-memory log: dedup, ordering, dead letters, acks only after a
//! successful commit, and recovery from a failing disk.

use std::sync::{Arc, Mutex};

use edge_agent::config::{Config, DEAD_LETTER, DEVICE_STATUS, TELEMETRY};
use edge_agent::devices::Registry;
use edge_agent::ingest::{Ingest, Publish};
use edge_agent::log::mem::MemLog;
use edge_agent::log::LogStore;
use edge_agent::metrics::{get, Metrics};
use edge_agent::partitioner::partition_for;
use firmware::wire::{self, Ack, Batch, Counters, DeviceStatus, Reading, ReadingRecord};

fn setup() -> (Arc<MemLog>, Ingest<MemLog>, Arc<Metrics>) {
    let store = Arc::new(MemLog::new());
    for spec in Config::default().topic_specs() {
        store.ensure_topic(&spec).unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let ingest = Ingest::new(
        store.clone(),
        6,
        4096,
        Arc::new(Mutex::new(Registry::default())),
        metrics.clone(),
    );
    (store, ingest, metrics)
}

fn batch(dev: &str, boot: u32, first: u64, low: u64, n: u64) -> Publish {
    let b = Batch {
        device_id: dev.try_into().unwrap(),
        boot_id: boot,
        first_seq: first,
        low_seq: low,
        readings: (first..first + n)
            .map(|s| Reading {
                channel: 1,
                timestamp_ms: 1_700_000_000_000 + s,
                value: s as f32,
            })
            .collect(),
    };
    let mut buf = [0u8; wire::MAX_BATCH_ENCODED];
    Publish {
        topic: format!("sensors/{dev}"),
        payload: wire::encode(&b, &mut buf).unwrap().to_vec(),
    }
}

fn acks(out: &[edge_agent::ingest::AckOut]) -> Vec<(String, Ack)> {
    out.iter()
        .map(|a| (a.topic.clone(), wire::decode::<Ack>(&a.payload).unwrap()))
        .collect()
}

/// (boot, seq) of every telemetry record of `dev`, in log order.
fn stored(store: &MemLog, dev: &str) -> Vec<(u32, u64)> {
    let p = partition_for(dev.as_bytes(), 6);
    store
        .read(TELEMETRY, p, 0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(dev.as_bytes()))
        .map(|r| {
            let rr: ReadingRecord = wire::decode(&r.value).unwrap();
            (rr.boot_id, rr.seq)
        })
        .collect()
}

#[test]
fn readings_are_stored_once_in_order_and_acked_cumulatively() {
    let (store, mut ingest, m) = setup();
    let out = ingest
        .process(
            &[
                batch("d1", 7, 0, 0, 4),
                batch("d1", 7, 4, 0, 4),
                batch("d2", 1, 0, 0, 2),
            ],
            1,
        )
        .unwrap();
    let mut a = acks(&out);
    a.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        a,
        vec![
            (
                "devices/d1/ack".into(),
                Ack {
                    boot_id: 7,
                    up_to_seq: 7
                }
            ),
            (
                "devices/d2/ack".into(),
                Ack {
                    boot_id: 1,
                    up_to_seq: 1
                }
            )
        ]
    );
    // A resend overlapping what is stored: only the new tail is written; the ack re-confirms.
    let out = ingest.process(&[batch("d1", 7, 2, 2, 8)], 2).unwrap();
    assert_eq!(
        acks(&out),
        vec![(
            "devices/d1/ack".into(),
            Ack {
                boot_id: 7,
                up_to_seq: 9
            }
        )]
    );
    assert_eq!(stored(&store, "d1"), (0..10).map(|s| (7, s)).collect::<Vec<_>>());
    assert_eq!(get(&m.duplicates), 6);
    assert_eq!(get(&m.readings), 12);
    // The record: key = device id, value = ReadingRecord, timestamp = the reading's.
    let p = partition_for(b"d2", 6);
    let r = &store.read(TELEMETRY, p, 0, 10, usize::MAX).unwrap()[0];
    assert_eq!(r.timestamp_ms, 1_700_000_000_000);
}

#[test]
fn out_of_order_batches_are_not_taken_and_device_gaps_are_counted() {
    let (store, mut ingest, m) = setup();
    ingest.process(&[batch("d", 1, 0, 0, 4)], 1).unwrap();
    // 4..8 was lost between broker and agent; 8..12 arrives: not stored, ack stays at 3.
    let out = ingest.process(&[batch("d", 1, 8, 4, 4)], 2).unwrap();
    assert_eq!(acks(&out)[0].1.up_to_seq, 3);
    assert_eq!(get(&m.lag_detected), 1);
    // The device dropped 4..10 for overflow (low_seq 10): a counted gap, then accepted.
    let out = ingest.process(&[batch("d", 1, 10, 10, 2)], 3).unwrap();
    assert_eq!(acks(&out)[0].1.up_to_seq, 11);
    assert_eq!(get(&m.device_dropped), 6);
    assert_eq!(
        stored(&store, "d").iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 10, 11]
    );
}

#[test]
fn dedup_state_survives_a_new_pipeline_on_the_same_store() {
    let (store, mut ingest, _) = setup();
    ingest.process(&[batch("d", 3, 0, 0, 5)], 1).unwrap();
    // A restarted agent: new pipeline, same log.
    let mut again = Ingest::new(
        store.clone(),
        6,
        4096,
        Arc::new(Mutex::new(Registry::default())),
        Arc::new(Metrics::default()),
    );
    let out = again
        .process(&[batch("d", 3, 0, 0, 5), batch("d", 3, 5, 0, 1)], 2)
        .unwrap();
    assert_eq!(acks(&out)[0].1.up_to_seq, 5);
    assert_eq!(stored(&store, "d").len(), 6);
    // A new boot starts its own numbering.
    again.process(&[batch("d", 4, 0, 0, 2)], 3).unwrap();
    assert_eq!(stored(&store, "d").len(), 8);
}

#[test]
fn garbage_goes_to_dead_letter_and_harms_no_one() {
    let (store, mut ingest, m) = setup();
    let mut wrong_id = batch("other", 1, 0, 0, 1);
    wrong_id.topic = "sensors/d".into();
    let out = ingest
        .process(
            &[
                Publish {
                    topic: "sensors/d".into(),
                    payload: b"\x01garbage".to_vec(),
                },
                Publish {
                    topic: "sensors/d".into(),
                    payload: vec![],
                },
                wrong_id,
                Publish {
                    topic: "sensors/d".into(),
                    payload: vec![1; 5000],
                },
                Publish {
                    topic: "devices/d/status".into(),
                    payload: vec![9, 9],
                },
                batch("good", 1, 0, 0, 3),
            ],
            42,
        )
        .unwrap();
    assert_eq!(
        acks(&out),
        vec![(
            "devices/good/ack".into(),
            Ack {
                boot_id: 1,
                up_to_seq: 2
            }
        )]
    );
    assert_eq!(get(&m.dead_letters), 5);
    let dead = store.read(DEAD_LETTER, 0, 0, 100, usize::MAX).unwrap();
    assert_eq!(dead.len(), 5);
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8_lossy(r.header("reason").unwrap()).into_owned())
        .collect();
    assert!(reasons[0].starts_with("batch:"), "{reasons:?}");
    assert!(reasons[2].contains("does not match topic"), "{reasons:?}");
    assert!(reasons[3].contains("exceeds"), "{reasons:?}");
    assert!(reasons[4].starts_with("status:"), "{reasons:?}");
    assert_eq!(dead[0].header("mqtt_topic"), Some(&b"sensors/d"[..]));
    assert_eq!(dead[0].value, b"\x01garbage");
    assert_eq!(stored(&store, "good").len(), 3);
}

#[test]
fn statuses_are_stored_keyed_and_update_the_registry() {
    let (store, mut ingest, _) = setup();
    let s = DeviceStatus {
        device_id: "d".try_into().unwrap(),
        boot_id: 5,
        online: false,
        firmware_version: "1.2.3".try_into().unwrap(),
        buffer_capacity: 64,
        uptime_ms: 10,
        counters: Counters {
            generated: 9,
            ..Counters::default()
        },
    };
    let mut buf = [0u8; wire::MAX_STATUS_ENCODED];
    let payload = wire::encode(&s, &mut buf).unwrap().to_vec();
    ingest
        .process(
            &[Publish {
                topic: "devices/d/status".into(),
                payload: payload.clone(),
            }],
            1,
        )
        .unwrap();
    let r = &store.read(DEVICE_STATUS, 0, 0, 10, usize::MAX).unwrap()[0];
    assert_eq!(
        (r.key.as_deref(), r.value.as_slice()),
        (Some(&b"d"[..]), payload.as_slice())
    );
    let reg = ingest.devices().lock().unwrap();
    let d = &reg.all()["d"];
    assert_eq!((d.online, d.counters.unwrap().generated), (Some(false), 9));
}

#[test]
fn a_failing_disk_stops_acks_and_recovery_needs_no_restart() {
    let (store, mut ingest, m) = setup();
    ingest.process(&[batch("d", 1, 0, 0, 2)], 1).unwrap();
    store.fail_writes(true);
    assert!(
        ingest.process(&[batch("d", 1, 2, 0, 2)], 2).is_err(),
        "no ack when the write fails"
    );
    assert_eq!(get(&m.degraded), 1);
    store.fail_writes(false);
    // The device re-sends everything unacked; nothing was half-taken.
    let out = ingest.process(&[batch("d", 1, 2, 2, 3)], 3).unwrap();
    assert_eq!(acks(&out)[0].1.up_to_seq, 4);
    assert_eq!(get(&m.degraded), 0);
    assert_eq!(
        stored(&store, "d").iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn a_garbage_flood_is_stored_up_to_a_budget_and_counted_beyond() {
    let (store, mut ingest, m) = setup();
    let flood: Vec<Publish> = (0..500)
        .map(|_| Publish {
            topic: "sensors/bad".into(),
            payload: vec![0xEE; 10],
        })
        .collect();
    let mut all = flood.clone();
    all.push(batch("good", 1, 0, 0, 1));
    let out = ingest.process(&all, 5_000).unwrap();
    assert_eq!(acks(&out).len(), 1, "the good device is acked");
    let budget = u64::from(edge_agent::ingest::DEAD_LETTERS_PER_TOPIC_PER_S);
    assert_eq!(get(&m.dead_letters), budget);
    assert_eq!(get(&m.dead_letters_suppressed), 500 - budget);
    assert_eq!(store.partition_stats(DEAD_LETTER, 0).unwrap().records, budget);
    // A new second, a new budget.
    ingest.process(&flood[..1], 6_000).unwrap();
    assert_eq!(get(&m.dead_letters), budget + 1);
}
