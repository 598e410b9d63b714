//! The broker with real Python Kafka clients, from `.venv/` (made by `scripts/setup` from
//! `tests/python/requirements.txt`): kafka-python's admin client; an acks=all producer; a
//! consumer group that splits its partitions, rebalances when a member leaves and when one is
//! killed mid-rebalance, and resumes from its committed offsets after the broker is killed
//! (SIGKILL) and restarted; kafka-python with `api_version` pinned to older releases;
//! confluent-kafka's idempotent producers with lz4 and zstd, through a broker kill, and a
//! consumer that reads every record exactly once; both admin clients listing, describing and
//! deleting consumer groups (a deletion surviving a kill -9); and the group protocol walked
//! state by state on the wire with kafka-python's own codec. The scenarios live in
//! `tests/python/*.py`; each exits non-zero saying what did not match.

mod common;

use common::python::{run_script, run_script_with};
use common::{tempdir, Broker};

#[test]
fn kafka_python_admin_creates_describes_and_deletes_a_topic() {
    let dir = tempdir("py-admin");
    let b = Broker::start(&dir);
    let out = run_script(
        "kp_admin.py",
        &[
            "--bootstrap",
            &b.addr(),
            "--topic",
            "kp-admin",
            "--partitions",
            "5",
            "--retention-ms",
            "3600000",
        ],
    );
    assert!(out.contains("kp_admin: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

/// The admin APIs of Kafka tools' first screens (CreatePartitions, configs, DeleteRecords,
/// ListOffsets case by case, DescribeLogDirs, OffsetDelete), through kafka-python and
/// librdkafka (`tests/python/admin_fidelity.py`).
#[test]
fn admin_apis_answer_kafka_python_and_librdkafka_as_kafka_does() {
    let dir = tempdir("py-fidelity");
    let b = Broker::start(&dir);
    for client in ["kp", "ck"] {
        let out = run_script(
            "admin_fidelity.py",
            &["--bootstrap", &b.addr(), "--client", client],
        );
        assert!(out.contains("admin_fidelity: ok"), "{client}: {out}");
    }
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

/// Transactions on one node: visibility, fencing, and librdkafka's exactly-once
/// read-process-write loop through a kill -9 and restart of the broker in the middle of a
/// transaction, the application restarting too (its new instance aborts the transaction
/// left open); kafka-python's transactional producer after (`tests/python/txn_eos.py`).
#[test]
fn transactions_are_exactly_once_through_a_kill9_of_the_broker() {
    let dir = tempdir("py-txn");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let out = run_script_with(
        "txn_eos.py",
        &[
            "--bootstrap",
            &addr,
            "--client",
            "ck",
            "--count",
            "3000",
            "--kill-at",
            "1000",
            "--new-clients-after-kill",
        ],
        |line| {
            (line == "kill-now").then(|| {
                b.kill9();
                b.restart();
                "killed".to_string()
            })
        },
    );
    assert!(out.contains("txn_eos: ok"), "{out}");
    let out = run_script(
        "txn_eos.py",
        &["--bootstrap", &addr, "--client", "kp", "--tag", "kptxn"],
    );
    assert!(out.contains("txn_eos: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kafka_python_with_api_version_pinned_from_2_0_to_3_0() {
    let dir = tempdir("py-pinned");
    let b = Broker::start(&dir);
    let out = run_script(
        "kp_pinned.py",
        &[
            "--bootstrap",
            &b.addr(),
            "--api-versions",
            "2.0",
            "2.4",
            "2.8",
            "3.0",
        ],
    );
    assert_eq!(out.matches("kp_pinned: ok").count(), 4, "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kafka_python_group_splits_rebalances_and_resumes_from_commits_after_kill9() {
    let dir = tempdir("py-group");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let common = ["--topic", "readings", "--group", "dashboard", "--partitions", "6"];
    let with = |phase: &str, more: &[&str]| {
        let mut v = vec![phase, "--bootstrap", &addr];
        v.extend_from_slice(&common);
        v.extend_from_slice(more);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("kp_group.py", &refs)
    };
    // Three members, one leaves, the rest take over; everything read once and committed.
    run(with("group", &["--count", "300"]));
    // Produced after the last commit: acknowledged (acks=all) before the kill, so it survives.
    run(with("produce", &["--prefix", "before-kill", "--count", "150"]));
    b.restart();
    run(with("produce", &["--prefix", "after-restart", "--count", "150"]));
    // A new consumer in the group starts exactly at the committed offsets.
    run(with(
        "resume",
        &["--expect", "before-kill:150", "after-restart:150"],
    ));
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn confluent_kafka_idempotent_lz4_and_zstd_producers_read_exactly_once_across_a_kill9() {
    let dir = tempdir("py-confluent");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let mut restarts = 0;
    let out = run_script_with(
        "ck_idempotent.py",
        &[
            "--bootstrap",
            &addr,
            "--topic",
            "uplink",
            "--partitions",
            "3",
            "--count",
            "5000",
            "--restart-midway",
        ],
        |line| match line {
            "kill-now" => {
                b.kill9();
                Some("killed".into())
            }
            "start-now" => {
                b.restart();
                restarts += 1;
                Some("restarted".into())
            }
            _ => None,
        },
    );
    assert_eq!(restarts, 1, "{out}");
    assert!(out.contains("ck_idempotent: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kafka_python_admin_lists_describes_and_deletes_groups_and_a_deletion_survives_a_kill9() {
    let dir = tempdir("py-group-admin");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let out = run_script("kp_group_admin.py", &["admin", "--bootstrap", &addr]);
    assert!(out.contains("kp_group_admin: ok"), "{out}");
    b.restart();
    let out = run_script("kp_group_admin.py", &["restart", "--bootstrap", &addr]);
    assert!(out.contains("kp_group_admin: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn confluent_kafka_admin_lists_describes_and_deletes_groups() {
    let dir = tempdir("py-ck-group-admin");
    let b = Broker::start(&dir);
    let out = run_script("ck_group_admin.py", &["--bootstrap", &b.addr()]);
    assert!(out.contains("ck_group_admin: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

/// Each group state answers as Kafka's coordinator does, seen through kafka-python's own
/// encoders and decoders; among them, an OffsetCommit of the current generation is accepted
/// while the group is PreparingRebalance (it was refused with REBALANCE_IN_PROGRESS).
#[test]
fn the_group_protocol_state_by_state_with_kafka_pythons_codec() {
    let dir = tempdir("py-group-protocol");
    let b = Broker::start(&dir);
    let out = run_script("kp_group_protocol.py", &["--bootstrap", &b.addr()]);
    assert!(out.contains("kp_group_protocol: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

/// The schema registry through confluent-kafka's SchemaRegistryClient and its JSON Schema and
/// Avro serializers and deserializers: registrations, lookups, versions, deletes, errors, and
/// records in Confluent's wire format read back by schema id; then, after a kill -9 and
/// restart of the broker, the same ids and records (`tests/python/schema_registry.py`).
#[test]
fn confluent_kafka_reads_and_writes_through_the_schema_registry_across_a_kill9() {
    let dir = tempdir("py-schema-registry");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let registry = format!("http://127.0.0.1:{}", b.http);
    let first = run_script(
        "schema_registry.py",
        &["write", "--bootstrap", &addr, "--registry", &registry],
    );
    assert!(first.contains("schema_registry: ok"), "{first}");
    b.restart();
    let second = run_script(
        "schema_registry.py",
        &["read", "--bootstrap", &addr, "--registry", &registry],
    );
    assert!(second.contains("schema_registry: ok"), "{second}");
    let ids = |out: &str| out.lines().find(|l| l.starts_with("ids ")).map(str::to_string);
    assert_eq!(ids(&first), ids(&second), "the ids survive the restart");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}
