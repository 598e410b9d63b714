//! SIGTERM leaves clean data files: every database handle is dropped before the process
//! exits, so redb's "recovery required" mark is off and the next start needs no repair pass
//! (which reads the whole file). A single broker and the three nodes of a cluster, each after
//! taking writes; the data is there after a restart.

mod common;

use std::path::Path;

use common::cluster::{bootstrap, create_topic, wait_formed};
use common::{kcat, Broker};
use foundation::redb::needs_recovery;
use foundation::scratch::TempDir;

fn clean(file: &Path) -> bool {
    !needs_recovery(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn sigterm_leaves_a_single_brokers_file_clean() {
    let dir = TempDir::new("shutdown-single").unwrap();
    let mut b = Broker::start(dir.path());
    let lines: String = (0..100).map(|i| format!("reading-{i}\n")).collect();
    kcat(
        &["-P", "-b", &b.addr(), "-t", "t", "-p", "0"],
        Some(lines.as_bytes()),
    );
    let file = dir.path().join("broker.redb");
    assert!(!clean(&file), "redb marks the file while the broker has it open");
    let status = b.terminate();
    assert!(status.success(), "{status}");
    assert!(clean(&file), "SIGTERM left broker.redb needing a repair");
    b.start_again();
    let read = kcat(&["-C", "-b", &b.addr(), "-t", "t", "-p", "0", "-e", "-q"], None);
    assert_eq!(read, lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_every_cluster_nodes_file_clean() {
    let dir = TempDir::new("shutdown-cluster").unwrap();
    let mut nodes = Broker::cluster(dir.path(), 3);
    let addr = bootstrap(&nodes);
    wait_formed(&addr, 3);
    create_topic(&addr, "t", 1, 3).await;
    let lines: String = (0..100).map(|i| format!("reading-{i}\n")).collect();
    let a = addr.clone();
    let l = lines.clone();
    tokio::task::spawn_blocking(move || {
        kcat(
            &["-P", "-b", &a, "-t", "t", "-p", "0", "-X", "acks=all"],
            Some(l.as_bytes()),
        )
    })
    .await
    .unwrap();
    for (i, n) in nodes.iter_mut().enumerate() {
        let status = n.terminate();
        assert!(status.success(), "node {}: {status}", i + 1);
        let file = dir.path().join(format!("node-{}", i + 1)).join("node.redb");
        assert!(
            clean(&file),
            "SIGTERM left node {}'s node.redb needing a repair",
            i + 1
        );
    }
    for n in &mut nodes {
        n.start_again();
    }
    let addr = bootstrap(&nodes);
    let read = tokio::task::spawn_blocking(move || {
        foundation::wait::until(std::time::Duration::from_secs(60), "the records back", || {
            let out = std::process::Command::new("kcat")
                .env_remove("LD_LIBRARY_PATH") // Debian\'s librdkafka, not rdkafka-sys\'s
                .args(["-C", "-b", &addr, "-t", "t", "-p", "0", "-e", "-q"])
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            (text.lines().count() == 100).then_some(text)
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read, lines);
}

/// The `/metrics` gauge `name` of a broker.
fn gauge(b: &Broker, name: &str) -> f64 {
    let (code, body) = foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/metrics",
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// kill -9 leaves the file marked, yet the single broker commits with quick repair: the
/// restart opens it without redb's walk of every page, with every acknowledged record.
#[test]
fn after_kill_9_a_single_broker_opens_without_a_full_repair() {
    let dir = TempDir::new("kill9-single").unwrap();
    let mut b = Broker::start(dir.path());
    let lines: String = (0..200).map(|i| format!("reading-{i}\n")).collect();
    kcat(
        &["-P", "-b", &b.addr(), "-t", "t", "-p", "0", "-X", "acks=all"],
        Some(lines.as_bytes()),
    );
    b.restart();
    assert_eq!(
        gauge(&b, "cloud_storage_opened_with_repair"),
        0.0,
        "the restart after kill -9 walked the whole file"
    );
    let read = kcat(&["-C", "-b", &b.addr(), "-t", "t", "-p", "0", "-e", "-q"], None);
    assert_eq!(read, lines);
}

/// A bit flipped in the newest commit slot of `broker.redb`: the broker refuses to start and
/// says why and what to do. `storage verify --accept-rollback` tries the commit before; redb
/// cannot open it here (the clean close shrank the file past pages it refers to), so it says
/// so and leaves the file exactly as it found it, never worse.
#[test]
fn a_damaged_commit_slot_is_refused_and_never_made_worse() {
    let dir = TempDir::new("slot-single").unwrap();
    let mut b = Broker::start(dir.path());
    for i in 0..5 {
        kcat(
            &["-P", "-b", &b.addr(), "-t", "t", "-p", "0", "-X", "acks=all"],
            Some(format!("batch-{i}\n").as_bytes()),
        );
    }
    assert!(b.terminate().success());
    let file = dir.path().join("broker.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let primary = usize::from(bytes[9] & 0x01);
    bytes[64 + primary * 128 + 40] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloud-broker"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&[
        "run",
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a damaged commit slot");
    assert!(
        err.contains("newest commit") && err.contains("--accept-rollback"),
        "says what and what to do: {err}"
    );

    let out = run(&["storage", "verify", "--accept-rollback"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot be opened either") && err.contains("backup"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the file is left as it was found"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".damaged-"))
        .collect();
    assert!(left.is_empty(), "no stray copies: {left:?}");
}
