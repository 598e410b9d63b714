//! Clients no one here wrote against a three-process cluster:
//! - kcat (Debian's, librdkafka 2.0.2): Metadata names all three brokers and partition leaders
//!   on different nodes; lines produced through the cluster come back byte for byte;
//! - kafka-python: a consumer group splits, rebalances and commits; the node coordinating the
//!   group (the leader of its offsets log) is killed with SIGKILL; another node takes over the
//!   coordination and a new member resumes exactly at the committed offsets;
//! - confluent-kafka: idempotent lz4 and zstd producers through the kill -9 of a partition's
//!   leader, then a consumer that reads every record exactly once.

mod common;

use std::time::Duration;

use common::cluster::{bootstrap, status, wait_ready};
use common::python::{run_script, run_script_with};
use common::{kcat, Broker};
use foundation::scratch::TempDir;

/// The node leading the offsets log that holds `group` (its coordinator), as every running
/// node agrees, once that is not `not`.
fn coordinator(nodes: &[Broker], group: &str, not: Option<u64>) -> u64 {
    let log = cloud_broker::sm::offsets::partition_for(group);
    foundation::wait::until(Duration::from_secs(30), "an agreed coordinator", || {
        let seen: Vec<Option<i64>> = nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| {
                status(n)?["offsets_logs"]
                    .as_array()?
                    .iter()
                    .find(|l| l["log"] == log)
                    .and_then(|l| l["leader"].as_i64())
            })
            .collect();
        let first = (*seen.first()?)?;
        (seen.iter().all(|l| *l == Some(first)) && not != Some(first as u64)).then_some(first as u64)
    })
    .unwrap()
}

#[test]
fn kcat_sees_every_broker_and_leaders_spread_and_reads_back_what_it_wrote() {
    let dir = TempDir::new("cluster-kcat").unwrap();
    let nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_ready(&nodes);
    // kcat creates nothing: make the topic with librdkafka's admin client first.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::cluster::create_topic(&addr, "lines", 3, 3));
    let md: serde_json::Value =
        serde_json::from_str(&kcat(&["-L", "-J", "-b", &addr, "-t", "lines"], None)).unwrap();
    assert_eq!(md["brokers"].as_array().map(Vec::len), Some(3), "{md}");
    let parts = md["topics"][0]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(parts.len(), 3, "{md}");
    let leaders: std::collections::HashSet<i64> = parts.iter().filter_map(|p| p["leader"].as_i64()).collect();
    assert!(leaders.len() >= 2, "leaders on different nodes: {md}");
    assert!(
        parts
            .iter()
            .all(|p| p["replicas"].as_array().map(Vec::len) == Some(3)),
        "{md}"
    );
    for p in 0..3 {
        let lines: String = (0..1_000).map(|i| format!("p{p} line {i}\n")).collect();
        kcat(
            &[
                "-P",
                "-b",
                &addr,
                "-t",
                "lines",
                "-p",
                &p.to_string(),
                "-X",
                "acks=all",
            ],
            Some(lines.as_bytes()),
        );
        let got = kcat(
            &[
                "-C",
                "-b",
                &addr,
                "-t",
                "lines",
                "-p",
                &p.to_string(),
                "-o",
                "beginning",
                "-e",
                "-q",
            ],
            None,
        );
        assert_eq!(got, lines, "partition {p} reads back byte for byte");
    }
    drop(nodes);
}

/// The admin APIs of Kafka tools' first screens through kafka-python and librdkafka, on the
/// replicated metadata: partitions added get replicas (and leaders) like created ones,
/// configs and DeleteRecords go through the Raft groups, ListOffsets is asked of leaders.
#[test]
fn admin_apis_answer_kafka_python_and_librdkafka_on_a_cluster() {
    let dir = TempDir::new("cluster-py-fidelity").unwrap();
    let nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_ready(&nodes);
    for client in ["kp", "ck"] {
        let out = run_script("admin_fidelity.py", &["--bootstrap", &addr, "--client", client]);
        assert!(out.contains("admin_fidelity: ok"), "{client}: {out}");
    }
    // OffsetDelete through librdkafka too (kafka-python's ran in the script).
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::cluster::offset_delete_through_librdkafka(
            &addr, "cl-od", 3,
        ));
    // Every node agrees the grown topic has five partitions, each with three replicas.
    for n in &nodes {
        let v = status(n).expect("status");
        let grown: Vec<&serde_json::Value> = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["topic"] == "fidelity-ck-grow")
            .collect();
        assert_eq!(grown.len(), 5, "{v}");
        assert!(
            grown
                .iter()
                .all(|p| p["replicas"].as_array().is_some_and(|r| r.len() == 3)),
            "{grown:?}"
        );
    }
    drop(nodes);
}

