//! A cluster node: the metadata group, the partition groups its replicas name, the transport.
//!
//! # Start
//! The node opens its store, starts serving its Raft listener and the metadata group. On a
//! fresh cluster the node with the lowest id initializes the metadata group with every node of
//! the static peer list; the others wait to be contacted. Every node then registers its
//! addresses in the metadata ([`MetaCommand::RegisterNode`]), forwarding to the metadata leader
//! when it does not lead.
//!
//! # Partition groups follow the metadata
//! A task watches the applied metadata and reconciles: a partition whose replicas name this
//! node gets a Raft group, a state machine and a sequencer (the preferred leader, first in the
//! replica list, initializes a new group); a partition of a deleted topic is shut down and its
//! data dropped. After a restart the same reconciliation brings every group back from the store.
//!
//! # Replacing a node
//! A node that died for good is replaced by a new one (see [`membership`]): the new node starts
//! with `join` set (it initializes nothing and waits to be added), and
//! [`MetaCommand::ReplaceNode`] puts it in the old one's places; every group's leader then
//! changes the group's membership to match.

mod catalog;
mod leadership;
pub mod membership;
mod retention;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::machine::OffsetsView;
use super::machine::{GroupMachine, Observer};
use super::net::{self, Groups, Network};
use super::sequencer::Sequencer;
use super::store::{NodeStore, Slot};
use super::{partition_config, Command, GroupId, GroupRaft, NodeAddr, NodeId, Response, Timing};
use crate::sm::metadata::{assign, MetaCommand, MetaOutcome, Metadata, ProducerIdBlock};
use crate::sm::offsets::{self, OFFSETS_PARTITIONS};
use crate::state::{Catalog, PartitionView, TopicView};

/// Copies of each partition and offsets log (fewer on a smaller cluster).
pub const REPLICATION_FACTOR: usize = 3;

/// How often the leader balancer looks (see [`Node::balance`]).
pub const BALANCE_EVERY: Duration = Duration::from_secs(2);

/// A follower more log entries than this behind its leader is out of sync (one entry is one
/// produce round, usually many records; a follower in step is a few entries behind at most).
pub const ISR_MAX_LAG: u64 = 1_000;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// The cluster's name (peers of another name are refused).
    pub cluster: String,
    /// Where the Raft listener binds.
    pub raft_listen: SocketAddr,
    /// This node's addresses as peers and clients reach them.
    pub addr: NodeAddr,
    /// The other nodes' Raft addresses.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// How often [`Node::maintain`] runs.
    pub maintenance: Duration,
    /// A node joining a running cluster in a replaced node's place: it initializes no group
    /// (not even on an empty store) and waits to be added.
    pub join: bool,
    /// Mutual TLS on every Raft link (`[cluster.tls]`).
    pub tls: Option<Arc<net::RaftTls>>,
}

/// A replica's committed log in brief (see [`Node::digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogDigest {
    /// First offset stored.
    pub log_start: i64,
    /// High watermark (commit point).
    pub high_watermark: i64,
    /// Bytes of the stored batches below the high watermark.
    pub bytes: u64,
    /// CRC32C of those bytes, batch after batch.
    pub crc32c: u32,
}

/// A partition this node holds a replica of.
#[derive(Debug, Clone)]
pub struct Hosted {
    /// Its Raft group.
    pub raft: GroupRaft,
    /// Its state machine.
    pub machine: GroupMachine,
    /// Its sequencer (answers only while this node leads).
    pub sequencer: Sequencer,
    /// Its watermarks.
    pub view: Arc<PartitionView>,
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    store: NodeStore,
    net: Network,
    groups: Groups,
    meta_raft: GroupRaft,
    meta: watch::Receiver<Arc<Metadata>>,
    hosted: Mutex<HashMap<u64, Hosted>>,
    /// Notified whenever any hosted partition's watermark moves.
    pub appended: Arc<Notify>,
    /// Topics and the watermarks of the partitions hosted here, for the Kafka handlers.
    pub catalog: Catalog,
    /// Committed offsets of the offsets logs hosted here.
    pub offsets: OffsetsView,
    /// Group offsets pending in transactions, in the offsets logs hosted here.
    pub pending: crate::storage::PendingTable,
    offsets_rafts: Mutex<HashMap<u32, GroupRaft>>,
    /// The offsets logs' state machines (the transaction coordinator reads them).
    offsets_machines: Mutex<HashMap<u32, GroupMachine>>,
    /// Serialises the transaction coordinator's decisions on this node.
    txn_lock: tokio::sync::Mutex<()>,
    /// The producer ids this node hands out, and the next block, taken ahead (see
    /// [`Node::producer_id`]).
    pids: tokio::sync::Mutex<(ProducerIdBlock, Option<ProducerIdBlock>)>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Groups whose membership change this node is driving (see [`membership`]).
    changing: Arc<Mutex<std::collections::HashSet<u64>>>,
}

