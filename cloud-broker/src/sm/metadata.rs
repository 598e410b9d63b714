//! The metadata state machine: the topic catalog with each partition's replicas, the nodes of
//! the cluster, and producer-id blocks.
//!
//! Deterministic like every state machine here: the caller draws the random parts (a topic's
//! UUID) and puts them in the command, so every replica applying the same commands agrees.
//! Producer ids are handed out in blocks (Kafka's `AllocateProducerIds`): a node takes a block
//! through this log and serves `InitProducerId` from it without a write per producer; ids of a
//! block a node never used are skipped, never reused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::errors::Code;
use crate::storage::{TopicConfig, TopicMeta};

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;
/// The first producer id ever handed out.
pub const FIRST_PRODUCER_ID: i64 = 1000;

/// How a node is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of its Raft listener.
    pub raft: String,
    /// `host:port` it gives Kafka clients.
    pub kafka: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft {} kafka {}", self.raft, self.kafka)
    }
}

/// A change to the catalog: the payload of one entry in the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partition count.
        partitions: u32,
        /// Configs.
        config: TopicConfig,
        /// Kafka topic id, drawn by the proposer.
        uuid: [u8; 16],
        /// The nodes holding each partition, the preferred leader first (empty on one node).
        replicas: Vec<Vec<u64>>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Take the next `count` producer ids.
    AllocateProducerIds {
        /// How many.
        count: u32,
    },
    /// A node says how it is reached (on every start; the last word wins).
    RegisterNode {
        /// Its id.
        id: u64,
        /// Its addresses.
        addr: NodeAddr,
    },
}

/// What applying a [`MetaCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The topic exists now.
    Created(TopicMeta),
    /// The topic is gone (its partitions' data goes with it).
    Deleted(TopicMeta),
    /// Producer ids `first..first + count` are the proposer's.
    ProducerIds {
        /// First id of the block.
        first: i64,
        /// Ids in the block.
        count: u32,
    },
    /// The node's addresses are recorded.
    Registered,
    /// Refused; nothing changed.
    Refused(Code),
}

/// The catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Internal id of the next topic created.
    pub next_topic_id: u32,
    /// First producer id of the next block.
    pub next_producer_id: i64,
    /// The cluster's nodes by id.
    pub nodes: BTreeMap<u64, NodeAddr>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            topics: BTreeMap::new(),
            next_topic_id: 0,
            next_producer_id: FIRST_PRODUCER_ID,
            nodes: BTreeMap::new(),
        }
    }
}

/// Kafka's legal topic names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Metadata {
    /// Rebuilds the state from stored topics and the next producer id.
    pub fn restore(topics: impl IntoIterator<Item = TopicMeta>, next_producer_id: Option<i64>) -> Self {
        let topics: BTreeMap<String, TopicMeta> = topics.into_iter().map(|t| (t.name.clone(), t)).collect();
        Metadata {
            next_topic_id: topics.values().map(|t| t.id + 1).max().unwrap_or(0),
            next_producer_id: next_producer_id.unwrap_or(FIRST_PRODUCER_ID),
            topics,
            nodes: BTreeMap::new(),
        }
    }

    /// Applies a command.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaOutcome {
        match cmd {
            MetaCommand::CreateTopic {
                name,
                partitions,
                config,
                uuid,
                replicas,
            } => {
                if !valid_topic_name(name) {
                    MetaOutcome::Refused(Code::InvalidTopicException)
                } else if !(1..=MAX_PARTITIONS).contains(partitions) {
                    MetaOutcome::Refused(Code::InvalidPartitions)
                } else if self.topics.contains_key(name) {
                    MetaOutcome::Refused(Code::TopicAlreadyExists)
                } else if !replicas.is_empty() && replicas.len() != *partitions as usize {
                    MetaOutcome::Refused(Code::InvalidReplicationFactor)
                } else {
                    let meta = TopicMeta {
                        id: self.next_topic_id,
                        uuid: *uuid,
                        name: name.clone(),
                        partitions: *partitions,
                        config: config.clone(),
                        replicas: replicas.clone(),
                    };
                    self.next_topic_id += 1;
                    self.topics.insert(name.clone(), meta.clone());
                    MetaOutcome::Created(meta)
                }
            }
            MetaCommand::DeleteTopic { name } => match self.topics.remove(name) {
                None => MetaOutcome::Refused(Code::UnknownTopicOrPartition),
                Some(meta) => MetaOutcome::Deleted(meta),
            },
            MetaCommand::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id += i64::from(*count);
                MetaOutcome::ProducerIds { first, count: *count }
            }
            MetaCommand::RegisterNode { id, addr } => {
                self.nodes.insert(*id, addr.clone());
                MetaOutcome::Registered
            }
        }
    }
}

