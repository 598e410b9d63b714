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
                listeners: Default::default(),
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
            join: false,
            tls: None,
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

    // Produce to every partition through its leader's sequencer (once it leads with a
    // quorum's backing: what the sequencer needs to propose).
    for p in 0..3u32 {
        let l = leaders[p as usize];
        let n = &nodes[(l - 1) as usize];
        let h = until_async(Duration::from_secs(30), "the leader's lease", || {
            n.partition(topic.id, p).filter(|h| n.leads(&h.raft))
        })
        .await
        .unwrap();
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
    // The Kafka-facing catalog names the topic with the hosted watermarks (a follower's
    // learns the commit with the leader's next append or heartbeat).
    until_async(
        Duration::from_secs(30),
        "node 1's catalog at the high watermark",
        || {
            (nodes[0].catalog.topic("readings")?.partitions[2]
                .hw
                .load(Ordering::SeqCst)
                == 10)
                .then_some(())
        },
    )
    .await
    .unwrap();
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

/// The leader of partition `p` of topic `t` among `nodes`, leading with a quorum's backing.
fn leader_of(nodes: &[Arc<Node>], t: u32, p: u32) -> Option<Arc<Node>> {
    nodes
        .iter()
        .find(|n| n.partition(t, p).is_some_and(|h| n.leads(&h.raft)))
        .cloned()
}

/// A dead node is replaced by a new one: the new node starts with `join` and initializes
/// nothing; the replacement is refused while the old node lives or the new one is silent;
/// once recorded, every partition, offsets log and the metadata group end with the new node
/// as a voter in the old one's place, holding the same data; the new node takes over as the
/// preferred leader where the old one was, and the group keeps a quorum without another
/// original node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_and_the_new_one_takes_every_place() {
    let dir = TempDir::new("raft-replace").unwrap();
    let cfgs = configs(dir.path(), 3);
    let mut nodes = Vec::new();
    for c in &cfgs {
        nodes.push(start(c).await);
    }
    until_async(Duration::from_secs(30), "every node registered", || {
        nodes.iter().all(|n| n.metadata().nodes.len() == 3).then_some(())
    })
    .await
    .unwrap();
    let cmd = MetaCommand::CreateTopic {
        name: "readings".into(),
        partitions: 3,
        config: TopicConfig::default(),
        uuid: [3; 16],
        replicas: assign(&[1, 2, 3], 3, 3, 0),
    };
    let MetaOutcome::Created(topic) = nodes[0].propose_meta(cmd, Duration::from_secs(30)).await.unwrap()
    else {
        panic!("not created")
    };
    for p in 0..3u32 {
        let l = until_async(Duration::from_secs(30), "a leader", || {
            leader_of(&nodes, topic.id, p)
        })
        .await
        .unwrap();
        let h = l.partition(topic.id, p).unwrap();
        for _ in 0..5 {
            assert_eq!(
                h.sequencer.produce(make_batch(2, -1, -1, -1, 1)).await.code,
                Code::None
            );
        }
    }
    let codes = nodes[0]
        .commit_offsets("g", vec![("readings".into(), 0, 7, String::new())])
        .await;
    assert_eq!(codes, vec![Code::None]);

    // Node 3 dies for good.
    let dead = nodes.pop().unwrap();
    dead.stop().await;
    drop(dead);
    until_async(Duration::from_secs(30), "node 3 silent", || {
        (!nodes[0].alive(3) && !nodes[1].alive(3)).then_some(())
    })
    .await
    .unwrap();

    // Node 4 joins, reaching the cluster through nodes 1 and 2 only.
    let port = foundation::net::free_port().unwrap();
    let new_cfg = NodeConfig {
        id: 4,
        raft_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        addr: NodeAddr {
            raft: format!("127.0.0.1:{port}"),
            kafka: "127.0.0.1:9004".into(),
            listeners: Default::default(),
        },
        peers: cfgs[..2].iter().map(|c| (c.id, c.addr.raft.clone())).collect(),
        data_dir: dir.path().join("node-4"),
        join: true,
        tls: None,
        ..cfgs[2].clone()
    };
    // A node initializes its groups within `start`: a joining one has none to show after it.
    let joined = start(&new_cfg).await;
    assert!(
        (0..3).all(|p| joined.partition(topic.id, p).is_none()) && joined.metadata().topics.is_empty(),
        "a joining node starts nothing of its own"
    );

    let raft4 = new_cfg.addr.raft.clone();
    let e = nodes[0].replace(1, 4, &raft4).await.unwrap_err();
    assert!(e.contains("alive"), "{e}");
    let e = nodes[0].replace(3, 5, "127.0.0.1:1").await.unwrap_err();
    assert!(e.contains("does not answer"), "{e}");
    let e = joined.replace(3, 4, &raft4).await.unwrap_err();
    assert!(e.contains("ask a node"), "{e}");
    nodes[1].replace(3, 4, &raft4).await.unwrap();
    // Refused by the node's applied metadata, or by the metadata log if that is not applied
    // on this node yet.
    let e = nodes[0].replace(3, 4, &raft4).await.unwrap_err();
    assert!(
        e.contains("replaced by node 4 already") || e.contains("metadata refused"),
        "{e}"
    );
    nodes.push(joined);

    let want: Vec<u64> = vec![1, 2, 4];
    until_async(Duration::from_secs(60), "every group to move to node 4", || {
        let meta_ok = nodes.iter().any(|n| {
            n.controller() == Some(n.id()) && n.voters(super::GroupId::Metadata).as_deref() == Some(&want[..])
        });
        let partitions_ok = (0..3u32).all(|p| {
            leader_of(&nodes, topic.id, p).is_some_and(|l| {
                l.voters(super::GroupId::Partition {
                    topic: topic.id,
                    partition: p,
                })
                .as_deref()
                    == Some(&want[..])
            }) && nodes[2]
                .partition(topic.id, p)
                .is_some_and(|h| h.view.hw.load(Ordering::SeqCst) == 10)
        });
        let logs_ok = (0..crate::sm::offsets::OFFSETS_PARTITIONS).all(|n| {
            let log = super::GroupId::Offsets(n);
            nodes.iter().any(|node| {
                node.leader_of(log) == Some(node.id())
                    && node
                        .voters(log)
                        .is_some_and(|v| v.contains(&4) && !v.contains(&3))
            })
        });
        (meta_ok && partitions_ok && logs_ok).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let state: Vec<String> = nodes
            .iter()
            .map(|n| {
                let parts: Vec<String> = (0..3u32)
                    .map(|p| {
                        let g = super::GroupId::Partition {
                            topic: topic.id,
                            partition: p,
                        };
                        format!("p{p}: leader {:?} voters {:?}", n.leader_of(g), n.voters(g))
                    })
                    .collect();
                format!(
                    "node {}: meta voters {:?} {parts:?}",
                    n.id(),
                    n.voters(super::GroupId::Metadata)
                )
            })
            .collect();
        panic!("{e}: {state:#?}")
    });
    let meta = nodes[0].metadata();
    assert_eq!(meta.replaced.get(&3), Some(&4));
    assert!(!meta.nodes.contains_key(&3));
    assert!(topic_replicas_swapped(&meta, topic.id), "{:?}", meta.topics);
    until_async(
        Duration::from_secs(30),
        "node 4 to register its Kafka address",
        || {
            (nodes[0].metadata().nodes.get(&4).map(|a| a.kafka.as_str()) == Some("127.0.0.1:9004"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    until_async(
        Duration::from_secs(30),
        "node 4 to hold the group's offset",
        || {
            nodes[2]
                .offsets
                .read()
                .unwrap()
                .get(&("g".to_string(), "readings".to_string(), 0))
                .is_some_and(|o| o.offset == 7)
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Node 3 was partition 2's preferred leader: node 4 is now, and the balancer hands it over.
    until_async(Duration::from_secs(30), "node 4 to lead partition 2", || {
        leader_of(&nodes, topic.id, 2).filter(|l| l.id() == 4).map(|_| ())
    })
    .await
    .unwrap_or_else(|e| {
        let state: Vec<String> = nodes
            .iter()
            .map(|n| {
                let h = n.partition(topic.id, 2).unwrap();
                let m = h.raft.metrics().borrow_watched().clone();
                format!(
                    "node {}: {:?} term {} leader {:?} last {:?} replication {:?} membership {:?} alive(4) {}",
                    n.id(),
                    m.state,
                    m.current_term,
                    m.current_leader,
                    m.last_log_index,
                    m.replication,
                    m.membership_config.membership(),
                    n.alive(4)
                )
            })
            .collect();
        panic!("{e}: {state:#?}")
    });
    for p in 0..3u32 {
        let digests: Vec<_> = nodes
            .iter()
            .map(|n| n.digest(topic.id, p).unwrap().unwrap())
            .collect();
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "p{p}: replicas differ: {digests:?}"
        );
    }

    // Node 4 is a voter in its own right: with node 1 gone too, nodes 2 and 4 are a quorum.
    let first = nodes.remove(0);
    first.stop().await;
    drop(first);
    for p in 0..3u32 {
        let l = until_async(Duration::from_secs(30), "a leader among nodes 2 and 4", || {
            leader_of(&nodes, topic.id, p)
        })
        .await
        .unwrap();
        let h = l.partition(topic.id, p).unwrap();
        let r = h.sequencer.produce(make_batch(2, -1, -1, -1, 1)).await;
        assert_eq!((r.code, r.base_offset), (Code::None, 10), "p{p}");
    }
    for n in &nodes {
        n.stop().await;
    }
}

/// Whether every replica list of topic `id` names node 4 where it named node 3.
fn topic_replicas_swapped(meta: &crate::sm::metadata::Metadata, id: u32) -> bool {
    let t = meta.topics.values().find(|t| t.id == id).unwrap();
    t.replicas
        .iter()
        .zip(assign(&[1, 2, 3], 3, 3, 0))
        .all(|(now, was)| {
            *now == was
                .iter()
                .map(|n| if *n == 3 { 4 } else { *n })
                .collect::<Vec<_>>()
        })
}
