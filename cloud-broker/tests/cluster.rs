//! Three broker processes as a replicated cluster, with the rdkafka crate (librdkafka) as the
//! client: a topic created with replication factor 3 has its partitions led by different
//! nodes; an idempotent acks=all producer writes through the leaders; a consumer group reads
//! everything exactly once and commits; the node leading a partition is killed with SIGKILL
//! mid-way and the producer carries on through the new leaders; every acknowledged record is
//! read back exactly once, at the offset it was acknowledged with.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::cluster::{bootstrap, create_topic, placement, read_all as read_topic, wait_formed};
use common::Broker;
use foundation::scratch::TempDir;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "replicated";
const PARTITIONS: i32 = 3;

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
    read_topic(addr, TOPIC, group, want)
}

/// `partition -> in-sync replicas` from a Metadata request.
fn in_sync(c: &BaseConsumer) -> BTreeMap<i32, Vec<i32>> {
    let Ok(md) = c.fetch_metadata(Some(TOPIC), Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), p.isr().to_vec()))
        .collect()
}

/// What `cloud-broker cluster status` prints for the running nodes.
fn cluster_status(nodes: &[Broker]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cloud-broker"));
    cmd.args(["cluster", "status"]);
    for n in nodes.iter().filter(|n| n.is_running()) {
        cmd.args(["--node", &format!("127.0.0.1:{}", n.http)]);
    }
    let out = cmd.output().expect("cloud-broker cluster status");
    assert!(
        out.status.success(),
        "cluster status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_a_replicated_topic_through_a_leader_kill() {
    let dir = TempDir::new("cluster").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    let t0 = std::time::Instant::now();
    let step = |what: &str| println!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    wait_formed(&addr, 3);
    step("formed");
    let placed = create_topic(&addr, TOPIC, PARTITIONS, 3).await;
    step("topic created");
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
                // Each node's disk, asked over its Kafka listener.
                && v["nodes"].as_array().is_some_and(|ns| {
                    ns.iter().all(|n| n["disk"]["usable_bytes"].as_i64().is_some_and(|b| b > 0))
                })
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
    step("3,000 produced");
    let first = read_all(&addr, "readers", 3_000);
    step("read and committed");
    assert_eq!(first, acked, "the group reads exactly what was acknowledged");

    // The leader of partition 0 dies; the producer carries on through the new leaders.
    let victim = placed[&0].0 as usize - 1;
    nodes[victim].kill9();
    produce(&producer, 3_000, 2_000, &mut acked).await;
    step("2,000 more produced after the kill");
    let all = read_all(&addr, "late-readers", 5_000);
    assert_eq!(
        all, acked,
        "every acknowledged record once, at its acknowledged offset"
    );
    // The first group's committed offsets survived: it reads only the new records.
    let rest = read_all(&addr, "readers", 2_000);
    assert_eq!(rest.len(), 2_000);
    assert!(rest.values().all(|v| v[1..].parse::<usize>().unwrap() >= 3_000));
    // Metadata stops naming the dead node as in sync, and `cluster status` shows it.
    let dead = victim as i32 + 1;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    foundation::wait::until(Duration::from_secs(30), "the dead node out of every ISR", || {
        let isr = in_sync(&probe);
        (isr.len() == PARTITIONS as usize && isr.values().all(|i| !i.contains(&dead) && i.len() == 2))
            .then_some(())
    })
    .unwrap();
    step("the dead node out of every ISR");
    let status = cluster_status(&nodes);
    assert!(
        status.lines().filter(|l| l.starts_with(TOPIC)).count() == PARTITIONS as usize,
        "a line per partition: {status}"
    );

    // The dead node comes back and catches up; nothing changes for the clients; the leader
    // balancer hands its partitions back, and it is in sync again everywhere.
    nodes[victim].start_again();
    let again = read_all(&addr, "after-restart", 5_000);
    step("restarted and read again");
    assert_eq!(again, acked);
    let mut seen = (BTreeMap::new(), BTreeMap::new());
    foundation::wait::until(
        Duration::from_secs(60),
        "leadership back where creation put it",
        || {
            let now = placement(&probe, TOPIC);
            let isr = in_sync(&probe);
            let back = now
                .iter()
                .all(|(p, (l, _))| placed.get(p).map(|(pl, _)| pl) == Some(l))
                && isr.values().all(|i| i.len() == 3);
            seen = (now, isr);
            back.then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: placed {placed:?}, now {seen:?}\n{}", cluster_status(&nodes)));
    step("leadership back, all in sync");
    let status = cluster_status(&nodes);
    for (p, (leader, _)) in &placed {
        assert!(
            status.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 6
                    && f[0] == TOPIC
                    && f[1] == p.to_string()
                    && f[2] == leader.to_string()
                    && f[5] == "1,2,3"
            }),
            "partition {p} led by {leader}, all in sync: {status}"
        );
    }
    drop(nodes);
}
