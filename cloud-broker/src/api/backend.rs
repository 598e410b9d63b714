//! What the Kafka handlers stand on: one node's single writer over local storage, or a
//! cluster node whose partitions are Raft groups. Handlers call these methods and never ask
//! which.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Broker;
use crate::batch::{self, BatchHeader};
use crate::errors::Code;
use crate::raft::node::Node;
use crate::raft::NodeId;
use crate::sm::offsets::Commit;
use crate::state::{ProduceResult, Request, Writer};
use crate::storage::{Storage, TopicConfig};

/// The broker's engine.
#[derive(Debug)]
pub enum Backend {
    /// One node: the single writer applies everything to local storage.
    Single {
        /// The writer.
        writer: Writer,
        /// Reads.
        storage: Arc<dyn Storage>,
    },
    /// A node of a replicated cluster.
    Cluster(Arc<Node>),
}

/// A broker as Metadata and FindCoordinator name it: `(node id, host, port)`.
pub type BrokerAddr = (i32, String, i32);

fn parse_addr(id: NodeId, addr: &str) -> Option<BrokerAddr> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((i32::try_from(id).ok()?, host.to_string(), port.parse().ok()?))
}

/// A read ran into damaged stored data (see [`Broker::read`]); clients get
/// `KAFKA_STORAGE_ERROR` for the partition.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DamagedData(pub String);

/// Where a partition stands, for Metadata and `/api/cluster` (by default: nowhere known).
#[derive(Debug, Clone)]
pub struct PartitionPlace {
    /// The leader (-1: none known).
    pub leader: i32,
    /// Its epoch (the Raft term; -1 when not hosted here).
    pub epoch: i32,
    /// Every replica, preferred leader first.
    pub replicas: Vec<i32>,
    /// The replicas in sync, as this node knows them (see [`crate::raft::node::Node::in_sync`]).
    pub isr: Vec<i32>,
    /// On the leader: how many log entries each follower is behind.
    pub lag: BTreeMap<i32, u64>,
}

impl Default for PartitionPlace {
    fn default() -> Self {
        PartitionPlace {
            leader: -1,
            epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            lag: BTreeMap::new(),
        }
    }
}

