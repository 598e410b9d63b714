//! What the Kafka handlers ask of the cluster's replicated state: topics created and deleted
//! through the metadata group, group offsets committed and forgotten through their offsets log,
//! and producer ids taken from this node's block.

use std::time::Duration;

use tracing::{debug, warn};

use super::{Node, REPLICATION_FACTOR};
use crate::errors::Code;
use crate::raft::{Command, GroupId, NodeId};
use crate::sm::metadata::{assign, MetaCommand, MetaOutcome, ProducerIdBlock};
use crate::sm::offsets::{self, Commit, OffsetsCommand, OFFSETS_PARTITIONS};
use crate::storage::TopicConfig;

impl Node {
    /// Commits a consumer group's offsets through its offsets log (topics checked against
    /// the metadata first); one code per entry.
    pub async fn commit_offsets(&self, group: &str, entries: Vec<Commit>) -> Vec<Code> {
        let meta = self.metadata();
        let codes: Vec<Code> = entries
            .iter()
            .map(|(t, p, ..)| match meta.topics.get(t) {
                Some(m) if *p < m.partitions => Code::None,
                _ => Code::UnknownTopicOrPartition,
            })
            .collect();
        let valid: Vec<Commit> = entries
            .into_iter()
            .zip(&codes)
            .filter(|(_, c)| **c == Code::None)
            .map(|(e, _)| e)
            .collect();
        if valid.is_empty() {
            return codes;
        }
        let cmd = Command::Offsets(OffsetsCommand::Commit {
            group: group.to_string(),
            offsets: valid,
        });
        let log = GroupId::Offsets(offsets::partition_for(group));
        match self.propose(log, cmd, Duration::from_secs(10)).await {
            Ok(_) => codes,
            Err(e) => {
                debug!(group, error = %e, "committing offsets failed");
                codes
                    .into_iter()
                    .map(|c| if c == Code::None { Code::NotCoordinator } else { c })
                    .collect()
            }
        }
    }

    /// Forgets a consumer group's committed offsets.
    pub async fn delete_group_offsets(&self, group: &str) -> Code {
        let cmd = Command::Offsets(OffsetsCommand::DeleteGroup {
            group: group.to_string(),
        });
        let log = GroupId::Offsets(offsets::partition_for(group));
        match self.propose(log, cmd, Duration::from_secs(10)).await {
            Ok(_) => Code::None,
            Err(_) => Code::NotCoordinator,
        }
    }

    /// Creates a topic with its partitions spread over the registered nodes.
    pub async fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Code {
        let meta = self.metadata();
        let mut nodes: Vec<NodeId> = meta.nodes.keys().copied().collect();
        if nodes.is_empty() {
            nodes = self.all_nodes();
        }
        let seed = topic_seed(name);
        let cmd = MetaCommand::CreateTopic {
            name: name.to_string(),
            partitions,
            config,
            uuid: crate::state::new_uuid(),
            replicas: assign(&nodes, partitions, REPLICATION_FACTOR, seed),
        };
        match self.propose_meta(cmd, Duration::from_secs(10)).await {
            Ok(MetaOutcome::Refused(c)) => c,
            Ok(_) => Code::None,
            Err(e) => {
                warn!(topic = name, error = %e, "creating a topic failed");
                Code::NotController
            }
        }
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Code {
        let cmd = MetaCommand::DeleteTopic {
            name: name.to_string(),
        };
        match self.propose_meta(cmd, Duration::from_secs(10)).await {
            Ok(MetaOutcome::Refused(c)) => c,
            Ok(_) => {
                let cmd = Command::Offsets(OffsetsCommand::DeleteTopic {
                    name: name.to_string(),
                });
                for n in 0..OFFSETS_PARTITIONS {
                    if let Err(e) = self
                        .propose(GroupId::Offsets(n), cmd.clone(), Duration::from_secs(10))
                        .await
                    {
                        warn!(topic = name, error = %e, "forgetting a deleted topic's offsets failed");
                    }
                }
                Code::None
            }
            Err(_) => Code::NotController,
        }
    }

    /// Grows topic `name` to `partitions` partitions, their replicas placed as creation
    /// places them (continuing the topic's rotation) or as `assignment` names them.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
        assignment: Option<Vec<Vec<u64>>>,
    ) -> Code {
        let meta = self.metadata();
        let Some(t) = meta.topics.get(name) else {
            return Code::UnknownTopicOrPartition;
        };
        if partitions <= t.partitions {
            return Code::InvalidPartitions;
        }
        let factor = t.replicas.first().map_or(REPLICATION_FACTOR, Vec::len);
        let replicas = match assignment {
            Some(a) => {
                let valid = a.len() == (partitions - t.partitions) as usize
                    && a.iter().all(|r| {
                        let distinct: std::collections::BTreeSet<&u64> = r.iter().collect();
                        r.len() == factor
                            && distinct.len() == r.len()
                            && r.iter().all(|n| meta.nodes.contains_key(n))
                    });
                if !valid {
                    return Code::InvalidReplicaAssignment;
                }
                a
            }
            None => {
                let nodes: Vec<NodeId> = meta.nodes.keys().copied().collect();
                let seed = topic_seed(name);
                assign(&nodes, partitions, factor, seed).split_off(t.partitions as usize)
            }
        };
        let cmd = MetaCommand::AddPartitions {
            name: name.to_string(),
            partitions,
            replicas,
        };
        self.meta_change(cmd, name).await
    }

    /// Sets topic `name`'s configs.
    pub async fn set_topic_config(&self, name: &str, config: TopicConfig) -> Code {
        let cmd = MetaCommand::SetTopicConfig {
            name: name.to_string(),
            config,
        };
        self.meta_change(cmd, name).await
    }

