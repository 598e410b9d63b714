//! The broker with the rdkafka crate (librdkafka 2.12, built from source) as the client — the
//! library the bridge produces with: an idempotent acks=all zstd producer and a consumer group
//! that reads every record exactly once and commits, so that the next member of the group
//! finds nothing old; and a producer with a large number of records in flight while the broker
//! is killed with SIGKILL and restarted, after which every acknowledged record is at exactly
//! the offset its delivery report gave, and no record is there twice.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{tempdir, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const PARTITIONS: i32 = 6;

/// OffsetDelete through librdkafka's admin API (kafka-python's is in `python_clients.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_delete_through_librdkafka() {
    let dir = tempdir("rdkafka-offset-delete");
    let b = Broker::start(&dir);
    common::cluster::offset_delete_through_librdkafka(&b.addr(), "rdk-od", 1).await;
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

/// Creates `name` with `partitions` partitions through the Kafka admin API (CreateTopics).
async fn create_topic(addr: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("CreateTopics");
    assert!(matches!(res.as_slice(), [Ok(_)]), "CreateTopics {name}: {res:?}");
}

/// High watermark of every partition of `topic`.
fn high_watermarks<C: Consumer>(c: &C, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .collect()
}

/// Offsets of `topic`'s partitions in `list` (e.g. positions or committed offsets); -1 when unset.
fn offsets_of(list: &TopicPartitionList, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| match list.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

fn consumer_config(addr: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_zstd_producer_and_a_group_that_reads_everything_exactly_once() {
    const N: usize = 20_000;
    let dir = tempdir("rdkafka-group");
    let b = Broker::start(&dir);
    let addr = b.addr();
    let topic = "rdk-readings";
    create_topic(&addr, topic, PARTITIONS).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sent: Vec<(String, String)> = (0..N)
        .map(|i| {
            (
                format!("device-{}", i % 97),
                format!("reading {i} value {}", i * 7 % 1000),
            )
        })
        .collect();
    let mut deliveries = Vec::with_capacity(N);
    for (k, v) in &sent {
        let f = producer
            .send_result(FutureRecord::to(topic).key(k).payload(v))
            .map_err(|(e, _)| e)
            .expect("enqueue");
        deliveries.push(f);
    }
    // Where each record was acknowledged: (partition, offset) -> index into `sent`.
    let mut acked: HashMap<(i32, i64), usize> = HashMap::new();
    for (i, f) in deliveries.into_iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("delivery report within 60 s")
            .expect("producer alive")
            .unwrap_or_else(|(e, _)| panic!("record {i} not delivered: {e}"));
        let prev = acked.insert((d.partition, d.offset), i);
        assert_eq!(
            prev, None,
            "two records acknowledged at {}/{}",
            d.partition, d.offset
        );
    }
    assert!(
        acked.keys().map(|k| k.0).collect::<HashSet<_>>().len() > 1,
        "keys spread over partitions"
    );

    let consumer: StreamConsumer = consumer_config(&addr, "rdk-group").create().expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let hw = high_watermarks(&consumer, topic);
    assert_eq!(hw.iter().sum::<i64>(), N as i64, "high watermarks {hw:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: HashMap<(i32, i64), (String, String)> = HashMap::new();
    while got.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} records consumed in 60 s", got.len()))
            .expect("consume");
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        let prev = got.insert((m.partition(), m.offset()), (key, value));
        assert!(prev.is_none(), "{}/{} consumed twice", m.partition(), m.offset());
    }
    // Exactly the records produced, each where its delivery report said.
    for (at, i) in &acked {
        assert_eq!(got.get(at), Some(&sent[*i]), "record {i} at {at:?}");
    }
    let mut want: Vec<_> = sent.clone();
    let mut have: Vec<_> = got.into_values().collect();
    want.sort();
    have.sort();
    assert!(want == have, "consumed multiset differs from the produced one");
    // Everything read: the position of every partition is its high watermark.
    assert_eq!(offsets_of(&consumer.position().unwrap(), topic), hw);
    consumer.commit_consumer_state(CommitMode::Sync).expect("commit");
    assert_eq!(
        offsets_of(&consumer.committed(Duration::from_secs(10)).unwrap(), topic),
        hw,
        "committed offsets"
    );
    // Leaves the group (LeaveGroup) and closes.
    tokio::task::block_in_place(move || drop(consumer));

    // A second member of the same group starts at the committed offsets: every partition
    // reports its end (PartitionEOF: a fetch at the high watermark) before any record arrives.
    let second: StreamConsumer = consumer_config(&addr, "rdk-group")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    second.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut at_end = HashSet::new();
    while at_end.len() < PARTITIONS as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, second.recv()).await {
            Err(_) => panic!("second member reached the end of only {at_end:?} in 30 s"),
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Ok(Err(e)) => panic!("second member: {e}"),
            Ok(Ok(m)) => panic!("second member re-read {}/{}", m.partition(), m.offset()),
        }
    }
    assert_eq!(
        offsets_of(&second.committed(Duration::from_secs(10)).unwrap(), topic),
        hw,
        "the group's committed offsets"
    );
    // It is live: a new record reaches it, and only that one.
    let d = producer
        .send(
            FutureRecord::to(topic).key("late").payload("after the commit"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("late record");
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, second.recv()).await {
            Err(_) => panic!("the late record did not arrive in 30 s"),
            Ok(Err(KafkaError::PartitionEOF(_))) => continue,
            Ok(r) => break r.expect("consume"),
        }
    };
    assert_eq!(
        (m.partition(), m.offset(), m.payload()),
        (d.partition, d.offset, Some(&b"after the commit"[..]))
    );
    // librdkafka's close waits for every message the application still holds: drop it first.
    drop(m);
    tokio::task::block_in_place(move || drop(second));
}

