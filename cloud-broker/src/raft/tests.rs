//! Replication of a partition group through openraft: the store against openraft's own
//! conformance suite, then three nodes in one process over the cut-able router (leader loss,
//! restart from disk, catch-up by snapshot after the log was purged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use foundation::scratch::TempDir;
use foundation::wait::until_async;
use openraft::async_runtime::WatchReceiver;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tokio::sync::Notify;

use super::machine::PartitionMachine;
use super::router::Router;
use super::store::{GroupLog, NodeStore};
use super::*;
use crate::batch::tests::make_batch;
use crate::state::PartitionView;

#[test]
fn group_keys_round_trip_and_do_not_collide() {
    let ids = [
        GroupId::Metadata,
        GroupId::Offsets(0),
        GroupId::Offsets(7),
        GroupId::Partition { topic: 0, partition: 0 },
        GroupId::Partition {
            topic: u32::MAX,
            partition: 9_999,
        },
        GroupId::Partition { topic: 1, partition: 0 },
    ];
    let keys: std::collections::BTreeSet<u64> = ids.iter().map(|g| g.key()).collect();
    assert_eq!(keys.len(), ids.len());
    for g in ids {
        assert_eq!(GroupId::from_key(g.key()), Some(g));
    }
    assert_eq!(GroupId::from_key(3 << KIND_SHIFT), None);
}

#[test]
fn the_partition_config_is_valid() {
    partition_config(Timing::default()).unwrap();
}

struct Builder;

fn storage_err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

