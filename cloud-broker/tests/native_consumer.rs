//! The crate's own consumer (`cloud_broker::client`, the monitor's) against the broker, with
//! records written by librdkafka: every committed record is handed over exactly once with its
//! key, value and headers, whatever the codec; an aborted transaction's records never are;
//! two members of one group split the partitions between them, and when one leaves the other
//! takes them all; the group's committed offsets are where the member stood, as librdkafka
//! reads them. On a 3-node cluster it reads from every partition's leader, and goes on when a
//! node is killed (leaders move, the group's coordinator may move), with nothing lost or
//! handed over twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_broker::client::{self, Fetched, Handler, RecordsError, Walked};
use common::{tempdir, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

const TOPIC: &str = "native";
const PARTITIONS: i32 = 4;

/// What one consumer saw.
#[derive(Debug, Default)]
struct Seen {
    /// (partition, offset) → (key, value, the `edge` header).
    records: BTreeMap<(i32, i64), (String, String, Option<String>)>,
    duplicates: u64,
    /// The latest assignment.
    assigned: BTreeSet<i32>,
    ends: BTreeMap<i32, i64>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Seen>>);

impl Handler for Collect {
    fn start(&mut self, _: &str, partition: i32) -> Option<i64> {
        // Where this consumer got to, or the earliest.
        let s = self.0.lock().unwrap();
        s.records
            .range((partition, 0)..=(partition, i64::MAX))
            .next_back()
            .map(|((_, o), _)| o + 1)
    }
    fn fetched(&mut self, f: &Fetched<'_>) -> Result<Walked, (Walked, RecordsError)> {
        let mut s = self.0.lock().unwrap();
        let mut scratch = Vec::new();
        f.walk(&mut scratch, |r| {
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let v = (
                text(r.key).unwrap_or_default(),
                text(r.value).unwrap_or_default(),
                text(r.header("edge")),
            );
            if s.records.insert((f.partition, r.offset), v).is_some() {
                s.duplicates += 1;
            }
        })
    }
    fn progress(&mut self, _: &str, partition: i32, _: i64, end: i64) {
        self.0.lock().unwrap().ends.insert(partition, end);
    }
    fn state(&mut self, _: String) {}
    fn assigned(&mut self, parts: &[(String, i32)]) {
        self.0.lock().unwrap().assigned = parts.iter().map(|(_, p)| *p).collect();
    }
}

/// A consumer on a thread of its own; stopped (it commits and leaves) on drop.
struct Running {
    seen: Collect,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(addr: &str, group: &str) -> Running {
        let mut cfg = client::Config::new(addr, group, vec![TOPIC.to_string()]);
        cfg.commit_interval = Duration::from_millis(500);
        cfg.heartbeat_interval = Duration::from_millis(500);
        let seen = Collect::default();
        let (stop, rx) = watch::channel(false);
        let mut h = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(client::run(cfg, &mut h, rx));
        });
        Running {
            seen,
            stop,
            thread: Some(thread),
        }
    }
    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.0.lock().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn create_topic(addr: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics");
    assert!(matches!(res.as_slice(), [Ok(_)]), "{res:?}");
}

/// Records `from..to` spread over the partitions, compressed with `codec`; what was written.
fn produce(addr: &str, codec: &str, from: usize, to: usize) -> BTreeMap<String, (i32, String)> {
    produce_to(addr, codec, from, to, PARTITIONS)
}

/// [`produce`] over `partitions` partitions.
fn produce_to(
    addr: &str,
    codec: &str,
    from: usize,
    to: usize,
    partitions: i32,
) -> BTreeMap<String, (i32, String)> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("compression.type", codec)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut sent = BTreeMap::new();
    for i in from..to {
        let (key, value) = (format!("k{i}"), format!("value {i} {}", "x".repeat(i % 50)));
        let partition = (i % partitions as usize) as i32;
        let headers = OwnedHeaders::new().insert(Header {
            key: "edge",
            value: Some(format!("gw/{partition}/{i}").as_bytes()),
        });
        p.send(
            BaseRecord::to(TOPIC)
                .partition(partition)
                .key(&key)
                .payload(&value)
                .headers(headers),
        )
        .unwrap();
        sent.insert(key, (partition, value));
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(20)).unwrap();
    sent
}

