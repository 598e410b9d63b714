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