/// Delivery reports of the kill -9 test: record index -> (partition, offset), and failures.
#[derive(Default)]
struct Reports {
    acked: Mutex<HashMap<usize, (i32, i64)>>,
    n_acked: AtomicUsize,
    failed: Mutex<Vec<(usize, String)>>,
    /// Records with two delivery reports (a panic here would unwind into librdkafka).
    twice: Mutex<Vec<usize>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, r: &DeliveryResult<'_>, i: Box<usize>) {
        match r {
            Ok(m) => {
                let prev = self.acked.lock().unwrap().insert(*i, (m.partition(), m.offset()));
                match prev {
                    None => self.n_acked.fetch_add(1, Ordering::SeqCst),
                    Some(_) => {
                        self.twice.lock().unwrap().push(*i);
                        0
                    }
                };
            }
            Err((e, _)) => self.failed.lock().unwrap().push((*i, e.to_string())),
        }
    }
}

fn reported(p: &ThreadedProducer<Reports>) -> usize {
    p.context().n_acked.load(Ordering::SeqCst) + p.context().failed.lock().unwrap().len()
}

#[test]
fn kill9_during_acks_all_produce_keeps_every_acknowledged_record_at_its_offset() {
    const N: usize = 200_000;
    let dir = tempdir("rdkafka-kill9");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let topic = "rdk-kill9";
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(create_topic(&addr, topic, PARTITIONS));

    let producer: ThreadedProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "2")
        // Small batches: many produce requests, five in flight per connection.
        .set("batch.num.messages", "500")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "200")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        .create_with_context(Reports::default())
        .expect("producer");
    let value = |i: usize| format!("{i:010}-{}", "x".repeat(89)).into_bytes(); // 100 bytes
    for i in 0..N {
        let (key, payload) = (format!("k{i}"), value(i));
        let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(&key)
            .payload(&payload);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    assert!(Instant::now() < deadline, "producer queue full for 30 s");
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("enqueue {i}: {e}"),
            }
        }
    }

    // Mid-stream: once a quarter is acknowledged, SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.context().n_acked.load(Ordering::SeqCst) < N / 4 {
        assert!(
            Instant::now() < deadline,
            "only {} acknowledged in 60 s",
            producer.context().n_acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    b.kill9();
    let acked_at_kill = producer.context().n_acked.load(Ordering::SeqCst);
    assert!(
        acked_at_kill < N,
        "all {N} records were acknowledged before the kill: nothing was in flight"
    );
    let acked_before: HashMap<usize, (i32, i64)> = producer.context().acked.lock().unwrap().clone();

    // Same ports, same data directory. The producer is still running: it retries what was in
    // flight (the broker must answer a retry of a batch it already made durable with the
    // original offset) and sends the rest.
    b = Broker::start_on(&dir, b.port, b.http);
    let deadline = Instant::now() + Duration::from_secs(120);
    while reported(&producer) < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} delivery reports after 120 s",
            reported(&producer)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let failed = producer.context().failed.lock().unwrap().clone();
    let acked: HashMap<usize, (i32, i64)> = producer.context().acked.lock().unwrap().clone();
    eprintln!(
        "kill -9 with {} of {N} acknowledged; after the restart {} acknowledged, {} failed{}",
        acked_at_kill,
        acked.len(),
        failed.len(),
        failed
            .first()
            .map(|(i, e)| format!(" (first: record {i}: {e})"))
            .unwrap_or_default()
    );
    let twice = producer.context().twice.lock().unwrap().clone();
    assert!(twice.is_empty(), "records with two delivery reports: {twice:?}");
    for (i, at) in &acked_before {
        assert_eq!(acked.get(i), Some(at), "record {i}'s acknowledgement changed");
    }
    let mut at_offset: HashMap<(i32, i64), usize> = HashMap::new();
    for (i, at) in &acked {
        if let Some(j) = at_offset.insert(*at, *i) {
            panic!("records {i} and {j} both acknowledged at {at:?}");
        }
    }

    // Read the whole topic back.
    let consumer: BaseConsumer = consumer_config(&b.addr(), "rdk-kill9-check")
        .create()
        .expect("consumer");
    let hw = high_watermarks(&consumer, topic);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut next = vec![0i64; PARTITIONS as usize];
    let mut log: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&hw).any(|(n, h)| n < h) {
        assert!(
            Instant::now() < deadline,
            "read back up to {next:?} of {hw:?} in 60 s"
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("consume");
        let prev = log.insert((m.partition(), m.offset()), m.payload().unwrap().to_vec());
        assert!(prev.is_none(), "{}/{} read twice", m.partition(), m.offset());
        next[m.partition() as usize] = m.offset() + 1;
    }
    // Every acknowledged record at its acknowledged offset.
    for (i, at) in &acked {
        match log.get(at) {
            Some(v) if *v == value(*i) => {}
            Some(v) => panic!(
                "record {i} acknowledged at {at:?}, which holds {:?}",
                String::from_utf8_lossy(&v[..10.min(v.len())])
            ),
            None => panic!("record {i} acknowledged at {at:?} is missing"),
        }
    }
    // Nothing twice (the idempotent producer's retries across the restart were deduplicated),
    // and nothing that was not sent.
    let mut seen = HashSet::new();
    for (at, v) in &log {
        let i: usize = std::str::from_utf8(&v[..10])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{at:?} holds a record that was not sent"));
        assert!(i < N && *v == value(i), "{at:?} holds a record that was not sent");
        assert!(seen.insert(i), "record {i} is in the log twice (again at {at:?})");
    }
    assert!(
        log.len() >= acked.len(),
        "{} records in the log, {} acknowledged",
        log.len(),
        acked.len()
    );
}