/// Replicas of each of `partitions` partitions on `nodes` (sorted ids), `factor` each: the
/// preferred leaders go round the nodes, starting at a place `seed` picks (the topic), so that
/// leadership spreads across nodes and topics.
pub fn assign(nodes: &[u64], partitions: u32, factor: usize, seed: u32) -> Vec<Vec<u64>> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let factor = factor.clamp(1, nodes.len());
    (0..partitions as usize)
        .map(|p| {
            (0..factor)
                .map(|k| nodes[(seed as usize + p + k) % nodes.len()])
                .collect()
        })
        .collect()
}

/// A node's current block of producer ids (not replicated: a node that restarts takes a new one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerIdBlock {
    next: i64,
    end: i64,
}

impl ProducerIdBlock {
    /// Ids to take per block.
    pub const SIZE: u32 = 1000;

    /// Takes an id, or `None` when the block is used up.
    pub fn take(&mut self) -> Option<i64> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Starts using a block the metadata log handed out.
    pub fn refill(&mut self, first: i64, count: u32) {
        self.next = first;
        self.end = first + i64::from(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32, uuid: u8) -> MetaCommand {
        MetaCommand::CreateTopic {
            name: name.into(),
            partitions,
            config: TopicConfig::default(),
            uuid: [uuid; 16],
            replicas: Vec::new(),
        }
    }

    #[test]
    fn topics_are_created_once_and_deleted() {
        let mut m = Metadata::default();
        let MetaOutcome::Created(t) = m.apply(&create("a", 3, 1)) else {
            panic!()
        };
        assert_eq!((t.id, t.partitions, t.uuid), (0, 3, [1; 16]));
        assert_eq!(
            m.apply(&create("a", 1, 2)),
            MetaOutcome::Refused(Code::TopicAlreadyExists)
        );
        assert_eq!(
            m.apply(&create("bad name", 1, 2)),
            MetaOutcome::Refused(Code::InvalidTopicException)
        );
        assert_eq!(
            m.apply(&create("b", 0, 2)),
            MetaOutcome::Refused(Code::InvalidPartitions)
        );
        assert!(matches!(
            m.apply(&MetaCommand::DeleteTopic { name: "a".into() }),
            MetaOutcome::Deleted(_)
        ));
        let MetaOutcome::Created(again) = m.apply(&create("a", 1, 3)) else {
            panic!()
        };
        assert_eq!(again.id, 1, "a topic id is never reused");
        let restored = Metadata::restore(m.topics.values().cloned(), Some(m.next_producer_id));
        assert_eq!(restored, m);
    }

    #[test]
    fn assignment_spreads_preferred_leaders() {
        let a = assign(&[1, 2, 3], 6, 3, 0);
        assert_eq!(a.len(), 6);
        let leaders: Vec<u64> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        assert!(a.iter().all(|r| {
            let mut r = r.clone();
            r.sort();
            r == vec![1, 2, 3]
        }));
        assert_eq!(assign(&[1, 2, 3, 4, 5], 1, 3, 7)[0], vec![3, 4, 5]);
        assert_eq!(assign(&[9], 2, 3, 0), vec![vec![9], vec![9]]);
        let mut m = Metadata::default();
        let cmd = MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 2,
            config: TopicConfig::default(),
            uuid: [0; 16],
            replicas: vec![vec![1]],
        };
        assert_eq!(
            m.apply(&cmd),
            MetaOutcome::Refused(Code::InvalidReplicationFactor)
        );
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut m = Metadata::default();
        let mut block = ProducerIdBlock::default();
        assert_eq!(block.take(), None);
        let MetaOutcome::ProducerIds { first, count } =
            m.apply(&MetaCommand::AllocateProducerIds { count: 2 })
        else {
            panic!()
        };
        block.refill(first, count);
        assert_eq!(
            (block.take(), block.take(), block.take()),
            (Some(1000), Some(1001), None)
        );
        assert_eq!(
            m.apply(&MetaCommand::AllocateProducerIds { count: 2 }),
            MetaOutcome::ProducerIds {
                first: 1002,
                count: 2
            }
        );
    }
}
