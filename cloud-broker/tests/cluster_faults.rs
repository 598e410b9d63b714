//! Faults on a three-process cluster while an idempotent `acks=all` producer (librdkafka)
//! feeds a replicated topic without pause:
//! - the leader of a partition is killed with SIGKILL and restarted, 20 times over (set
//!   `CLUSTER_KILLS` for another count), printing each produce stall and p50/p99/max;
//! - a leader is frozen with SIGSTOP past the election timeout, then resumed: it steps down;
//! - a leader's Raft links are cut (a proxy on each): the majority keeps serving, the cut
//!   node acknowledges nothing, and after healing it rejoins;
//! - a node dies for good and `cloud-broker cluster replace` puts a new node in its place:
//!   the new node ends holding every replica the dead one held, and is a voter in its own
//!   right (the cluster keeps serving when another original node dies after).
//!
//! After each, every replica holds the same committed log byte for byte
//! (`/api/cluster/digests`), and a consumer reads every acknowledged record exactly once at
//! the offset it was acknowledged with, and nothing that was not produced.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    bootstrap, check_exactly_once, create_topic, init_producer_id_raw, leader_seen_by, produce_raw, read_all,
    stall_summary, wait_formed, wait_replicas_agree, Feeder, Stamped,
};
use common::Broker;
use foundation::scratch::TempDir;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

const PARTITIONS: i32 = 3;

/// One cluster at a time: three processes each on two cores is what the timings assume.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An idempotent acks=all producer whose requests time out after 5 s, on the broker and on
/// the socket (so one sent to a frozen node is retried elsewhere), that retries a restarted
/// broker at least every second, and whose records wait up to 2 minutes for delivery.
fn producer(addr: &str) -> FutureProducer<Stamped> {
    let mut c = ClientConfig::new();
    // librdkafka's own account of a failover, to look into a stall: RDKAFKA_DEBUG=metadata,eos.
    if let Ok(d) = std::env::var("RDKAFKA_DEBUG") {
        c.set("debug", d)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    c.set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("request.timeout.ms", "5000")
        .set("socket.timeout.ms", "5000")
        // librdkafka backs off reconnecting to a broker it saw die, doubling up to 10 s by
        // default; each round here kills and restarts a node, which then leads again.
        .set("reconnect.backoff.max.ms", "1000")
        .set("message.timeout.ms", "120000")
        .create_with_context(Stamped(Instant::now()))
        .expect("producer")
}

/// The leader of `partition` that every running node agrees on.
fn agreed_leader(nodes: &[Broker], topic: &str, partition: i32) -> u64 {
    foundation::wait::until(
        Duration::from_secs(30),
        "the running nodes to agree on a leader",
        || {
            let seen: Vec<Option<i64>> = nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| leader_seen_by(n, topic, partition))
                .collect();
            let first = (*seen.first()?)?;
            seen.iter().all(|l| *l == Some(first)).then_some(first as u64)
        },
    )
    .unwrap()
}

