//! Three broker processes as a replicated cluster, with the rdkafka crate (librdkafka) as the
//! client: a topic created with replication factor 3 has its partitions led by different
//! nodes; an idempotent acks=all producer writes through the leaders; a consumer group reads
//! everything exactly once and commits; the node leading a partition is killed with SIGKILL
//! mid-way and the producer carries on through the new leaders; every acknowledged record is
//! read back exactly once, at the offset it was acknowledged with.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{tempdir, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "replicated";
const PARTITIONS: i32 = 3;

fn bootstrap(nodes: &[Broker]) -> String {
    nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(",")
}

/// `partition -> (leader, replicas)` from a Metadata request.
fn placement(c: &BaseConsumer) -> BTreeMap<i32, (i32, usize)> {
    let md = c
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .expect("metadata");
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), (p.leader(), p.replicas().len())))
        .collect()
}

async fn produce(p: &FutureProducer, from: usize, n: usize, acked: &mut BTreeMap<(i32, i64), String>) {
    let futures: Vec<_> = (from..from + n)
        .map(|i| {
            let key = format!("k{}", i % 97);
            let value = format!("v{i}");
            let f = p
                .send_result(FutureRecord::to(TOPIC).key(&key).payload(&value))
                .unwrap_or_else(|(e, _)| panic!("{value} was not queued: {e}"));
            (value, f)
        })
        .collect();
    for (value, f) in futures {
        let d = f
            .await
            .expect("a delivery report")
            .unwrap_or_else(|(e, _)| panic!("{value} was not acknowledged: {e}"));
        let (partition, offset) = (d.partition, d.offset);
        assert!(
            acked.insert((partition, offset), value.clone()).is_none(),
            "two records acknowledged at {partition}/{offset}"
        );
    }
}

fn read_all(addr: &str, group: &str, want: usize) -> BTreeMap<(i32, i64), String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).unwrap();
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "read {} of {want} records in 60 s",
            got.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            // librdkafka reports a dead broker's connection as an error; it carries on.
            let Ok(m) = m else {
                continue;
            };
            let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            assert!(
                got.insert((m.partition(), m.offset()), value).is_none(),
                "read {}/{} twice",
                m.partition(),
                m.offset()
            );
        }
    }
    c.commit_consumer_state(CommitMode::Sync).expect("commit");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_a_replicated_topic_through_a_leader_kill() {
    let dir = tempdir("cluster");
    let mut nodes = Broker::cluster(&dir, 3);
    let addr = bootstrap(&nodes);
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    // The cluster is formed once every node has registered: Metadata then names all three.
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe
        .fetch_metadata(None, Duration::from_secs(5))
        .map_or(0, |m| m.brokers().len())
        < 3
    {
        assert!(Instant::now() < deadline, "the cluster did not form in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // The cluster forms while the client starts: retry until the controller answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = admin
            .create_topics(
                &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
                &opts,
            )
            .await
            .expect("CreateTopics");
        match res.as_slice() {
            [Ok(_)] => break,
            [Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))] => break,
            other => assert!(Instant::now() < deadline, "CreateTopics: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let placed = loop {
        let p = placement(&probe);
        if p.len() == PARTITIONS as usize && p.values().all(|(l, _)| *l > 0) {
            break p;
        }
        assert!(Instant::now() < deadline, "partitions without a leader: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        placed.values().all(|(_, r)| *r == 3),
        "three replicas each: {placed:?}"
    );
    let leaders: HashSet<i32> = placed.values().map(|(l, _)| *l).collect();
    assert!(leaders.len() >= 2, "leaders spread over the nodes: {placed:?}");
    // Every node's /api/cluster comes to tell the same story as Metadata (a follower learns
    // its leader from the leader's first heartbeat).
    for n in &nodes {
        let agrees = |v: &serde_json::Value| {
            v["mode"] == "cluster"
                && v["nodes"].as_array().map(|a| a.len()) == Some(3)
                && v["partitions"].as_array().is_some_and(|ps| {
                    ps.len() == PARTITIONS as usize
                        && ps.iter().all(|p| {
                            let id = p["partition"].as_i64().unwrap_or(-1) as i32;
                            p["hosted"] == true
                                && placed.get(&id).map(|(l, _)| i64::from(*l)) == p["leader"].as_i64()
                        })
                })
        };
        foundation::wait::until(
            Duration::from_secs(30),
            "/api/cluster to agree with Metadata",
            || {
                foundation::http::json(&format!("127.0.0.1:{}", n.http), "GET", "/api/cluster")
                    .ok()
                    .filter(agrees)
            },
        )
        .unwrap();
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut acked = BTreeMap::new();
    produce(&producer, 0, 3_000, &mut acked).await;
    let first = read_all(&addr, "readers", 3_000);
    assert_eq!(first, acked, "the group reads exactly what was acknowledged");

    // The leader of partition 0 dies; the producer carries on through the new leaders.
    let victim = placed[&0].0 as usize - 1;
    nodes[victim].kill9();
    produce(&producer, 3_000, 2_000, &mut acked).await;
    let all = read_all(&addr, "late-readers", 5_000);
    assert_eq!(
        all, acked,
        "every acknowledged record once, at its acknowledged offset"
    );
    // The first group's committed offsets survived: it reads only the new records.
    let rest = read_all(&addr, "readers", 2_000);
    assert_eq!(rest.len(), 2_000);
    assert!(rest.values().all(|v| v[1..].parse::<usize>().unwrap() >= 3_000));

    // The dead node comes back and catches up; nothing changes for the clients.
    nodes[victim].start_again();
    let again = read_all(&addr, "after-restart", 5_000);
    assert_eq!(again, acked);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
