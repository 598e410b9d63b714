//! Cluster nodes in one process over loopback TCP: bootstrap from a static peer list, topic
//! creation through the metadata group from any node, partition groups spread over the nodes,
//! and a node restarted from its store hosting its partitions again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foundation::scratch::TempDir;
use foundation::wait::until_async;
use openraft::async_runtime::WatchReceiver;

use super::node::{Node, NodeConfig};
use super::{NodeAddr, Timing};
use crate::batch::tests::make_batch;
use crate::errors::Code;
use crate::sm::metadata::{assign, MetaCommand, MetaOutcome};
use crate::storage::TopicConfig;

fn configs(dir: &std::path::Path, n: u64) -> Vec<NodeConfig> {
    let ports: BTreeMap<u64, u16> = (1..=n)
        .map(|id| (id, foundation::net::free_port().unwrap()))
        .collect();
    (1..=n)
        .map(|id| NodeConfig {
            id,
            cluster: "test".into(),
            raft_listen: format!("127.0.0.1:{}", ports[&id]).parse().unwrap(),
            addr: NodeAddr {
                raft: format!("127.0.0.1:{}", ports[&id]),
                kafka: format!("127.0.0.1:{}", 9000 + id),
            },
            peers: ports
                .iter()
                .filter(|(p, _)| **p != id)
                .map(|(p, port)| (*p, format!("127.0.0.1:{port}")))
                .collect(),
            data_dir: dir.join(format!("node-{id}")),
            timing: Timing {
                heartbeat_ms: 50,
                election_ms: (300, 600),
            },
            maintenance: Duration::from_millis(200),
        })
        .collect()
}