/// A transaction of `n` records on partition 0, committed or aborted.
fn transaction(addr: &str, commit: bool, n: usize) -> BTreeSet<String> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("transactional.id", format!("native-{commit}"))
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(20)).unwrap();
    p.begin_transaction().unwrap();
    let mut keys = BTreeSet::new();
    for i in 0..n {
        let key = format!("txn-{commit}-{i}");
        p.send(BaseRecord::to(TOPIC).partition(0).key(&key).payload("t"))
            .unwrap();
        keys.insert(key);
    }
    p.flush(Duration::from_secs(20)).unwrap();
    if commit {
        p.commit_transaction(Duration::from_secs(20)).unwrap();
    } else {
        p.abort_transaction(Duration::from_secs(20)).unwrap();
    }
    keys
}

fn committed(addr: &str, group: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_record_once_and_a_group_of_two_shares_then_hands_over() {
    let dir = tempdir("native-consumer");
    let b = Broker::start(&dir);
    let addr = b.addr();
    create_topic(&addr).await;

    let mut sent = produce(&addr, "lz4", 0, 2_000);
    sent.extend(produce(&addr, "zstd", 2_000, 2_400));
    sent.extend(produce(&addr, "none", 2_400, 2_500));
    let aborted = transaction(&addr, false, 50);
    let committed_txn = transaction(&addr, true, 30);
    let total = sent.len() + committed_txn.len();

    let a = Running::start(&addr, "native-group");
    wait(
        "the first member reads everything",
        Duration::from_secs(30),
        || a.with(|s| s.records.len() >= total),
    );
    std::thread::sleep(Duration::from_millis(300));
    a.with(|s| {
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.records.len(), total, "nothing more than the committed records");
        assert_eq!(s.assigned, (0..PARTITIONS).collect());
        let by_key: BTreeMap<&str, (i32, &str, Option<&str>)> = s
            .records
            .iter()
            .map(|((p, o), (k, v, e))| {
                let _ = o;
                (k.as_str(), (*p, v.as_str(), e.as_deref()))
            })
            .collect();
        for (k, (p, v)) in &sent {
            let got = by_key.get(k.as_str()).unwrap_or_else(|| panic!("{k} not read"));
            assert_eq!((got.0, got.1), (*p, v.as_str()), "{k}");
            let i: usize = k[1..].parse().unwrap();
            assert_eq!(got.2, Some(format!("gw/{p}/{i}").as_str()), "{k}'s header");
        }
        for k in &committed_txn {
            assert!(by_key.contains_key(k.as_str()), "committed {k} not read");
        }
        for k in &aborted {
            assert!(!by_key.contains_key(k.as_str()), "aborted {k} was handed over");
        }
        // The partition ends it reports are the topic's.
        let read_end: BTreeMap<i32, i64> = (0..PARTITIONS)
            .map(|p| {
                let last = s
                    .records
                    .range((p, 0)..=(p, i64::MAX))
                    .next_back()
                    .map(|x| x.0 .1);
                (p, last.unwrap_or(-1))
            })
            .collect();
        for (p, end) in &s.ends {
            assert!(
                *end > read_end[p],
                "partition {p}: end {end} vs last read {}",
                read_end[p]
            );
        }
    });
    // Its commits are where it stands (partition 0 ends past the last transaction's marker).
    let ends: Vec<i64> = a.with(|s| (0..PARTITIONS).map(|p| s.ends[&p]).collect());
    wait("offsets committed", Duration::from_secs(15), || {
        committed(&addr, "native-group") == ends
    });

    // A second member: the partitions are split between the two, none twice.
    let b2 = Running::start(&addr, "native-group");
    wait(
        "the group rebalanced over two members",
        Duration::from_secs(30),
        || {
            let (x, y) = (a.with(|s| s.assigned.clone()), b2.with(|s| s.assigned.clone()));
            x.len() == 2 && y.len() == 2 && x.is_disjoint(&y)
        },
    );
    // New records reach whichever member owns their partition, once.
    let more = produce(&addr, "lz4", 10_000, 10_400);
    let has = |r: &Running, k: &String| r.with(|s| s.records.values().any(|v| &v.0 == k));
    wait("the new records read", Duration::from_secs(30), || {
        more.keys().all(|k| has(&a, k) || has(&b2, k))
    });
    for k in more.keys() {
        assert!(!(has(&a, k) && has(&b2, k)), "{k} read by both members");
    }
    let owned_by_second = b2.with(|s| s.assigned.clone());
    b2.with(|s| {
        assert_eq!(s.duplicates, 0);
        for ((p, _), (k, ..)) in &s.records {
            assert!(
                owned_by_second.contains(p),
                "{k} from partition {p} it does not own"
            );
        }
    });

    // The second leaves: the first takes every partition again.
    drop(b2);
    wait(
        "the remaining member has every partition",
        Duration::from_secs(30),
        || a.with(|s| s.assigned.len() == PARTITIONS as usize),
    );
    let more2 = produce(&addr, "snappy", 20_000, 20_100);
    wait(
        "records after the hand-over read",
        Duration::from_secs(30),
        || a.with(|s| more2.keys().all(|k| s.records.values().any(|v| &v.0 == k))),
    );
    a.with(|s| assert_eq!(s.duplicates, 0));
    drop(a);
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_it_reads_every_leader_and_goes_on_when_a_node_dies() {
    const PARTS: i32 = 6;
    let dir = tempdir("native-consumer-cluster");
    let mut nodes = Broker::cluster(&dir, 3);
    common::cluster::wait_ready(&nodes);
    let all = common::cluster::bootstrap(&nodes);
    let placement = common::cluster::create_topic(&all, TOPIC, PARTS, 3).await;
    let leaders: BTreeSet<i32> = placement.values().map(|(l, _)| *l).collect();
    assert!(leaders.len() > 1, "leaders spread over the nodes: {placement:?}");

    let mut sent = produce_to(&all, "lz4", 0, 1_200, PARTS);
    let c = Running::start(&all, "native-cluster");
    let has_all = |c: &Running, sent: &BTreeMap<String, (i32, String)>| {
        c.with(|s| {
            let keys: BTreeSet<&str> = s.records.values().map(|v| v.0.as_str()).collect();
            sent.keys().all(|k| keys.contains(k.as_str()))
        })
    };
    wait(
        "every partition read from its leader",
        Duration::from_secs(60),
        || has_all(&c, &sent),
    );

    // The leader of partition 0 dies; the others take its partitions over.
    let victim = placement[&0].0;
    nodes[(victim - 1) as usize].kill9();
    let alive: Vec<String> = nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.addr())
        .collect();
    let alive = alive.join(",");
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &alive)
        .create()
        .unwrap();
    wait("new leaders", Duration::from_secs(60), || {
        let p = common::cluster::placement(&probe, TOPIC);
        p.len() == PARTS as usize && p.values().all(|(l, _)| *l > 0 && *l != victim)
    });
    sent.extend(produce_to(&alive, "zstd", 5_000, 5_600, PARTS));
    wait(
        "records written after the failover read",
        Duration::from_secs(90),
        || has_all(&c, &sent),
    );
    c.with(|s| {
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.records.len(), sent.len(), "nothing but what was written");
    });
    drop(c);
    drop(nodes);
    std::fs::remove_dir_all(dir).ok();
}