impl Broker {
    /// Creates a topic (`replication` -1: the default) and, on a cluster, waits until this
    /// node's catalog has it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication: i16,
        config: TopicConfig,
    ) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                if replication > 1 {
                    return Code::InvalidReplicationFactor;
                }
                let (tx, rx) = oneshot::channel();
                if !writer.send(Request::CreateTopic {
                    name: name.into(),
                    partitions,
                    config,
                    reply: tx,
                }) {
                    return Code::KafkaStorageError;
                }
                rx.await.unwrap_or(Code::KafkaStorageError)
            }
            Backend::Cluster(node) => {
                let nodes = node.metadata().nodes.len().max(1);
                let factor = crate::raft::node::REPLICATION_FACTOR.min(nodes);
                if replication > 0 && replication as usize != factor {
                    return Code::InvalidReplicationFactor;
                }
                let code = node.create_topic(name, partitions, config).await;
                if code == Code::None {
                    let _ = wait_until(Duration::from_secs(5), || self.catalog.topic(name).is_some()).await;
                }
                code
            }
        }
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if writer.send(Request::DeleteTopic {
                    name: name.into(),
                    reply: tx,
                }) {
                    rx.await.unwrap_or(Code::KafkaStorageError)
                } else {
                    Code::KafkaStorageError
                }
            }
            Backend::Cluster(node) => node.delete_topic(name).await,
        }
    }

    /// Grows a topic to `partitions` partitions (`assignment`: each new partition's replicas,
    /// as the client named them).
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let me = self.cfg.node_id;
                if assignment.is_some_and(|a| a.iter().any(|r| r.as_slice() != [me])) {
                    return Code::InvalidReplicaAssignment;
                }
                let cmd = crate::sm::metadata::MetaCommand::AddPartitions {
                    name: name.into(),
                    partitions,
                    replicas: Vec::new(),
                };
                self.single_meta(writer, cmd).await
            }
            Backend::Cluster(node) => {
                let assignment = match assignment {
                    None => None,
                    Some(a) => match a
                        .into_iter()
                        .map(|r| r.into_iter().map(u64::try_from).collect::<Result<Vec<u64>, _>>())
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(a) => Some(a),
                        Err(_) => return Code::InvalidReplicaAssignment,
                    },
                };
                let code = node.add_partitions(name, partitions, assignment).await;
                if code == Code::None {
                    let _ = wait_until(Duration::from_secs(5), || {
                        self.catalog
                            .topic(name)
                            .is_some_and(|t| t.meta.partitions >= partitions)
                    })
                    .await;
                }
                code
            }
        }
    }

    /// Sets a topic's configs (all of them: what is not set is the default).
    pub async fn set_topic_config(&self, name: &str, config: TopicConfig) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let cmd = crate::sm::metadata::MetaCommand::SetTopicConfig {
                    name: name.into(),
                    config,
                };
                self.single_meta(writer, cmd).await
            }
            Backend::Cluster(node) => {
                let code = node.set_topic_config(name, config.clone()).await;
                if code == Code::None {
                    let _ = wait_until(Duration::from_secs(5), || {
                        self.catalog.topic(name).is_some_and(|t| t.meta.config == config)
                    })
                    .await;
                }
                code
            }
        }
    }

    async fn single_meta(&self, writer: &Writer, cmd: crate::sm::metadata::MetaCommand) -> Code {
        let (tx, rx) = oneshot::channel();
        if !writer.send(Request::Meta { cmd, reply: tx }) {
            return Code::KafkaStorageError;
        }
        rx.await.unwrap_or(Code::KafkaStorageError)
    }

    /// Kafka's DeleteRecords on one partition: `(code, log start after)`.
    pub async fn delete_records(&self, topic: &str, partition: u32, offset: i64) -> (Code, i64) {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if !writer.send(Request::DeleteRecords {
                    topic: topic.into(),
                    partition,
                    offset,
                    reply: tx,
                }) {
                    return (Code::KafkaStorageError, -1);
                }
                rx.await.unwrap_or((Code::KafkaStorageError, -1))
            }
            Backend::Cluster(node) => match self.catalog.topic(topic) {
                Some(t) if partition < t.meta.partitions => {
                    node.delete_records(t.meta.id, partition, offset).await
                }
                _ => (Code::UnknownTopicOrPartition, -1),
            },
        }
    }

    /// Forgets some of a group's committed offsets.
    pub async fn delete_offsets(&self, group: &str, partitions: Vec<(String, u32)>) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if !writer.send(Request::DeleteOffsets {
                    group: group.into(),
                    partitions,
                    reply: tx,
                }) {
                    return Code::KafkaStorageError;
                }
                rx.await.unwrap_or(Code::KafkaStorageError)
            }
            Backend::Cluster(node) => node.delete_offsets(group, partitions).await,
        }
    }

    /// InitProducerId for transactional id `id`: `(code, producer id, epoch)`.
    pub async fn txn_init(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<crate::sm::txn::Caller>,
    ) -> (Code, i64, i16) {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                let op = crate::state::TxnOp::Init {
                    id: id.into(),
                    timeout_ms,
                    expected,
                    reply: tx,
                };
                if !writer.send(Request::Txn(op)) {
                    return (Code::KafkaStorageError, -1, -1);
                }
                rx.await.unwrap_or((Code::KafkaStorageError, -1, -1))
            }
            Backend::Cluster(node) => match node.txn_init(id, timeout_ms, expected).await {
                Ok((pid, epoch)) => (Code::None, pid, epoch),
                Err(c) => (c, -1, -1),
            },
        }
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn.
    pub async fn txn_add(
        &self,
        id: &str,
        caller: crate::sm::txn::Caller,
        partitions: Vec<(String, u32)>,
        groups: Vec<String>,
    ) -> Code {
        let now_ms = foundation::time::now_ms();
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                let op = crate::state::TxnOp::Add {
                    id: id.into(),
                    caller,
                    partitions,
                    groups,
                    now_ms,
                    reply: tx,
                };
                if !writer.send(Request::Txn(op)) {
                    return Code::KafkaStorageError;
                }
                rx.await.unwrap_or(Code::KafkaStorageError)
            }
            Backend::Cluster(node) => node.txn_add(id, caller, partitions, groups, now_ms).await,
        }
    }

    /// EndTxn.
    pub async fn txn_end(&self, id: &str, caller: crate::sm::txn::Caller, commit: bool) -> Code {
        let now_ms = foundation::time::now_ms();
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                let op = crate::state::TxnOp::End {
                    id: id.into(),
                    caller,
                    commit,
                    now_ms,
                    reply: tx,
                };
                if !writer.send(Request::Txn(op)) {
                    return Code::KafkaStorageError;
                }
                rx.await.unwrap_or(Code::KafkaStorageError)
            }
            Backend::Cluster(node) => node.txn_end(id, caller, commit, now_ms).await,
        }
    }

    /// The transactional ids this node coordinates, with their states.
    pub async fn txn_list(&self) -> Vec<(String, crate::sm::txn::TxnState)> {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if !writer.send(Request::Txn(crate::state::TxnOp::List { reply: tx })) {
                    return Vec::new();
                }
                rx.await.unwrap_or_default()
            }
            Backend::Cluster(node) => node.txn_list().await,
        }
    }

    /// TxnOffsetCommit: offsets pending in producer `producer_id`'s transaction.
    pub async fn txn_offsets(
        &self,
        group: &str,
        producer_id: i64,
        offsets: Vec<crate::sm::offsets::Commit>,
    ) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                let op = crate::state::TxnOp::Offsets {
                    group: group.into(),
                    producer_id,
                    offsets,
                    reply: tx,
                };
                if !writer.send(Request::Txn(op)) {
                    return Code::KafkaStorageError;
                }
                rx.await.unwrap_or(Code::KafkaStorageError)
            }
            Backend::Cluster(node) => node.txn_offsets(group, producer_id, offsets).await,
        }
    }

    /// A new producer id: `(code, id, epoch)`.
    pub async fn init_producer_id(&self) -> (Code, i64, i16) {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if writer.send(Request::InitProducerId { reply: tx }) {
                    rx.await.unwrap_or((Code::KafkaStorageError, -1, -1))
                } else {
                    (Code::KafkaStorageError, -1, -1)
                }
            }
            Backend::Cluster(node) => match node.producer_id().await {
                Ok(id) => (Code::None, id, 0),
                Err(code) => (code, -1, -1),
            },
        }
    }

    /// Hands a record set to the partition's writer **now** (call in request order per
    /// connection); the result arrives on the returned receiver (after the write is durable),
    /// or nothing is sent when `reply` is false (acks=0).
    pub fn submit_produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<u8>,
        reply: bool,
    ) -> Option<oneshot::Receiver<ProduceResult>> {
        let (tx, rx) = oneshot::channel();
        let tx = reply.then_some(tx);
        match &self.backend {
            Backend::Single { writer, .. } => writer
                .send(Request::Produce {
                    topic: topic.into(),
                    partition,
                    records,
                    reply: tx,
                })
                .then_some(rx),
            Backend::Cluster(node) => {
                let hosted = self
                    .catalog
                    .topic(topic)
                    .and_then(|t| node.partition(t.meta.id, partition));
                match (hosted, tx) {
                    (Some(h), tx) => h.sequencer.submit(records, tx),
                    (None, Some(tx)) => {
                        let code = if self.catalog.topic(topic).is_some() {
                            Code::NotLeaderOrFollower
                        } else {
                            Code::UnknownTopicOrPartition
                        };
                        let _ = tx.send(ProduceResult::failed(code));
                    }
                    (None, None) => {}
                }
                Some(rx)
            }
        }
    }

    /// Whether this node holds a replica of the partition.
    pub fn hosts(&self, topic_id: u32, partition: u32) -> bool {
        match &self.backend {
            Backend::Single { .. } => true,
            Backend::Cluster(node) => node.partition(topic_id, partition).is_some(),
        }
    }

    /// Whether this node serves reads of the partition (on a cluster: it leads it).
    pub fn serves(&self, topic_id: u32, partition: u32) -> bool {
        match &self.backend {
            Backend::Single { .. } => true,
            Backend::Cluster(node) => node
                .partition(topic_id, partition)
                .is_some_and(|h| node.leads(&h.raft)),
        }
    }

    /// Whole batches from the one holding `from`, below `end`, up to about `max_bytes` (at
    /// least one when there is any), each checked against its CRC-32C: damaged stored bytes
    /// are never served. The batches before a damaged one are; a read that starts at one
    /// fails with [`DamagedData`]. Either way the damage is logged with its topic, partition
    /// and offset, and `/health` reports it from then on.
    pub fn read(
        &self,
        topic_id: u32,
        partition: u32,
        from: i64,
        end: i64,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<u8>> {
        let topic = || {
            self.catalog
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .find(|t| t.meta.id == topic_id)
                .map_or_else(|| format!("#{topic_id}"), |t| t.meta.name.clone())
        };
        let mut raw = match self.read_unchecked(topic_id, partition, from, end, max_bytes) {
            Ok(raw) => raw,
            // The store found a batch whose header disagrees with where it is stored.
            Err(e) => match e.downcast_ref::<crate::storage::StoreError>() {
                Some(crate::storage::StoreError::Corrupt(why)) => {
                    let what = format!("damaged stored batch in {} partition {partition}: {why}", topic());
                    return Err(self.damaged(what, from).into());
                }
                _ => return Err(e),
            },
        };
        let (good, bad) = batch::check_stored(&raw);
        if let Some(at) = bad {
            let at = at.map_or_else(
                || "an unreadable batch header".to_string(),
                |o| format!("offset {o}"),
            );
            let what = format!(
                "damaged stored batch in {} partition {partition} at {at} (CRC-32C mismatch)",
                topic()
            );
            let e = self.damaged(what, from);
            if good == 0 {
                return Err(e.into());
            }
            raw.truncate(good);
        }
        Ok(raw)
    }

    /// Records damaged data a read met: logged, and `/health` reports it from then on.
    fn damaged(&self, what: String, from: i64) -> DamagedData {
        tracing::error!(from, "{what}: not served");
        self.damage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(what.clone());
        DamagedData(what)
    }

    fn read_unchecked(
        &self,
        topic_id: u32,
        partition: u32,
        from: i64,
        end: i64,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<u8>> {
        match &self.backend {
            Backend::Single { storage, .. } => {
                let mut raw = storage.read(topic_id, partition, from, max_bytes)?;
                // Only what is below `end` (storage may be one commit ahead of the watermark).
                let keep: usize = batch::iter(&raw)
                    .take_while(|(h, _)| h.base_offset < end)
                    .map(|(_, b)| b.len())
                    .sum();
                raw.truncate(keep);
                Ok(raw)
            }
            Backend::Cluster(node) => Ok(node.read(topic_id, partition, from, end, max_bytes)?),
        }
    }

    /// Headers of the batches from the one holding `from`, below `end`, at most `limit`.
    pub fn headers(
        &self,
        topic_id: u32,
        partition: u32,
        from: i64,
        end: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<BatchHeader>> {
        match &self.backend {
            Backend::Single { storage, .. } => Ok(storage
                .headers(topic_id, partition, from, limit)?
                .into_iter()
                .filter(|h| h.base_offset < end)
                .collect()),
            Backend::Cluster(_) => {
                let mut out = Vec::new();
                let mut at = from;
                while out.len() < limit && at < end {
                    let raw = self.read(topic_id, partition, at, end, 1 << 20)?;
                    let before = out.len();
                    for (h, _) in batch::iter(&raw) {
                        if h.last_offset() >= at && out.len() < limit {
                            at = h.last_offset() + 1;
                            out.push(h);
                        }
                    }
                    if out.len() == before {
                        break;
                    }
                }
                Ok(out)
            }
        }
    }

    /// Commits a consumer group's offsets durably; one code per entry.
    pub async fn commit_offsets(&self, group: &str, entries: Vec<Commit>) -> Vec<Code> {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let n = entries.len();
                let (tx, rx) = oneshot::channel();
                if writer.send(Request::CommitOffsets {
                    group: group.into(),
                    offsets: entries,
                    reply: tx,
                }) {
                    rx.await.unwrap_or_else(|_| vec![Code::KafkaStorageError; n])
                } else {
                    vec![Code::KafkaStorageError; n]
                }
            }
            Backend::Cluster(node) => node.commit_offsets(group, entries).await,
        }
    }

    /// Forgets a consumer group's committed offsets.
    pub async fn delete_group_offsets(&self, group: &str) -> Code {
        match &self.backend {
            Backend::Single { writer, .. } => {
                let (tx, rx) = oneshot::channel();
                if writer.send(Request::DeleteGroup {
                    group: group.into(),
                    reply: tx,
                }) {
                    rx.await.unwrap_or(Code::KafkaStorageError)
                } else {
                    Code::KafkaStorageError
                }
            }
            Backend::Cluster(node) => node.delete_group_offsets(group).await,
        }
    }

    /// Replicas of each partition (of a topic created now).
    pub fn replication_factor(&self) -> usize {
        match &self.backend {
            Backend::Single { .. } => 1,
            Backend::Cluster(node) => {
                crate::raft::node::REPLICATION_FACTOR.min(node.metadata().nodes.len().max(1))
            }
        }
    }

    /// This node as clients of its primary listener reach it.
    pub fn me(&self) -> BrokerAddr {
        let (host, port) = self.cfg.advertised();
        (self.cfg.node_id, host, port)
    }

    /// This node as clients of `listener` reach it.
    fn me_on(&self, listener: &str) -> BrokerAddr {
        let (host, port) = self
            .cfg
            .advertised_on(listener)
            .unwrap_or_else(|| self.cfg.advertised());
        (self.cfg.node_id, host, port)
    }

    /// Every broker of the cluster, as clients of the primary listener reach them.
    pub fn brokers(&self) -> Vec<BrokerAddr> {
        self.brokers_on(crate::security::PRIMARY)
    }

    /// Every broker of the cluster, as clients of `listener` reach them (Kafka's
    /// per-listener advertised addresses).
    pub fn brokers_on(&self, listener: &str) -> Vec<BrokerAddr> {
        match &self.backend {
            Backend::Single { .. } => vec![self.me_on(listener)],
            Backend::Cluster(node) => {
                // Only the nodes alive as far as this one knows, as Kafka lists only brokers
                // with a live session: a client picks any listed broker for its requests (a
                // dead one's id may still stand among a partition's replicas). But a node
                // that hears from fewer than a majority is the one cut off, and its view is
                // the wrong one to narrow the list by: it lists every node, so that a client
                // asking it does not forget the others (librdkafka drops brokers missing from
                // a Metadata answer, and was left with only the cut node, whose partitions
                // have no leader it knows, stalling every partition).
                let meta = node.metadata();
                let heard = meta.nodes.keys().filter(|id| node.alive(**id)).count();
                let cut_off = heard < meta.nodes.len() / 2 + 1;
                let mut out: Vec<BrokerAddr> = meta
                    .nodes
                    .iter()
                    .filter(|(id, _)| cut_off || node.alive(**id))
                    .filter_map(|(id, a)| parse_addr(*id, a.kafka_on(listener)?))
                    .collect();
                if !out.iter().any(|b| b.0 == self.cfg.node_id) {
                    out.push(self.me_on(listener));
                }
                out
            }
        }
    }

    /// The controller's node id, for Metadata: the metadata group's leader when one is known
    /// and among the brokers this node lists, else this node. Any node takes the controller's
    /// requests (CreateTopics, DeleteTopics) and hands them to the metadata leader, waiting for
    /// one to be elected. A controller missing from the broker list (a node whose applied
    /// metadata does not have the leader's registration yet) left librdkafka's admin client
    /// waiting for that broker to appear until its request timed out, never sending it.
    pub fn controller(&self) -> i32 {
        match &self.backend {
            Backend::Single { .. } => self.cfg.node_id,
            Backend::Cluster(node) => node
                .controller()
                .and_then(|c| i32::try_from(c).ok())
                .filter(|c| self.brokers().iter().any(|b| b.0 == *c))
                .unwrap_or(self.cfg.node_id),
        }
    }

    /// A partition's leader, leader epoch, replicas and in-sync replicas.
    pub fn place(&self, topic: &crate::state::TopicView, partition: u32) -> PartitionPlace {
        let id = |n: NodeId| i32::try_from(n).unwrap_or(-1);
        match &self.backend {
            Backend::Single { .. } => PartitionPlace {
                leader: self.cfg.node_id,
                epoch: 0,
                replicas: vec![self.cfg.node_id],
                isr: vec![self.cfg.node_id],
                lag: BTreeMap::new(),
            },
            Backend::Cluster(node) => {
                let replicas: Vec<i32> = topic
                    .meta
                    .replicas
                    .get(partition as usize)
                    .map(|r| r.iter().map(|n| id(*n)).collect())
                    .unwrap_or_default();
                let Some(h) = node.partition(topic.meta.id, partition) else {
                    return PartitionPlace {
                        leader: -1,
                        epoch: -1,
                        replicas,
                        ..Default::default()
                    };
                };
                let term =
                    openraft::async_runtime::WatchReceiver::borrow_watched(&h.raft.metrics()).current_term;
                PartitionPlace {
                    leader: node.partition_leader(&h.raft).map_or(-1, id),
                    epoch: i32::try_from(term).unwrap_or(i32::MAX),
                    replicas,
                    isr: node.in_sync(&h.raft).into_iter().map(id).collect(),
                    lag: node
                        .follower_lag(&h.raft)
                        .into_iter()
                        .map(|(n, l)| (id(n), l))
                        .collect(),
                }
            }
        }
    }

    /// The broker coordinating consumer group `group`, if one is known, as clients of
    /// `listener` reach it.
    pub fn coordinator(&self, group: &str, listener: &str) -> Option<BrokerAddr> {
        match &self.backend {
            Backend::Single { .. } => Some(self.me_on(listener)),
            Backend::Cluster(node) => {
                let id = node.coordinator_of(group)?;
                if id == node.id() {
                    return Some(self.me_on(listener));
                }
                let meta = node.metadata();
                parse_addr(id, meta.nodes.get(&id)?.kafka_on(listener)?)
            }
        }
    }

    /// Whether this node coordinates `group`.
    pub fn coordinates(&self, group: &str) -> bool {
        match &self.backend {
            Backend::Single { .. } => true,
            Backend::Cluster(node) => node.coordinator_of(group) == Some(node.id()),
        }
    }
}