async fn start(cfg: &NodeConfig) -> Arc<Node> {
    // A store closed a moment ago may still be held by its writer thread.
    let mut last = None;
    for _ in 0..250 {
        match Node::start(cfg.clone()).await {
            Ok(n) => return n,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("node {} did not start: {last:?}", cfg.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_on_any_node_is_replicated_with_leaders_spread() {
    let dir = TempDir::new("raft-nodes").unwrap();
    let cfgs = configs(dir.path(), 3);
    let mut nodes = Vec::new();
    for c in &cfgs {
        nodes.push(start(c).await);
    }
    until_async(
        Duration::from_secs(30),
        "every node registered on every node",
        || nodes.iter().all(|n| n.metadata().nodes.len() == 3).then_some(()),
    )
    .await
    .unwrap();
    assert_eq!(nodes[0].metadata().nodes[&2], cfgs[1].addr);

    // Created from the last node, whichever leads the metadata.
    let cmd = MetaCommand::CreateTopic {
        name: "readings".into(),
        partitions: 3,
        config: TopicConfig::default(),
        uuid: [7; 16],
        replicas: assign(&[1, 2, 3], 3, 3, 0),
    };
    let out = nodes[2].propose_meta(cmd, Duration::from_secs(10)).await.unwrap();
    let MetaOutcome::Created(topic) = out else {
        panic!("{out:?}")
    };
    let leaders = until_async(Duration::from_secs(30), "a leader for every partition", || {
        let mut leaders = Vec::new();
        for p in 0..3 {
            let seen: Vec<_> = nodes
                .iter()
                .map(|n| {
                    n.partition(topic.id, p)
                        .and_then(|h| h.raft.metrics().borrow_watched().current_leader)
                })
                .collect();
            let l = seen[0]?;
            if !seen.iter().all(|s| *s == Some(l)) {
                return None;
            }
            leaders.push(l);
        }
        Some(leaders)
    })
    .await
    .unwrap();
    assert_eq!(
        leaders,
        vec![1, 2, 3],
        "each partition led by its preferred leader"
    );

    // Produce to every partition through its leader's sequencer.
    for p in 0..3u32 {
        let l = leaders[p as usize];
        let h = nodes[(l - 1) as usize].partition(topic.id, p).unwrap();
        for i in 0..5 {
            let r = h.sequencer.produce(make_batch(2, -1, -1, -1, 1)).await;
            assert_eq!((r.code, r.base_offset), (Code::None, i * 2));
        }
        // A follower's sequencer refuses: clients must go to the leader.
        let f = nodes[(l % 3) as usize].partition(topic.id, p).unwrap();
        let r = f.sequencer.produce(make_batch(1, -1, -1, -1, 1)).await;
        assert_eq!(r.code, Code::NotLeaderOrFollower);
    }

    // Group offsets: committed from any node, replicated to every replica of the group's log.
    let codes = nodes[2]
        .commit_offsets(
            "g",
            vec![
                ("readings".into(), 1, 42, "m".into()),
                ("nope".into(), 0, 1, String::new()),
            ],
        )
        .await;
    assert_eq!(codes, vec![Code::None, Code::UnknownTopicOrPartition]);
    assert!(nodes[0].coordinator_of("g").is_some());
    until_async(Duration::from_secs(30), "the offset on every node", || {
        nodes
            .iter()
            .all(|n| {
                n.offsets
                    .read()
                    .unwrap()
                    .get(&("g".to_string(), "readings".to_string(), 1))
                    .is_some_and(|o| o.offset == 42)
            })
            .then_some(())
    })
    .await
    .unwrap();
    // The Kafka-facing catalog names the topic with the hosted watermarks.
    assert_eq!(
        nodes[0].catalog.topic("readings").unwrap().partitions[2]
            .hw
            .load(Ordering::SeqCst),
        10
    );
    let pid = nodes[1].producer_id().await.unwrap();
    assert_ne!(
        nodes[2].producer_id().await.unwrap(),
        pid,
        "nodes take separate blocks"
    );

    // Node 2 restarts from its store and hosts its partitions again, caught up.
    let old = nodes.remove(1);
    old.stop().await;
    drop(old);
    nodes.insert(1, start(&cfgs[1]).await);
    until_async(Duration::from_secs(30), "node 2 to catch up", || {
        (0..3u32)
            .all(|p| {
                nodes[1]
                    .partition(topic.id, p)
                    .is_some_and(|h| h.view.hw.load(Ordering::SeqCst) == 10)
            })
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let state: Vec<String> = (0..3u32)
            .map(|p| match nodes[1].partition(topic.id, p) {
                None => format!("p{p}: not hosted"),
                Some(h) => {
                    let m = h.raft.metrics().borrow_watched().clone();
                    format!(
                        "p{p}: hw {} state {:?} leader {:?} last_log {:?} applied {:?} committed {:?}",
                        h.view.hw.load(Ordering::SeqCst),
                        m.state,
                        m.current_leader,
                        m.last_log_index,
                        m.last_applied,
                        m.local_committed
                    )
                }
            })
            .collect();
        panic!("{e}: {state:#?} metadata {:?}", nodes[1].metadata())
    });
    for n in &nodes {
        n.stop().await;
    }
}

/// Retention on a replicated partition: the leader proposes the cut, every replica applies it,
/// snapshots and purges its own log; what stays is readable on every replica, and a node
/// restarted afterwards comes back with the same log start and data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_every_replica_and_purges_their_logs() {
    let dir = TempDir::new("raft-retention").unwrap();
    let cfgs = configs(dir.path(), 3);
    let mut nodes = Vec::new();
    for c in &cfgs {
        nodes.push(start(c).await);
    }
    let one = make_batch(2, -1, -1, -1, 1).len() as i64;
    let cmd = MetaCommand::CreateTopic {
        name: "short".into(),
        partitions: 1,
        config: TopicConfig {
            retention_bytes: Some(3 * one),
            ..TopicConfig::default()
        },
        uuid: [1; 16],
        replicas: assign(&[1, 2, 3], 1, 3, 0),
    };
    let MetaOutcome::Created(topic) = nodes[0].propose_meta(cmd, Duration::from_secs(30)).await.unwrap()
    else {
        panic!("not created")
    };
    let leader = until_async(Duration::from_secs(30), "a leader", || {
        nodes
            .iter()
            .find(|n| {
                // Leading with the quorum's backing: what the sequencer needs to propose.
                n.partition(topic.id, 0).is_some_and(|h| n.leads(&h.raft))
            })
            .cloned()
    })
    .await
    .unwrap();
    let h = leader.partition(topic.id, 0).unwrap();
    for _ in 0..10 {
        assert_eq!(
            h.sequencer.produce(make_batch(2, -1, -1, -1, 1)).await.code,
            Code::None
        );
    }
    until_async(
        Duration::from_secs(30),
        "every replica to apply the ten batches",
        || {
            nodes
                .iter()
                .all(|n| {
                    n.partition(topic.id, 0)
                        .is_some_and(|h| h.view.hw.load(Ordering::SeqCst) == 20)
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Maintenance runs on every node: the leader cuts, every replica purges.
    let first_stored = |n: &Node| {
        let raw = n.store_batches(topic.id, 0, 0, 20);
        let first = crate::batch::iter(&raw).next().map(|(b, _)| b.base_offset);
        first
    };
    until_async(Duration::from_secs(30), "every replica to cut and purge", || {
        nodes
            .iter()
            .all(|n| {
                n.partition(topic.id, 0)
                    .is_some_and(|h| h.view.log_start.load(Ordering::SeqCst) == 14)
                    && first_stored(n) == Some(14)
            })
            .then_some(())
    })
    .await
    .unwrap();
    for n in &nodes {
        let h = n.partition(topic.id, 0).unwrap();
        let raw = n.store_batches(topic.id, 0, 0, 20);
        let bases: Vec<i64> = crate::batch::iter(&raw).map(|(b, _)| b.base_offset).collect();
        assert_eq!(
            bases,
            vec![14, 16, 18],
            "node {} keeps the last three batches: purged {:?} snapshot {:?} applied {:?}",
            n.id(),
            h.raft.metrics().borrow_watched().purged,
            h.raft.metrics().borrow_watched().snapshot,
            h.raft.metrics().borrow_watched().last_applied,
        );
        assert_eq!(h.view.hw.load(Ordering::SeqCst), 20);
    }
    for n in &nodes {
        n.stop().await;
    }
}