/// The openraft configuration of the metadata and offsets groups: like a partition's, but
/// snapshotted by log length (their state is small and holds everything).
fn small_group_config(t: Timing) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1_000),
        max_in_snapshot_log_to_keep: 100,
        ..partition_config(t)?
    }
    .validate()
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Node {
    /// Starts the node.
    pub async fn start(cfg: NodeConfig) -> std::io::Result<Arc<Node>> {
        let store = NodeStore::open(&cfg.data_dir.join("node.redb"))?;
        let listener = net::bind(cfg.raft_listen).await?;
        let groups = Groups::default();
        let routes = cfg.peers.iter().map(|(id, a)| (*id, a.clone())).collect();
        let net = Network::with_routes(cfg.cluster.clone(), cfg.id, routes).with_tls(cfg.tls.clone());
        let (tx, meta) = watch::channel(Arc::new(Metadata::default()));
        let key = GroupId::Metadata.key();
        let machine = GroupMachine::open(store.clone(), key, Observer::Metadata(tx))?;
        let config = Arc::new(small_group_config(cfg.timing).map_err(io)?);
        let meta_raft = GroupRaft::new(cfg.id, config, net.factory(key), store.log(key), machine)
            .await
            .map_err(io)?;
        groups.add(key, meta_raft.clone());
        let server = tokio::spawn({
            let (cluster, groups, id, heard) = (cfg.cluster.clone(), groups.clone(), cfg.id, net.heard());
            let tls = cfg.tls.clone();
            async move {
                if let Err(e) = net::serve(listener, cluster, id, groups, heard, tls).await {
                    warn!(error = %e, "the raft listener failed");
                }
            }
        });
        let node = Arc::new(Node {
            cfg,
            store,
            net,
            groups,
            meta_raft,
            meta,
            hosted: Mutex::new(HashMap::new()),
            appended: Arc::new(Notify::new()),
            catalog: Arc::default(),
            offsets: Arc::default(),
            pending: Arc::default(),
            offsets_rafts: Mutex::new(HashMap::new()),
            offsets_machines: Mutex::new(HashMap::new()),
            txn_lock: tokio::sync::Mutex::new(()),
            pids: tokio::sync::Mutex::new((ProducerIdBlock::default(), None)),
            tasks: Mutex::new(vec![server]),
            changing: Arc::default(),
        });
        let lowest = node.cfg.peers.keys().copied().chain([node.cfg.id]).min();
        if !node.cfg.join && lowest == Some(node.cfg.id) && node.store.get(key, Slot::Vote)?.is_none() {
            let members: BTreeMap<NodeId, NodeAddr> =
                node.members(node.cfg.peers.keys().copied().chain([node.cfg.id]));
            info!(
                nodes = members.len(),
                "initializing the metadata group of a new cluster"
            );
            node.meta_raft.initialize(members).await.map_err(io)?;
        }
        let reconcile = tokio::spawn(reconcile(Arc::downgrade(&node), node.meta.clone()));
        let register = tokio::spawn({
            let node = Arc::downgrade(&node);
            async move {
                loop {
                    let Some(n) = node.upgrade() else { return };
                    let cmd = MetaCommand::RegisterNode {
                        id: n.cfg.id,
                        addr: n.cfg.addr.clone(),
                    };
                    if n.propose_meta(cmd, Duration::from_secs(5)).await.is_ok() {
                        return;
                    }
                    drop(n);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let maintenance = tokio::spawn({
            let node = Arc::downgrade(&node);
            let every = node
                .upgrade()
                .map_or(Duration::from_secs(30), |n| n.cfg.maintenance);
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(n) = node.upgrade() else { return };
                    n.maintain(foundation::time::now_ms()).await;
                }
            }
        });
        // Keeps the next block of producer ids in hand, so that InitProducerId never waits
        // for the metadata quorum while this node has ids (a node cut off from its peers
        // still hands out ids of its own, unique by construction).
        let pid_reserve = tokio::spawn({
            let node = Arc::downgrade(&node);
            async move {
                loop {
                    let Some(n) = node.upgrade() else { return };
                    n.reserve_producer_ids().await;
                    drop(n);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        // The transaction coordinator's sweep: prepared transactions finished, expired aborted.
        let txn_sweep = tokio::spawn({
            let node = Arc::downgrade(&node);
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(n) = node.upgrade() else { return };
                    n.txn_sweep(foundation::time::now_ms()).await;
                }
            }
        });
        let pinger = tokio::spawn({
            let node = Arc::downgrade(&node);
            async move {
                let every = Duration::from_millis(node.upgrade().map_or(250, |n| n.cfg.timing.heartbeat_ms));
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(n) = node.upgrade() else { return };
                    let peers = n.members(n.peer_ids());
                    let net = n.net.clone();
                    drop(n);
                    let pings = peers
                        .into_iter()
                        .map(|(id, a)| {
                            let net = net.clone();
                            async move { net.ping(id, &a.raft, every).await }
                        })
                        .collect::<Vec<_>>();
                    futures::future::join_all(pings).await;
                }
            }
        });
        let balancer = tokio::spawn({
            let node = Arc::downgrade(&node);
            async move {
                let mut tick = tokio::time::interval(BALANCE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(n) = node.upgrade() else { return };
                    n.converge().await;
                    n.balance().await;
                }
            }
        });
        node.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend([
            reconcile,
            register,
            maintenance,
            pid_reserve,
            txn_sweep,
            pinger,
            balancer,
        ]);
        Ok(node)
    }

    /// Why the node's store last failed to write, while no write has succeeded since.
    pub fn write_failure(&self) -> Option<String> {
        self.store.write_failure()
    }

    /// Whether opening this node's store needed redb's full repair.
    pub fn opened_with_repair(&self) -> bool {
        self.store.opened_with_repair()
    }

    /// Damaged data this node's store met, if any (the groups it hit stopped here).
    pub fn damage(&self) -> Option<String> {
        self.store.damage()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The applied metadata.
    pub fn metadata(&self) -> Arc<Metadata> {
        self.meta.borrow().clone()
    }

    /// Every node of the static member list, sorted.
    fn all_nodes(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.cfg.peers.keys().copied().chain([self.cfg.id]).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The other nodes this node talks to: the registered and the statically listed ones,
    /// less the retired.
    fn peer_ids(&self) -> Vec<NodeId> {
        let meta = self.metadata();
        let mut ids: Vec<NodeId> = meta
            .nodes
            .keys()
            .chain(self.cfg.peers.keys())
            .copied()
            .filter(|id| *id != self.cfg.id && !meta.replaced.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every partition and offsets log hosted here, with its replicas as the metadata places
    /// them (the preferred leader first).
    fn placed_groups(&self) -> Vec<(u64, GroupRaft, Vec<NodeId>)> {
        let meta = self.metadata();
        let mut out = Vec::new();
        let hosted: Vec<(u64, GroupRaft)> = self
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, h)| (*k, h.raft.clone()))
            .collect();
        for (key, raft) in hosted {
            let Some(GroupId::Partition { topic, partition }) = GroupId::from_key(key) else {
                continue;
            };
            let replicas = meta
                .topics
                .values()
                .find(|t| t.id == topic)
                .and_then(|t| t.replicas.get(partition as usize));
            if let Some(r) = replicas {
                out.push((key, raft, r.clone()));
            }
        }
        let logs: Vec<(u32, GroupRaft)> = self
            .offsets_rafts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, r)| (*n, r.clone()))
            .collect();
        for (n, raft) in logs {
            out.push((GroupId::Offsets(n).key(), raft, self.offsets_replicas(n)));
        }
        out
    }

    /// The replicas of offsets log `n`: as the metadata records them once a replacement
    /// changed them, else as the static member list places them.
    pub fn offsets_replicas(&self, n: u32) -> Vec<NodeId> {
        let meta = self.metadata();
        if let Some(r) = meta.offsets_replicas.get(n as usize) {
            return r.clone();
        }
        assign(&self.all_nodes(), n + 1, REPLICATION_FACTOR, 0)
            .pop()
            .unwrap_or_default()
    }

    /// Starts the offsets logs this node holds a replica of and stops (dropping their data)
    /// those it no longer does. A joining node holds none until the metadata that named it
    /// has reached it.
    async fn host_offsets(&self, meta: &Metadata) -> std::io::Result<()> {
        for n in 0..OFFSETS_PARTITIONS {
            let replicas = self.offsets_replicas(n);
            let key = GroupId::Offsets(n).key();
            let want =
                replicas.contains(&self.cfg.id) && !(self.cfg.join && meta.offsets_replicas.is_empty());
            let hosted = self
                .offsets_rafts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&n);
            if !want {
                if hosted {
                    let raft = self
                        .offsets_rafts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&n);
                    self.offsets_machines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&n);
                    self.groups.remove(key);
                    if let Some(r) = raft {
                        let _ = r.shutdown().await;
                    }
                    if let Err(e) = self.store.drop_group(key).await {
                        warn!(log = n, error = %e, "dropping an offsets log's data failed");
                    }
                }
                continue;
            }
            if hosted {
                continue;
            }
            let machine = GroupMachine::open(
                self.store.clone(),
                key,
                Observer::Offsets(self.offsets.clone(), self.pending.clone()),
            )?;
            self.offsets_machines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, machine.clone());
            let fresh = self.store.get(key, Slot::Vote)?.is_none();
            let config = Arc::new(small_group_config(self.cfg.timing).map_err(io)?);
            let raft = GroupRaft::new(
                self.cfg.id,
                config,
                self.net.factory(key),
                self.store.log(key),
                machine,
            )
            .await
            .map_err(io)?;
            self.groups.add(key, raft.clone());
            self.offsets_rafts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, raft.clone());
            // Offsets logs are made once, with the cluster: after a replacement recorded
            // their replicas, a new replica gets the log from the others.
            if fresh
                && replicas.first() == Some(&self.cfg.id)
                && !self.cfg.join
                && meta.offsets_replicas.is_empty()
            {
                let members = self.members(replicas.iter().copied());
                if let Err(e) = raft.initialize(members).await {
                    warn!(log = n, error = %e, "initializing an offsets log failed");
                }
            }
        }
        Ok(())
    }

    /// The node coordinating consumer group `group`: the leader of its offsets log.
    pub fn coordinator_of(&self, group: &str) -> Option<NodeId> {
        self.leader_of(GroupId::Offsets(offsets::partition_for(group)))
    }

    /// The node leading the metadata (Kafka's controller).
    pub fn controller(&self) -> Option<NodeId> {
        self.leader_of(GroupId::Metadata)
    }

    /// Brings the Kafka-facing catalog in line with the metadata and the hosted partitions.
    fn publish_catalog(&self, meta: &Metadata) {
        let hosted = self.hosted.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cat = self.catalog.topics.write().unwrap_or_else(|e| e.into_inner());
        cat.retain(|name, v| meta.topics.get(name).is_some_and(|m| m.id == v.meta.id));
        for (name, t) in &meta.topics {
            let partitions = (0..t.partitions)
                .map(|p| {
                    hosted
                        .get(
                            &GroupId::Partition {
                                topic: t.id,
                                partition: p,
                            }
                            .key(),
                        )
                        .map(|h| h.view.clone())
                        .unwrap_or_default()
                })
                .collect();
            cat.insert(
                name.clone(),
                Arc::new(TopicView {
                    meta: t.clone(),
                    partitions,
                }),
            );
        }
        drop(cat);
        self.catalog.appended.notify_waiters();
    }

    /// A hosted partition.
    pub fn partition(&self, topic: u32, partition: u32) -> Option<Hosted> {
        self.hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&GroupId::Partition { topic, partition }.key())
            .cloned()
    }

    /// Whole batches of a hosted partition from the one holding `from`, below `end`, up to
    /// about `max_bytes` (at least one when there is any).
    pub fn read(
        &self,
        topic: u32,
        partition: u32,
        from: i64,
        end: i64,
        max_bytes: usize,
    ) -> std::io::Result<Vec<u8>> {
        self.store.batches(
            GroupId::Partition { topic, partition }.key(),
            from,
            end,
            max_bytes,
        )
    }

    /// Stored batches of a hosted partition from `from` below `end` (tests and tools).
    pub fn store_batches(&self, topic: u32, partition: u32, from: i64, end: i64) -> Vec<u8> {
        self.store
            .batches(
                GroupId::Partition { topic, partition }.key(),
                from,
                end,
                usize::MAX,
            )
            .unwrap_or_default()
    }

    /// What this node's replica of a partition holds below its high watermark: where it
    /// starts, its end, and the byte count and CRC32C of the stored batches in order. Equal
    /// digests on two replicas mean byte-identical committed logs (tests and operators
    /// compare them after a fault). Read in 1 MiB steps; `None` for a partition not hosted.
    pub fn digest(&self, topic: u32, partition: u32) -> Option<std::io::Result<LogDigest>> {
        let hosted = self.partition(topic, partition)?;
        let hw = hosted.view.hw.load(std::sync::atomic::Ordering::SeqCst);
        let log_start = hosted.view.log_start.load(std::sync::atomic::Ordering::SeqCst);
        let mut d = LogDigest {
            log_start,
            high_watermark: hw,
            bytes: 0,
            crc32c: 0,
        };
        let mut from = log_start;
        while from < hw {
            let chunk = match self.read(topic, partition, from, hw, 1 << 20) {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let mut next = from;
            for (h, b) in crate::batch::iter(&chunk) {
                d.bytes += b.len() as u64;
                d.crc32c = crc32c::crc32c_append(d.crc32c, b);
                next = next.max(h.last_offset() + 1);
            }
            if next == from {
                break;
            }
            from = next;
        }
        Some(Ok(d))
    }

    /// Addresses of `ids`: from the registered nodes, else the static peer list.
    fn members(&self, ids: impl IntoIterator<Item = NodeId>) -> BTreeMap<NodeId, NodeAddr> {
        let meta = self.metadata();
        ids.into_iter()
            .map(|id| {
                let addr = if id == self.cfg.id {
                    self.cfg.addr.clone()
                } else {
                    meta.nodes.get(&id).cloned().unwrap_or_else(|| NodeAddr {
                        raft: self.cfg.peers.get(&id).cloned().unwrap_or_default(),
                        kafka: String::new(),
                        listeners: Default::default(),
                    })
                };
                (id, addr)
            })
            .collect()
    }

    /// Proposes a metadata change through whichever node leads the metadata group, retrying
    /// until `timeout` while there is no leader.
    pub async fn propose_meta(&self, cmd: MetaCommand, timeout: Duration) -> Result<MetaOutcome, String> {
        match self
            .propose(GroupId::Metadata, Command::Meta(cmd), timeout)
            .await?
        {
            Response::Meta(out) => Ok(out),
            other => Err(format!("the metadata group answered {other:?}")),
        }
    }

    /// Proposes `cmd` to `group` through its leader (this node or a peer).
    pub async fn propose(&self, group: GroupId, cmd: Command, timeout: Duration) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        let key = group.key();
        let raft = self
            .groups
            .get(key)
            .ok_or_else(|| format!("{group} is not on this node"))?;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            // A leader whose followers do not answer would wait for the commit forever: the
            // caller's deadline bounds it (the entry may still commit later; a retry of a
            // metadata or offsets command is then refused or overwrites with the same).
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(written) = tokio::time::timeout(left, raft.client_write(cmd.clone())).await else {
                let m = raft.metrics().borrow_watched().clone();
                last = format!(
                    "no commit in time (this node: {:?} in term {}, leader {:?}, last log {:?}, committed {:?})",
                    m.state, m.current_term, m.current_leader, m.last_log_index, m.cluster_committed
                );
                break;
            };
            match written {
                Ok(r) => return Ok(r.data),
                Err(e) => {
                    let forward = e.forward_to_leader().cloned();
                    last = e.to_string();
                    if let Some(f) = forward {
                        if let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) {
                            if leader != self.cfg.id {
                                let left = deadline.saturating_duration_since(Instant::now());
                                match self.net.propose(leader, &node.raft, key, &cmd, left).await {
                                    Ok(r) => return Ok(r),
                                    Err(e) => last = e,
                                }
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("proposing to {group}: {last}"))
    }

    /// Stops every group and task; the store closes when the last handle goes.
    pub async fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        let hosted: Vec<(u64, Hosted)> = self
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (key, h) in hosted {
            self.groups.remove(key);
            let _ = h.raft.shutdown().await;
        }
        let logs: Vec<(u32, GroupRaft)> = self
            .offsets_rafts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (n, raft) in logs {
            self.groups.remove(GroupId::Offsets(n).key());
            let _ = raft.shutdown().await;
        }
        self.groups.remove(GroupId::Metadata.key());
        let _ = self.meta_raft.shutdown().await;
        if let Err(e) = self.store.sync().await {
            warn!(error = %e, "the last writes of a stopping node did not reach the disk");
        }
        // Closed here rather than when the last handle goes: tasks the runtime has not
        // dropped yet may still hold one, and a file left open needs a repair at the next start.
        self.store.close();
    }

    /// Starts hosting a partition (after a restart, or when its topic appears).
    async fn host(
        &self,
        topic: u32,
        partition: u32,
        replicas: &[NodeId],
        moved: bool,
    ) -> std::io::Result<()> {
        let key = GroupId::Partition { topic, partition }.key();
        let view = Arc::new(PartitionView::default());
        let observer = Observer::Partition {
            view: view.clone(),
            appended: self.appended.clone(),
        };
        let machine = GroupMachine::open(self.store.clone(), key, observer)?;
        let fresh = self.store.get(key, Slot::Vote)?.is_none();
        let config = Arc::new(partition_config(self.cfg.timing).map_err(io)?);
        let raft = GroupRaft::new(
            self.cfg.id,
            config,
            self.net.factory(key),
            self.store.log(key),
            machine.clone(),
        )
        .await
        .map_err(io)?;
        self.groups.add(key, raft.clone());
        let sequencer = Sequencer::start(
            self.cfg.id,
            raft.clone(),
            machine.clone(),
            self.cfg.timing.lease(),
        );
        self.groups.add_sequencer(key, sequencer.clone());
        self.hosted.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Hosted {
                raft: raft.clone(),
                machine,
                sequencer,
                view,
            },
        );
        // A partition whose replicas changed has its log on the others: a new replica gets it
        // from them, and must not start a group of its own.
        if fresh && !moved && replicas.first() == Some(&self.cfg.id) {
            let members = self.members(replicas.iter().copied());
            if let Err(e) = raft.initialize(members).await {
                warn!(topic, partition, error = %e, "initializing a partition group failed");
            }
        }
        Ok(())
    }

    async fn unhost(&self, key: u64) {
        let h = self.hosted.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        self.groups.remove(key);
        if let Some(h) = h {
            let _ = h.raft.shutdown().await;
        }
        if let Err(e) = self.store.drop_group(key).await {
            warn!(group = key, error = %e, "dropping a deleted partition's data failed");
        }
    }
}

