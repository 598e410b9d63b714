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

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{tempdir, Broker};

/// The longest a script may run before it is killed (each has its own, shorter deadlines).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup (it makes .venv/ with kafka-python and confluent-kafka)",
        py.display()
    );
    py
}

/// Runs `tests/python/<script>` with `args`; panics with its output unless it exits 0.
fn run_script(script: &str, args: &[&str]) -> String {
    run_script_with(script, args, |_| None)
}

/// Like [`run_script`], calling `on_line` with every line the script prints; what it returns
/// is written to the script's stdin as a line.
fn run_script_with(script: &str, args: &[&str], mut on_line: impl FnMut(&str) -> Option<String>) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut stdin = child.stdin.take().unwrap();
    // Both pipes are drained on threads so that a chatty script cannot block on a full pipe.
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut out = String::new();
    let mut timed_out = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if let Some(reply) = on_line(&line) {
                    let _ = writeln!(stdin, "{reply}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    if timed_out {
        panic!("{script} {args:?} still running after {SCRIPT_TIMEOUT:?}; killed:\n{out}{err}");
    }
    assert!(
        status.success(),
        "{script} {args:?} failed ({status}):\n{out}{err}"
    );
    eprint!("{out}");
    out
}

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
