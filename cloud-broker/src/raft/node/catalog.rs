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
        // The topic's place in the rotation: its name, hashed, so topics start on different nodes.
        let seed = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
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

    /// A producer id from this node's block (a new block through the metadata when it runs out).
    pub async fn producer_id(&self) -> Result<i64, Code> {
        let mut block = self.pids.lock().await;
        if let Some(id) = block.take() {
            return Ok(id);
        }
        let cmd = MetaCommand::AllocateProducerIds {
            count: ProducerIdBlock::SIZE,
        };
        match self.propose_meta(cmd, Duration::from_secs(10)).await {
            Ok(MetaOutcome::ProducerIds { first, count }) => {
                block.refill(first, count);
                block.take().ok_or(Code::KafkaStorageError)
            }
            _ => Err(Code::NotController),
        }
    }
}