/// Keeps the hosted partitions in line with the applied metadata.
async fn reconcile(node: std::sync::Weak<Node>, mut meta: watch::Receiver<Arc<Metadata>>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let m = meta.borrow_and_update().clone();
        let mut want = BTreeMap::new();
        for t in m.topics.values() {
            for (p, replicas) in t.replicas.iter().enumerate() {
                if replicas.contains(&n.cfg.id) {
                    want.insert(
                        GroupId::Partition {
                            topic: t.id,
                            partition: p as u32,
                        }
                        .key(),
                        (t.id, p as u32, replicas.clone()),
                    );
                }
            }
        }
        let have: Vec<u64> = n
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for key in have.iter().filter(|k| !want.contains_key(k)) {
            n.unhost(*key).await;
        }
        for (key, (topic, partition, replicas)) in &want {
            if !have.contains(key) {
                let moved = m.moved.contains(&(*topic, *partition));
                if let Err(e) = n.host(*topic, *partition, replicas, moved).await {
                    warn!(topic, partition, error = %e, "hosting a partition failed");
                }
            }
        }
        if let Err(e) = n.host_offsets(&m).await {
            warn!(error = %e, "hosting the offsets logs failed");
        }
        n.groups.retire(m.replaced.keys().copied());
        n.publish_catalog(&m);
        drop(n);
        if meta.changed().await.is_err() {
            return;
        }
    }
}
