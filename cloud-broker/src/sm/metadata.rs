//! The metadata state machine: the topic catalog with each partition's replicas, the nodes of
//! the cluster, and producer-id blocks.
//!
//! Deterministic like every state machine here: the caller draws the random parts (a topic's
//! UUID) and puts them in the command, so every replica applying the same commands agrees.
//! Producer ids are handed out in blocks (Kafka's `AllocateProducerIds`): a node takes a block
//! through this log and serves `InitProducerId` from it without a write per producer; ids of a
//! block a node never used are skipped, never reused.
//!
//! # Replacing a node
//! [`MetaCommand::ReplaceNode`] retires a node for good and puts a new one in every place it
//! held: in each partition's replicas (at the same rank, so the new node becomes the preferred
//! leader where the old one was), in the offsets logs' replicas, and in the node list. This
//! log records only the decision: each group's leader then brings its Raft membership in line
//! (adds the new node as a learner, and makes it a voter in the old one's place once it has
//! caught up). A group whose replicas changed is never initialized again: its log exists on
//! the remaining replicas, and a new replica gets it from them.

use std::collections::{BTreeMap, BTreeSet};

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
    /// `host:port` it gives Kafka clients of its primary (`kafka_listen`) listener.
    pub kafka: String,
    /// `host:port` it gives clients of each other listener, by listener name.
    pub listeners: BTreeMap<String, String>,
}

impl NodeAddr {
    /// The address clients of `listener` are given (None: the node has no such listener).
    pub fn kafka_on(&self, listener: &str) -> Option<&str> {
        if listener == crate::security::PRIMARY {
            Some(&self.kafka)
        } else {
            self.listeners.get(listener).map(String::as_str)
        }
    }
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
    /// Retire node `old` for good and put node `new` in every place it held (see the module
    /// docs).
    ReplaceNode {
        /// The node retired.
        old: u64,
        /// The node taking its places.
        new: u64,
        /// How the new node's Raft listener is reached (it registers its Kafka address itself).
        raft: String,
        /// The offsets logs' replicas as the proposer computed them from the static member
        /// list: recorded here by the first replacement (the metadata holds them from then on).
        offsets: Vec<Vec<u64>>,
    },
    /// Grow a topic to `partitions` partitions (Kafka's CreatePartitions).
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new partition count.
        partitions: u32,
        /// The new partitions' replicas, the preferred leader first (empty on one node).
        replicas: Vec<Vec<u64>>,
    },
    /// Replace a topic's configs (AlterConfigs, IncrementalAlterConfigs).
    SetTopicConfig {
        /// Topic name.
        name: String,
        /// Its configs from now on.
        config: TopicConfig,
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
    /// The node is retired and its replacement named in its places.
    Replaced,
    /// Refused; nothing changed.
    Refused(Code),
    /// The topic's partitions or configs changed; this is it now.
    Altered(TopicMeta),
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
    /// The offsets logs' replicas once a replacement changed them (empty: as the static member
    /// list places them).
    pub offsets_replicas: Vec<Vec<u64>>,
    /// Partitions `(topic id, partition)` whose replicas changed since their creation: never
    /// initialized again.
    pub moved: BTreeSet<(u32, u32)>,
    /// Retired nodes and the node that took each one's places.
    pub replaced: BTreeMap<u64, u64>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            topics: BTreeMap::new(),
            next_topic_id: 0,
            next_producer_id: FIRST_PRODUCER_ID,
            nodes: BTreeMap::new(),
            offsets_replicas: Vec::new(),
            moved: BTreeSet::new(),
            replaced: BTreeMap::new(),
        }
    }
}

/// [`Metadata`] as layout 1 of a node's store encoded it (before replacements): read from
/// a store written then, never written.
#[derive(Debug, Clone, Deserialize)]
pub struct MetadataV1 {
    topics: BTreeMap<String, TopicMeta>,
    next_topic_id: u32,
    next_producer_id: i64,
    nodes: BTreeMap<u64, NodeAddr>,
}

impl From<MetadataV1> for Metadata {
    fn from(m: MetadataV1) -> Self {
        Metadata {
            topics: m.topics,
            next_topic_id: m.next_topic_id,
            next_producer_id: m.next_producer_id,
            nodes: m.nodes,
            ..Metadata::default()
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
            ..Metadata::default()
        }
    }