/// Transactions on the cluster: visibility (aborted records hidden from read_committed),
/// fencing, and a librdkafka exactly-once read-process-write loop through a kill -9 of the
/// transaction coordinator's node: read_committed output holds every input once. Then
/// kafka-python's transactional producer against the two nodes left.
#[test]
fn transactions_are_exactly_once_through_a_kill9_of_the_coordinators_node() {
    const TXN_ID: &str = "eos-app";
    let dir = TempDir::new("cluster-py-txn").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_ready(&nodes);
    let mut killed = None;
    let out = run_script_with(
        "txn_eos.py",
        &[
            "--bootstrap",
            &addr,
            "--client",
            "ck",
            "--tag",
            "cl",
            "--txn-id",
            TXN_ID,
            "--count",
            "3000",
            "--kill-at",
            "1000",
        ],
        |line| {
            (line == "kill-now").then(|| {
                let c = coordinator(&nodes, TXN_ID, None);
                nodes[c as usize - 1].kill9();
                killed = Some(c);
                "killed".to_string()
            })
        },
    );
    assert!(out.contains("txn_eos: ok"), "{out}");
    let c = killed.expect("the coordinator was killed");
    // Another node took the transactional id's offsets log over.
    assert_ne!(coordinator(&nodes, TXN_ID, Some(c)), c);
    let live: Vec<String> = nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.addr())
        .collect();
    let out = run_script(
        "txn_eos.py",
        &["--bootstrap", &live.join(","), "--client", "kp", "--tag", "clkp"],
    );
    assert!(out.contains("txn_eos: ok"), "{out}");
    drop(nodes);
}

#[test]
fn kafka_python_group_survives_the_kill_of_its_coordinators_node() {
    let dir = TempDir::new("cluster-py-group").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_ready(&nodes);
    let common = [
        "--topic",
        "readings",
        "--group",
        "dashboard",
        "--partitions",
        "6",
        "--replication-factor",
        "3",
    ];
    let with = |phase: &str, addr: &str, more: &[&str]| {
        let mut v = vec![phase.to_string(), "--bootstrap".into(), addr.to_string()];
        v.extend(common.iter().chain(more).map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("kp_group.py", &refs)
    };
    // Three members, one leaves, the rest take over; everything read once and committed.
    run(with("group", &addr, &["--count", "300"]));
    run(with(
        "produce",
        &addr,
        &["--prefix", "before-kill", "--count", "150"],
    ));
    let c = coordinator(&nodes, "dashboard", None);
    nodes[c as usize - 1].kill9();
    // Another node takes over the group's offsets log, and with it the coordination.
    coordinator(&nodes, "dashboard", Some(c));
    // The clients that follow know only the live nodes: kafka-python's admin client sends a
    // request to any broker it knows and fails on a refused connection instead of trying
    // another (Metadata, likewise, lists only live brokers).
    let live: Vec<String> = nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.addr())
        .collect();
    let addr = live.join(",");
    run(with(
        "produce",
        &addr,
        &["--prefix", "after-kill", "--count", "150"],
    ));
    // A new member starts exactly at the offsets committed through the dead coordinator.
    run(with(
        "resume",
        &addr,
        &["--expect", "before-kill:150", "after-kill:150"],
    ));
    drop(nodes);
}

#[test]
fn confluent_kafka_idempotent_producers_through_a_leader_kill9_read_exactly_once() {
    let dir = TempDir::new("cluster-py-confluent").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_ready(&nodes);
    let mut killed = None;
    let out = run_script_with(
        "ck_idempotent.py",
        &[
            "--bootstrap",
            &addr,
            "--topic",
            "uplink",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--count",
            "5000",
            "--restart-midway",
        ],
        |line| match line {
            "kill-now" => {
                // The leader of partition 0, as the nodes see it.
                let leader = nodes
                    .iter()
                    .find_map(|n| common::cluster::leader_seen_by(n, "uplink", 0))
                    .expect("a leader of uplink/0");
                nodes[leader as usize - 1].kill9();
                killed = Some(leader as usize - 1);
                Some("killed".into())
            }
            "start-now" => {
                nodes[killed.expect("killed first")].start_again();
                Some("restarted".into())
            }
            _ => None,
        },
    );
    assert!(killed.is_some(), "{out}");
    drop(nodes);
}