    async fn meta_change(&self, cmd: MetaCommand, topic: &str) -> Code {
        match self.propose_meta(cmd, Duration::from_secs(10)).await {
            Ok(MetaOutcome::Refused(c)) => c,
            Ok(_) => Code::None,
            Err(e) => {
                warn!(topic, error = %e, "changing a topic failed");
                Code::NotController
            }
        }
    }

    /// Kafka's DeleteRecords on a partition this node leads: `(code, log start after)`.
    pub async fn delete_records(&self, topic: u32, partition: u32, offset: i64) -> (Code, i64) {
        let Some(h) = self.partition(topic, partition) else {
            return (Code::NotLeaderOrFollower, -1);
        };
        if !self.leads(&h.raft) {
            return (Code::NotLeaderOrFollower, -1);
        }
        let key = GroupId::Partition { topic, partition }.key();
        let store = self.store.clone();
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(Err(Code::NotLeaderOrFollower)));
        let out = outcome.clone();
        let code = h
            .sequencer
            .maintain(move |tip| {
                let to = match tip.delete_records_to(offset) {
                    Ok(to) => to,
                    Err(c) => {
                        *out.lock().unwrap_or_else(|e| e.into_inner()) = Err(c);
                        return None;
                    }
                };
                let headers = paged_headers(&store, key, tip.head.log_start, to);
                match tip.cut_to(to, headers) {
                    Ok(cmd) => {
                        *out.lock().unwrap_or_else(|e| e.into_inner()) = Ok(to.max(tip.head.log_start));
                        cmd
                    }
                    Err(e) => {
                        warn!(group = key, error = %e, "reading batch headers for DeleteRecords failed");
                        *out.lock().unwrap_or_else(|e| e.into_inner()) = Err(Code::KafkaStorageError);
                        None
                    }
                }
            })
            .await;
        let decided = *outcome.lock().unwrap_or_else(|e| e.into_inner());
        match (code, decided) {
            (Code::None, Ok(low)) => (Code::None, low),
            (Code::None, Err(c)) => (c, -1),
            (c, _) => (c, -1),
        }
    }

    /// Forgets some of a group's committed offsets through its offsets log.
    pub async fn delete_offsets(&self, group: &str, partitions: Vec<(String, u32)>) -> Code {
        let cmd = Command::Offsets(OffsetsCommand::DeletePartitions {
            group: group.to_string(),
            partitions,
        });
        let log = GroupId::Offsets(offsets::partition_for(group));
        match self.propose(log, cmd, Duration::from_secs(10)).await {
            Ok(_) => Code::None,
            Err(_) => Code::NotCoordinator,
        }
    }

    /// A producer id from this node's block, or from the next one, taken ahead by
    /// [`Node::reserve_producer_ids`]. Only a node with neither (just started, and no quorum
    /// yet) asks the metadata group, and gives up after a few seconds with the retriable
    /// `COORDINATOR_NOT_AVAILABLE`: clients retry (librdkafka asks the broker it used last,
    /// so a node that made it wait long stalled every partition of an idempotent producer).
    pub async fn producer_id(&self) -> Result<i64, Code> {
        let mut pids = self.pids.lock().await;
        loop {
            if let Some(id) = pids.0.take() {
                return Ok(id);
            }
            match pids.1.take() {
                Some(next) => pids.0 = next,
                None => break,
            }
        }
        match self.allocate_producer_ids(Duration::from_secs(3)).await {
            Some(block) => {
                pids.0 = block;
                pids.0.take().ok_or(Code::CoordinatorNotAvailable)
            }
            None => Err(Code::CoordinatorNotAvailable),
        }
    }

    /// Takes the next block of producer ids through the metadata group when none is in
    /// hand (on start, and each time the current one is used up).
    pub async fn reserve_producer_ids(&self) {
        if self.pids.lock().await.1.is_some() {
            return;
        }
        if let Some(block) = self.allocate_producer_ids(Duration::from_secs(5)).await {
            let mut pids = self.pids.lock().await;
            if pids.1.is_none() {
                pids.1 = Some(block);
            }
        }
    }

    async fn allocate_producer_ids(&self, timeout: Duration) -> Option<ProducerIdBlock> {
        let cmd = MetaCommand::AllocateProducerIds {
            count: ProducerIdBlock::SIZE,
        };
        match self.propose_meta(cmd, timeout).await {
            Ok(MetaOutcome::ProducerIds { first, count }) => {
                let mut block = ProducerIdBlock::default();
                block.refill(first, count);
                Some(block)
            }
            _ => None,
        }
    }
}

/// A topic's place in the replica rotation: its name, hashed, so topics start on different
/// nodes.
fn topic_seed(name: &str) -> u32 {
    name.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// Headers of a partition's stored batches from the one holding `from`, below `end`, read a
/// megabyte at a time.
fn paged_headers(
    store: &crate::raft::store::NodeStore,
    key: u64,
    mut from: i64,
    end: i64,
) -> impl Iterator<Item = std::io::Result<crate::batch::BatchHeader>> + '_ {
    let mut page: std::vec::IntoIter<crate::batch::BatchHeader> = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || loop {
        if let Some(h) = page.next() {
            from = h.last_offset() + 1;
            return Some(Ok(h));
        }
        if done || from >= end {
            return None;
        }
        match store.batches(key, from, end, 1 << 20) {
            Ok(raw) => {
                let hs: Vec<_> = crate::batch::iter(&raw).map(|(h, _)| h).collect();
                done = hs.is_empty();
                page = hs.into_iter();
            }
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    })
}