impl StoreBuilder<TypeConfig, GroupLog, PartitionMachine, (TempDir, NodeStore)> for Builder {
    async fn build(&self) -> Result<((TempDir, NodeStore), GroupLog, PartitionMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new("raft-suite").map_err(storage_err)?;
        let store = NodeStore::open(&dir.path().join("node.redb")).map_err(storage_err)?;
        let group = GroupId::Partition { topic: 3, partition: 1 }.key();
        let sm = PartitionMachine::open(store.clone(), group, Arc::default(), Arc::default()).map_err(storage_err)?;
        Ok(((dir, store.clone()), store.log(group), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_passes_openraft_conformance_suite() {
    Suite::test_all(Builder).await.unwrap();
}

const GROUP: GroupId = GroupId::Partition { topic: 1, partition: 0 };

/// One node's replica of [`GROUP`].
struct Replica {
    id: NodeId,
    store: NodeStore,
    raft: GroupRaft,
    machine: PartitionMachine,
    view: Arc<PartitionView>,
}

async fn start(router: &Router, dir: &std::path::Path, id: NodeId, timing: Timing) -> Replica {
    let path = dir.join(format!("node-{id}.redb"));
    // A store closed a moment ago may still be held by its writer thread: wait for the file.
    let store = until_async(Duration::from_secs(10), "the store to reopen", || NodeStore::open(&path).ok())
        .await
        .unwrap();
    let group = GROUP.key();
    let view = Arc::new(PartitionView::default());
    let machine = PartitionMachine::open(store.clone(), group, view.clone(), Arc::new(Notify::new())).unwrap();
    let config = Arc::new(partition_config(timing).unwrap());
    let raft = GroupRaft::new(id, config, router.factory(id, group), store.log(group), machine.clone())
        .await
        .unwrap();
    router.add(id, group, raft.clone());
    Replica {
        id,
        store,
        raft,
        machine,
        view,
    }
}

async fn stop(router: &Router, r: Replica) {
    router.remove(r.id, GROUP.key());
    r.raft.shutdown().await.unwrap();
}

fn fast() -> Timing {
    Timing {
        heartbeat_ms: 50,
        election_ms: (300, 600),
    }
}

async fn leader(replicas: &[&Replica]) -> NodeId {
    until_async(Duration::from_secs(20), "a leader all replicas agree on", || {
        let seen: Vec<Option<NodeId>> = replicas
            .iter()
            .map(|r| r.raft.metrics().borrow_watched().current_leader)
            .collect();
        let l = seen[0]?;
        (seen.iter().all(|s| *s == Some(l)) && replicas.iter().any(|r| r.id == l)).then_some(l)
    })
    .await
    .unwrap()
}

/// Produces one batch of `n` records through `leader`: decided on its applied partition (the
/// test waits for each answer, so the applied state is the tip), logged, committed, applied.
async fn produce(leader: &Replica, n: i32) -> i64 {
    // A new leader decides only once it has applied everything committed before its term.
    leader
        .raft
        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
        .await
        .unwrap();
    let p = leader.machine.partition().await;
    let prepared = p.prepare(&make_batch(n, -1, -1, -1, 1)).unwrap();
    let cmd = prepared.command.unwrap();
    let resp = leader
        .raft
        .client_write(Command::Partition(cmd))
        .await
        .unwrap();
    assert_eq!(
        resp.data,
        Response::Partition {
            next_offset: prepared.base_offset + i64::from(n)
        }
    );
    prepared.base_offset
}

/// `(base offset, record count)` of every batch a replica holds below its high watermark.
fn held(r: &Replica) -> Vec<(i64, i32)> {
    let hw = r.view.hw.load(std::sync::atomic::Ordering::SeqCst);
    let raw = r.store.batches(GROUP.key(), 0, hw, usize::MAX).unwrap();
    crate::batch::iter(&raw)
        .map(|(h, _)| (h.base_offset, h.record_count))
        .collect()
}

fn members() -> BTreeMap<NodeId, NodeAddr> {
    (1..=3).map(|i| (i, NodeAddr::default())).collect()
}

async fn converged(replicas: &[&Replica], want: &[(i64, i32)]) {
    until_async(Duration::from_secs(20), "every replica to hold every batch", || {
        replicas.iter().all(|r| held(r) == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let got: Vec<_> = replicas.iter().map(|r| (r.id, held(r))).collect();
        panic!("{e}: want {want:?}, replicas hold {got:?}")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_survives_the_loss_and_restart_of_its_leader() {
    let dir = TempDir::new("raft-cluster").unwrap();
    let router = Router::default();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&router, dir.path(), id, fast()).await);
    }
    nodes[0].raft.initialize(members()).await.unwrap();
    let mut acked = Vec::new();
    let l = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let li = nodes.iter().position(|r| r.id == l).unwrap();
    for i in 0..20 {
        acked.push((produce(&nodes[li], 1 + i % 3).await, 1 + i % 3));
    }
    // The leader dies; the other two elect one and go on.
    let dead = nodes.remove(li);
    stop(&router, dead).await;
    let l2 = leader(&nodes.iter().collect::<Vec<_>>()).await;
    assert_ne!(l2, l);
    let li2 = nodes.iter().position(|r| r.id == l2).unwrap();
    for _ in 0..20 {
        acked.push((produce(&nodes[li2], 2).await, 2));
    }
    // Offsets are dense and never reused across the change of leader.
    let mut next = 0;
    for (base, n) in &acked {
        assert_eq!(*base, next, "acknowledged offsets: {acked:?}");
        next += i64::from(*n);
    }
    // The old leader comes back from its disk and catches up.
    nodes.push(start(&router, dir.path(), l, fast()).await);
    converged(&nodes.iter().collect::<Vec<_>>(), &acked).await;
    for r in nodes {
        stop(&router, r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let dir = TempDir::new("raft-snapshot").unwrap();
    let router = Router::default();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&router, dir.path(), id, fast()).await);
    }
    nodes[0].raft.initialize(members()).await.unwrap();
    let l = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let li = nodes.iter().position(|r| r.id == l).unwrap();
    let lagging = nodes.iter().position(|r| r.id != l).unwrap();
    let lag_id = nodes[lagging].id;
    for other in nodes.iter().filter(|r| r.id != lag_id) {
        router.set_cut(lag_id, other.id, true);
    }
    let mut acked = Vec::new();
    for _ in 0..10 {
        acked.push((produce(&nodes[li], 3).await, 3));
    }
    // Retention drops the first four batches; the leader snapshots and purges its log.
    let p = nodes[li].machine.partition().await;
    let kept: u64 = acked[4..].iter().map(|_| make_batch(3, -1, -1, -1, 1).len() as u64).sum();
    let cut = crate::sm::partition::PartitionCommand::Truncate {
        log_start: acked[4].0,
        bytes: kept,
    };
    assert!(p.head.next_offset > acked[4].0);
    nodes[li].raft.client_write(Command::Partition(cut)).await.unwrap();
    nodes[li].raft.trigger().snapshot().await.unwrap();
    let snap = until_async(Duration::from_secs(10), "the snapshot", || {
        nodes[li].raft.metrics().borrow_watched().snapshot
    })
    .await
    .unwrap();
    let upto = nodes[li]
        .store
        .purge_point(GROUP.key(), acked[4].0)
        .unwrap()
        .unwrap();
    assert!(upto < snap.index);
    nodes[li].raft.trigger().purge_log(upto).await.unwrap();
    until_async(Duration::from_secs(10), "the purge", || {
        (nodes[li].raft.metrics().borrow_watched().purged.map(|p| p.index) == Some(upto)).then_some(())
    })
    .await
    .unwrap();
    for _ in 0..3 {
        acked.push((produce(&nodes[li], 2).await, 2));
    }
    // Healed: the lagging follower can only catch up through the snapshot.
    for other in nodes.iter().filter(|r| r.id != lag_id) {
        router.set_cut(lag_id, other.id, false);
    }
    let want: Vec<(i64, i32)> = acked[4..].to_vec();
    until_async(Duration::from_secs(20), "the lagging follower to catch up", || {
        (held(&nodes[lagging]).ends_with(&want[want.len() - 3..])
            && nodes[lagging].view.log_start.load(std::sync::atomic::Ordering::SeqCst) == acked[4].0)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(held(&nodes[lagging]), want, "the batches from the log start on");
    assert!(
        nodes[lagging].raft.metrics().borrow_watched().snapshot.is_some(),
        "the follower caught up through a snapshot"
    );
    assert_eq!(held(&nodes[li])[..], want[..], "the leader keeps the same");
    for r in nodes {
        stop(&router, r).await;
    }
}