/// Waits until `feeder` has `n` more acknowledgements than `from`.
async fn acks_beyond(feeder: &Feeder, from: usize, n: usize, what: &str) {
    foundation::wait::until_async(Duration::from_secs(60), what, || {
        (feeder.acked() >= from + n).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; {} acknowledged; {}", feeder.acked(), feeder.trouble()));
}

/// How long after `t` partition `p` had an acknowledgement again (on a timeout, the panic
/// shows how each node sees the partitions).
async fn stall(nodes: &[Broker], feeder: &Feeder, p: i32, t: Instant) -> Duration {
    foundation::wait::until_async(Duration::from_secs(60), "produce to resume", || {
        feeder.first_ack_after(p, t)
    })
    .await
    .unwrap_or_else(|e| {
        let seen: Vec<String> = nodes
            .iter()
            .map(|n| {
                common::cluster::status(n).map_or_else(
                    || format!("{}: no answer", n.http),
                    |v| format!("node {}: {}", v["node"], v["partitions"]),
                )
            })
            .collect();
        panic!(
            "{e}; {} acknowledged in all; {}; as the nodes see it:\n{}",
            feeder.acked(),
            feeder.trouble(),
            seen.join("\n")
        )
    }) - t
}

/// Forms the cluster of `nodes`, creates `topic` (three replicas) and starts feeding it; once
/// 500 records are acknowledged.
async fn feed(nodes: &[Broker], topic: &str) -> Feeder {
    let addr = bootstrap(nodes);
    wait_formed(&addr, nodes.len());
    create_topic(&addr, topic, PARTITIONS, 3).await;
    let feeder = Feeder::start(producer(&addr), topic, PARTITIONS);
    acks_beyond(&feeder, 0, 500, "the first acknowledgements").await;
    feeder
}

/// Stops the feed, waits for the replicas to agree byte for byte, reads the topic back and
/// checks it against what was acknowledged; returns the records read.
async fn settle(
    nodes: &[Broker],
    topic: &str,
    feeder: Feeder,
) -> std::collections::BTreeMap<(i32, i64), String> {
    let fed = feeder.stop().await;
    assert_eq!(fed.refused, None, "the feed stopped on its own");
    assert!(
        fed.failed.is_empty(),
        "deliveries failed: {:?}",
        &fed.failed[..fed.failed.len().min(5)]
    );
    let agreed = wait_replicas_agree(nodes, topic, PARTITIONS as usize);
    let stored: i64 = agreed.values().map(|(start, hw, _, _)| hw - start).sum();
    assert!(
        stored as usize >= fed.acks.len(),
        "{stored} stored, {} acknowledged",
        fed.acks.len()
    );
    let read = read_all(&bootstrap(nodes), topic, "check", stored as usize);
    check_exactly_once(&fed, &read);
    println!(
        "{topic}: {} acknowledged, {} stored, replicas identical: {agreed:?}",
        fed.acks.len(),
        stored
    );
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_during_produce_lose_and_duplicate_nothing() {
    let _one = SERIAL.lock().await;
    const TOPIC: &str = "kills";
    let rounds: usize = std::env::var("CLUSTER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("kills").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let feeder = feed(&nodes, TOPIC).await;

    let mut stalls = Vec::new();
    for round in 1..=rounds {
        let leader = agreed_leader(&nodes, TOPIC, 0);
        let victim = leader as usize - 1;
        let t = Instant::now();
        nodes[victim].kill9();
        eprintln!("kill {round}: node {leader} killed");
        let elected = foundation::wait::until(Duration::from_secs(60), "a new leader", || {
            nodes
                .iter()
                .filter(|n| n.is_running())
                .any(|n| leader_seen_by(n, TOPIC, 0).is_some_and(|l| l != leader as i64))
                .then(|| t.elapsed())
        })
        .unwrap();
        let s = stall(&nodes, &feeder, 0, t).await;
        println!(
            "kill {round}/{rounds}: node {leader} (leader of partition 0) killed; a new leader after {elected:?}, \
             partition 0 stalled {s:?}"
        );
        stalls.push(s);
        // It comes back and catches up to where the others were when it died.
        let high = feeder.high_offsets();
        nodes[victim].start_again();
        foundation::wait::until(Duration::from_secs(60), "the restarted node to catch up", || {
            let d = common::cluster::digests(&nodes[victim], TOPIC)?;
            (d.len() == PARTITIONS as usize
                && d.iter()
                    .all(|(p, (_, hw, _, _))| *hw > high.get(&(*p as i32)).copied().unwrap_or(-1)))
            .then_some(())
        })
        .unwrap();
    }
    println!("leader kills: {}", stall_summary(&stalls));
    settle(&nodes, TOPIC, feeder).await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_the_election_timeout_steps_down_and_acknowledges_nothing_lost() {
    let _one = SERIAL.lock().await;
    const TOPIC: &str = "frozen";
    let dir = TempDir::new("frozen").unwrap();
    let nodes = Broker::cluster(dir.path(), 3);
    let feeder = feed(&nodes, TOPIC).await;

    let leader = agreed_leader(&nodes, TOPIC, 0);
    let frozen = &nodes[leader as usize - 1];
    let t = Instant::now();
    frozen.signal(libc::SIGSTOP);
    // The others elect a new leader and the producer finds it.
    let s = stall(&nodes, &feeder, 0, t).await;
    println!("node {leader} frozen; partition 0 stalled {s:?}");
    let others: Vec<&Broker> = nodes
        .iter()
        .filter(|n| n.is_running() && n.port != frozen.port)
        .collect();
    let successor = foundation::wait::until(Duration::from_secs(30), "a new leader", || {
        let l = leader_seen_by(others[0], TOPIC, 0)?;
        (l != leader as i64 && leader_seen_by(others[1], TOPIC, 0) == Some(l)).then_some(l)
    })
    .unwrap();
    // Frozen for at least twice the longest election timeout in all.
    let frozen_for = Duration::from_secs(6);
    tokio::time::sleep(frozen_for.saturating_sub(t.elapsed())).await;
    let before = feeder.acked();
    frozen.signal(libc::SIGCONT);
    // It learns of the newer term and follows.
    foundation::wait::until(Duration::from_secs(30), "the resumed node to follow", || {
        (leader_seen_by(frozen, TOPIC, 0) == Some(successor)).then_some(())
    })
    .unwrap();
    acks_beyond(&feeder, before, 1_000, "acknowledgements after the resume").await;
    settle(&nodes, TOPIC, feeder).await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_acknowledges_nothing_and_rejoins() {
    let _one = SERIAL.lock().await;
    const TOPIC: &str = "cut";
    let dir = TempDir::new("cut").unwrap();
    let (nodes, links) = Broker::cluster_linked(dir.path(), 3);
    let feeder = feed(&nodes, TOPIC).await;

    let leader = agreed_leader(&nodes, TOPIC, 0);
    let cut = &nodes[leader as usize - 1];
    let t = Instant::now();
    links.isolate(leader, true);
    let s = stall(&nodes, &feeder, 0, t).await;
    println!("node {leader} cut off; partition 0 stalled {s:?}");
    // The majority keeps serving.
    acks_beyond(&feeder, feeder.acked(), 1_000, "the majority to keep serving").await;
    // A produce sent straight to the cut node (no client routing around it) is refused: it
    // no longer claims the leadership it cannot exercise.
    const LONE: &str = "sent-to-the-cut-node";
    let t = Instant::now();
    let code = produce_raw(&cut.addr(), TOPIC, 0, LONE, 5_000).expect("a Produce answer");
    println!("the cut node answered error code {code} in {:?}", t.elapsed());
    assert_ne!(code, 0, "the cut node acknowledged a write");
    // It still hands out producer ids, from a block it took ahead: librdkafka asks the
    // broker it used last for a new id when it bumps its epoch, and a node that made it wait
    // for a quorum it cannot reach stalled every partition of the producer.
    let (code, pid) = init_producer_id_raw(&cut.addr()).expect("an InitProducerId answer");
    assert_eq!(code, 0, "the cut node refused a producer id");
    assert!(pid >= 0, "producer id {pid}");

    let before = feeder.acked();
    links.isolate(leader, false);
    let successor = agreed_leader(&nodes, TOPIC, 0);
    println!("healed; partition 0 led by node {successor}");
    acks_beyond(&feeder, before, 1_000, "acknowledgements after healing").await;
    let read = settle(&nodes, TOPIC, feeder).await;
    assert!(
        read.values().all(|v| v != LONE),
        "a record the cut node never acknowledged is stored"
    );
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_by_a_new_one_while_producing() {
    let _one = SERIAL.lock().await;
    const TOPIC: &str = "replaced";
    let dir = TempDir::new("replace").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let feeder = feed(&nodes, TOPIC).await;
    let raft_of = |v: &serde_json::Value, id: u64| -> String {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["raft"].as_str())
            .unwrap()
            .to_string()
    };
    let v = common::cluster::status(&nodes[0]).unwrap();
    let (raft1, raft2) = (raft_of(&v, 1), raft_of(&v, 2));

    // Node 3 dies for good; the others keep serving.
    let mut dead = nodes.remove(2);
    dead.kill9();
    let t = Instant::now();
    acks_beyond(&feeder, feeder.acked(), 1_000, "the two left to keep serving").await;

    // Node 4 joins through nodes 1 and 2, and is named in node 3's place.
    let r4 = common::free_port();
    let extra: Vec<String> = [
        "--node-id",
        "4",
        "--raft-listen",
        &format!("127.0.0.1:{r4}"),
        "--join",
        "--peer",
        &format!("1={raft1}"),
        "--peer",
        &format!("2={raft2}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    nodes.push(Broker::start_with(
        &dir.path().join("node-4"),
        common::free_port(),
        common::free_port(),
        extra,
    ));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cloud-broker"));
    cmd.args(["cluster", "replace", "--wait-secs", "120"]);
    for n in &nodes {
        cmd.args(["--node", &format!("127.0.0.1:{}", n.http)]);
    }
    cmd.args(["3", &format!("4=127.0.0.1:{r4}")]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("cluster replace ({:?} after node 3 died):\n{text}", t.elapsed());
    assert!(out.status.success(), "cluster replace failed: {text}");
    assert!(text.contains("done"), "{text}");
    let v = common::cluster::status(&nodes[0]).unwrap();
    assert_eq!(v["replaced"]["3"], 4, "{v}");
    for p in v["partitions"].as_array().unwrap() {
        let replicas: Vec<u64> = serde_json::from_value(p["replicas"].clone()).unwrap();
        assert!(replicas.contains(&4) && !replicas.contains(&3), "{p}");
    }

    // Node 4 is a voter in its own right: with node 1 dead too, nodes 2 and 4 serve.
    let mut first = nodes.remove(0);
    first.kill9();
    acks_beyond(&feeder, feeder.acked(), 1_000, "nodes 2 and 4 to serve").await;
    settle(&nodes, TOPIC, feeder).await;
    drop(dead);
    drop(first);
}
