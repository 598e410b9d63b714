//! The broker with real Python Kafka clients, from `.venv/` (made by `scripts/setup` from
//! `tests/python/requirements.txt`): kafka-python's admin client, an acks=all producer, a
//! three-member consumer group that rebalances when a member leaves and resumes from its
//! committed offsets after the broker is killed (SIGKILL) and restarted; confluent-kafka's
//! idempotent producers with lz4 and zstd and a consumer that reads every record exactly once.
//! The scenarios live in `tests/python/*.py`; each exits non-zero saying what did not match.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Drained on threads so that a chatty script cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => {
            eprint!("{out}");
            out
        }
        Some(s) => panic!("{script} {args:?} failed ({s}):\n{out}{err}"),
        None => panic!("{script} {args:?} still running after {SCRIPT_TIMEOUT:?}; killed:\n{out}{err}"),
    }
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
fn confluent_kafka_idempotent_lz4_and_zstd_producers_read_exactly_once() {
    let dir = tempdir("py-confluent");
    let b = Broker::start(&dir);
    let out = run_script(
        "ck_idempotent.py",
        &[
            "--bootstrap",
            &b.addr(),
            "--topic",
            "uplink",
            "--partitions",
            "3",
            "--count",
            "5000",
        ],
    );
    assert!(out.contains("ck_idempotent: ok"), "{out}");
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}