    /// The node that now holds the places of `id` (itself when it was never replaced).
    pub fn successor(&self, mut id: u64) -> u64 {
        // Bounded: each step goes to a node replaced later, and there are finitely many.
        for _ in 0..=self.replaced.len() {
            match self.replaced.get(&id) {
                Some(next) => id = *next,
                None => break,
            }
        }
        id
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
                Some(meta) => {
                    self.moved.retain(|(t, _)| *t != meta.id);
                    MetaOutcome::Deleted(meta)
                }
            },
            MetaCommand::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id += i64::from(*count);
                MetaOutcome::ProducerIds { first, count: *count }
            }
            MetaCommand::RegisterNode { id, addr } => {
                if self.replaced.contains_key(id) {
                    return MetaOutcome::Refused(Code::InvalidRequest);
                }
                self.nodes.insert(*id, addr.clone());
                MetaOutcome::Registered
            }
            MetaCommand::ReplaceNode {
                old,
                new,
                raft,
                offsets,
            } => self.replace(*old, *new, raft, offsets),
            MetaCommand::AddPartitions {
                name,
                partitions,
                replicas,
            } => {
                let Some(t) = self.topics.get_mut(name) else {
                    return MetaOutcome::Refused(Code::UnknownTopicOrPartition);
                };
                let added = partitions.saturating_sub(t.partitions) as usize;
                if *partitions <= t.partitions || *partitions > MAX_PARTITIONS {
                    MetaOutcome::Refused(Code::InvalidPartitions)
                } else if t.replicas.is_empty() != replicas.is_empty()
                    || (!replicas.is_empty() && replicas.len() != added)
                {
                    MetaOutcome::Refused(Code::InvalidReplicaAssignment)
                } else {
                    t.partitions = *partitions;
                    t.replicas.extend(replicas.iter().cloned());
                    MetaOutcome::Altered(t.clone())
                }
            }
            MetaCommand::SetTopicConfig { name, config } => match self.topics.get_mut(name) {
                None => MetaOutcome::Refused(Code::UnknownTopicOrPartition),
                Some(t) => {
                    t.config = config.clone();
                    MetaOutcome::Altered(t.clone())
                }
            },
        }
    }

    fn replace(&mut self, old: u64, new: u64, raft: &str, offsets: &[Vec<u64>]) -> MetaOutcome {
        let known = |m: &Metadata, id: u64| {
            m.nodes.contains_key(&id)
                || m.topics
                    .values()
                    .any(|t| t.replicas.iter().any(|r| r.contains(&id)))
                || m.offsets_replicas.iter().any(|r| r.contains(&id))
        };
        if old == new
            || self.replaced.contains_key(&old)
            || self.replaced.contains_key(&new)
            || known(self, new)
            || !(known(self, old) || offsets.iter().any(|r| r.contains(&old)))
        {
            return MetaOutcome::Refused(Code::InvalidRequest);
        }
        if self.offsets_replicas.is_empty() {
            self.offsets_replicas = offsets.to_vec();
        }
        let swap = |r: &mut Vec<u64>| {
            let mut changed = false;
            for id in r.iter_mut().filter(|id| **id == old) {
                *id = new;
                changed = true;
            }
            changed
        };
        for r in &mut self.offsets_replicas {
            swap(r);
        }
        for t in self.topics.values_mut() {
            for (p, r) in t.replicas.iter_mut().enumerate() {
                if swap(r) {
                    self.moved.insert((t.id, p as u32));
                }
            }
        }
        self.nodes.remove(&old);
        self.nodes.entry(new).or_insert_with(|| NodeAddr {
            raft: raft.to_string(),
            kafka: String::new(),
            listeners: BTreeMap::new(),
        });
        self.replaced.insert(old, new);
        MetaOutcome::Replaced
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
    fn partitions_are_added_and_configs_set() {
        let mut m = Metadata::default();
        m.apply(&MetaCommand::CreateTopic {
            name: "a".into(),
            partitions: 2,
            config: TopicConfig::default(),
            uuid: [1; 16],
            replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
        });
        let add = |partitions, replicas: Vec<Vec<u64>>| MetaCommand::AddPartitions {
            name: "a".into(),
            partitions,
            replicas,
        };
        assert_eq!(
            m.apply(&add(2, vec![])),
            MetaOutcome::Refused(Code::InvalidPartitions),
            "not more"
        );
        assert_eq!(
            m.apply(&add(4, vec![vec![3, 1, 2]])),
            MetaOutcome::Refused(Code::InvalidReplicaAssignment),
            "one assignment for two new partitions"
        );
        let MetaOutcome::Altered(t) = m.apply(&add(4, vec![vec![3, 1, 2], vec![1, 2, 3]])) else {
            panic!()
        };
        assert_eq!(t.partitions, 4);
        assert_eq!(t.replicas[2..], [vec![3, 1, 2], vec![1, 2, 3]]);
        assert_eq!(
            m.apply(&MetaCommand::AddPartitions {
                name: "b".into(),
                partitions: 3,
                replicas: vec![]
            }),
            MetaOutcome::Refused(Code::UnknownTopicOrPartition)
        );
        let config = TopicConfig {
            retention_ms: Some(60_000),
            ..TopicConfig::default()
        };
        let MetaOutcome::Altered(t) = m.apply(&MetaCommand::SetTopicConfig {
            name: "a".into(),
            config: config.clone(),
        }) else {
            panic!()
        };
        assert_eq!((t.config, t.partitions), (config, 4));
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

    #[test]
    fn a_replacement_takes_every_place_of_the_old_node_once() {
        let mut m = Metadata::default();
        let addr = |r: &str| NodeAddr {
            raft: r.into(),
            kafka: format!("k{r}"),
            listeners: BTreeMap::new(),
        };
        for id in 1..=3 {
            m.apply(&MetaCommand::RegisterNode {
                id,
                addr: addr(&id.to_string()),
            });
        }
        let cmd = MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 3,
            config: TopicConfig::default(),
            uuid: [0; 16],
            replicas: assign(&[1, 2, 3], 3, 3, 0),
        };
        let MetaOutcome::Created(t) = m.apply(&cmd) else {
            panic!()
        };
        let offsets = vec![vec![1, 2, 3], vec![2, 3, 1]];
        let replace = |old, new| MetaCommand::ReplaceNode {
            old,
            new,
            raft: "new:1".into(),
            offsets: offsets.clone(),
        };
        let refused = MetaOutcome::Refused(Code::InvalidRequest);
        assert_eq!(m.apply(&replace(3, 3)), refused, "not by itself");
        assert_eq!(m.apply(&replace(3, 2)), refused, "not by a member");
        assert_eq!(m.apply(&replace(9, 4)), refused, "not a node never known");
        let before = m.clone();
        assert_eq!(m.apply(&replace(3, 4)), MetaOutcome::Replaced);
        assert_ne!(m, before);
        assert_eq!(
            m.topics["t"].replicas,
            vec![vec![1, 2, 4], vec![2, 4, 1], vec![4, 1, 2]],
            "the new node takes the old one's rank in every list"
        );
        assert_eq!(m.offsets_replicas, vec![vec![1, 2, 4], vec![2, 4, 1]]);
        assert_eq!(m.moved, (0..3).map(|p| (t.id, p)).collect());
        assert_eq!(m.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(m.nodes[&4].raft, "new:1");
        assert_eq!(
            m.apply(&replace(3, 5)),
            refused,
            "a retired node is replaced once"
        );
        assert_eq!(m.apply(&replace(4, 3)), refused, "a retired id never comes back");
        assert_eq!(
            m.apply(&MetaCommand::RegisterNode {
                id: 3,
                addr: addr("3")
            }),
            refused,
            "a retired node cannot register again"
        );
        assert_eq!(
            m.apply(&MetaCommand::RegisterNode {
                id: 4,
                addr: addr("4")
            }),
            MetaOutcome::Registered
        );
        assert_eq!(m.nodes[&4].kafka, "k4");
        // A second replacement of the new node: the chain of successors leads to the last.
        assert_eq!(m.apply(&replace(4, 5)), MetaOutcome::Replaced);
        assert_eq!((m.successor(3), m.successor(4), m.successor(1)), (5, 5, 1));
        assert_eq!(
            m.offsets_replicas,
            vec![vec![1, 2, 5], vec![2, 5, 1]],
            "recorded once, then kept"
        );
        m.apply(&MetaCommand::DeleteTopic { name: "t".into() });
        assert!(m.moved.is_empty(), "a deleted topic's partitions are forgotten");
    }
}