impl Broker {
    /// What `/api/cluster` shows: the nodes, the controller, the leader of each offsets log
    /// (the coordinator of the groups it holds: `offsets::partition_for`), and where every
    /// partition stands as this node sees it (leader, term, replicas, in-sync replicas,
    /// followers' lag; watermarks where it holds a replica).
    pub fn cluster_status(&self) -> serde_json::Value {
        let Backend::Cluster(node) = &self.backend else {
            let id = self.cfg.node_id;
            let (host, port) = self.cfg.advertised();
            let mut partitions = Vec::new();
            for t in self.catalog.all() {
                for (p, v) in t.partitions.iter().enumerate() {
                    partitions.push(serde_json::json!({
                        "topic": t.meta.name,
                        "partition": p,
                        "leader": id,
                        "replicas": [id],
                        "isr": [id],
                        "high_watermark": v.hw.load(std::sync::atomic::Ordering::SeqCst),
                        "log_start": v.log_start.load(std::sync::atomic::Ordering::SeqCst),
                        "bytes": v.bytes.load(std::sync::atomic::Ordering::SeqCst),
                    }));
                }
            }
            return serde_json::json!({
                "mode": "single",
                "node": id,
                "controller": id,
                "nodes": [{ "id": id, "kafka": format!("{host}:{port}") }],
                "partitions": partitions,
                "disk_available_bytes": foundation::redb::fs_available(&self.cfg.data_dir).ok(),
                "produced_records_total": self.stats.produced_records.load(std::sync::atomic::Ordering::Relaxed),
                "fetched_bytes_total": self.stats.fetched_bytes.load(std::sync::atomic::Ordering::Relaxed),
            });
        };
        let meta = node.metadata();
        let nodes: Vec<serde_json::Value> = meta
            .nodes
            .iter()
            .map(|(id, a)| serde_json::json!({ "id": id, "kafka": a.kafka, "raft": a.raft }))
            .collect();
        let mut partitions = Vec::new();
        for t in meta.topics.values() {
            for p in 0..t.partitions {
                let place = self
                    .catalog
                    .topic(&t.name)
                    .map(|v| self.place(&v, p))
                    .unwrap_or_default();
                let hosted = node.partition(t.id, p);
                let voters = node.voters(crate::raft::GroupId::Partition {
                    topic: t.id,
                    partition: p,
                });
                partitions.push(serde_json::json!({
                    "topic": t.name,
                    "partition": p,
                    "leader": place.leader,
                    "term": place.epoch,
                    "replicas": place.replicas,
                    "voters": voters,
                    "isr": place.isr,
                    "lag": place.lag.iter().map(|(n, l)| (n.to_string(), *l)).collect::<BTreeMap<String, u64>>(),
                    "hosted": hosted.is_some(),
                    "high_watermark": hosted.as_ref().map(|h| h.view.hw.load(std::sync::atomic::Ordering::SeqCst)),
                    "log_start": hosted.as_ref().map(|h| h.view.log_start.load(std::sync::atomic::Ordering::SeqCst)),
                }));
            }
        }
        let offsets_logs: Vec<serde_json::Value> = (0..crate::sm::offsets::OFFSETS_PARTITIONS)
            .map(|n| {
                let log = crate::raft::GroupId::Offsets(n);
                serde_json::json!({
                    "log": n,
                    "leader": node.leader_of(log),
                    "replicas": node.offsets_replicas(n),
                    "voters": node.voters(log),
                })
            })
            .collect();
        serde_json::json!({
            "mode": "cluster",
            "node": node.id(),
            "controller": node.controller(),
            "offsets_logs": offsets_logs,
            "metadata_voters": node.voters(crate::raft::GroupId::Metadata),
            "replaced": meta.replaced.iter().map(|(o, n)| (o.to_string(), *n)).collect::<BTreeMap<String, u64>>(),
            "nodes": nodes,
            "partitions": partitions,
            "disk_available_bytes": foundation::redb::fs_available(&self.cfg.data_dir).ok(),
            "produced_records_total": self.stats.produced_records.load(std::sync::atomic::Ordering::Relaxed),
            "fetched_bytes_total": self.stats.fetched_bytes.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl Broker {
    /// What `/health` says: `Err` with the reason while the data store's writes fail (a full
    /// disk, an I/O error), until one succeeds again.
    pub fn health(&self) -> Result<(), String> {
        if let Some(d) = self.damage.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(d);
        }
        match &self.backend {
            Backend::Single { storage, .. } => {
                if let Some(d) = storage.damage() {
                    return Err(format!(
                        "damaged stored data: {d} (run `cloud-broker storage verify` with the broker stopped)"
                    ));
                }
            }
            Backend::Cluster(node) => {
                if let Some(d) = node.damage() {
                    return Err(format!(
                        "damaged stored data: {d} (the groups it hit stopped on this node; replace the node \
                         with `cloud-broker cluster replace`)"
                    ));
                }
            }
        }
        let failure = match &self.backend {
            Backend::Single { storage, .. } => storage.write_failure(),
            Backend::Cluster(node) => node.write_failure(),
        };
        match failure {
            Some(why) => Err(format!("storage writes are failing: {why}")),
            None => Ok(()),
        }
    }

    /// The storage gauges of `/metrics` (Prometheus text).
    pub fn storage_metrics(&self) -> String {
        let (failing, damaged, repaired) = match &self.backend {
            Backend::Single { storage, .. } => (
                storage.write_failure().is_some(),
                storage.damage().is_some(),
                storage.opened_with_repair(),
            ),
            Backend::Cluster(node) => (
                node.write_failure().is_some(),
                node.damage().is_some(),
                node.opened_with_repair(),
            ),
        };
        let damaged = damaged || self.damage.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let available = foundation::redb::fs_available(&self.cfg.data_dir).unwrap_or(0);
        let mut out = String::new();
        let mut g = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        };
        g(
            "cloud_storage_write_failing",
            "1 while writes fail (a full disk, the disk reserve, an I/O error): produce is refused",
            u64::from(failing),
        );
        g(
            "cloud_storage_damaged",
            "1 once damaged stored data was met (checksums); /health says what",
            u64::from(damaged),
        );
        g(
            "cloud_storage_opened_with_repair",
            "1 if opening the data file needed redb's full repair",
            u64::from(repaired),
        );
        g(
            "cloud_storage_disk_available_bytes",
            "Bytes free on the data directory's file system",
            available,
        );
        g(
            "cloud_storage_disk_reserve_bytes",
            "Free disk kept for the writes that free space (disk_reserve_mb)",
            self.cfg.disk_reserve_mb << 20,
        );
        out
    }

    /// Stops the engine for a clean exit: a cluster node stops its groups and writes out its
    /// store; then the data file is closed, so redb's "recovery required" mark is off and the
    /// next start needs no repair. Requests still in flight fail (nothing unacknowledged is
    /// lost: every acknowledgement follows a commit).
    pub async fn shutdown(&self) {
        match &self.backend {
            Backend::Single { storage, .. } => storage.close(),
            Backend::Cluster(node) => node.stop().await,
        }
    }

    /// Replaces cluster node `old` with node `new`, whose Raft listener is `raft` (see
    /// [`crate::raft::node::membership`]).
    pub async fn replace_node(&self, old: NodeId, new: NodeId, raft: &str) -> Result<(), String> {
        match &self.backend {
            Backend::Single { .. } => Err("a single-node broker has no cluster nodes to replace".into()),
            Backend::Cluster(node) => node.replace(old, new, raft).await,
        }
    }

    /// What `/api/cluster/digests` shows: for every partition replica on this node, its
    /// committed log in brief ([`crate::raft::node::LogDigest`]), to compare across nodes.
    pub fn cluster_digests(&self) -> serde_json::Value {
        let Backend::Cluster(node) = &self.backend else {
            return serde_json::json!({ "mode": "single", "node": self.cfg.node_id });
        };
        let meta = node.metadata();
        let mut partitions = Vec::new();
        for t in meta.topics.values() {
            for p in 0..t.partitions {
                let Some(d) = node.digest(t.id, p) else {
                    continue;
                };
                let mut v = serde_json::json!({ "topic": t.name, "partition": p });
                match d {
                    Ok(d) => {
                        v["log_start"] = d.log_start.into();
                        v["high_watermark"] = d.high_watermark.into();
                        v["bytes"] = d.bytes.into();
                        v["crc32c"] = d.crc32c.into();
                    }
                    Err(e) => v["error"] = e.to_string().into(),
                }
                partitions.push(v);
            }
        }
        serde_json::json!({ "mode": "cluster", "node": node.id(), "partitions": partitions })
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; whether it held.
async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
