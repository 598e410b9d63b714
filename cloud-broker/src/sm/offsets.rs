//! The group-offsets state machine: committed consumer-group offsets, the way Kafka keeps
//! them in `__consumer_offsets`.
//!
//! Groups are spread over [`OFFSETS_PARTITIONS`] logs by a stable hash of the group id
//! ([`partition_for`]); the group's coordinator is the node that leads the group's log. What a
//! commit may contain (known topic, partition in range, a member of the current generation) is
//! checked by the coordinator before it proposes; applying only records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sm::txn::TxnState;
use crate::storage::CommittedOffset;

/// How many offsets logs there are (Kafka's `offsets.topic.num.partitions`). Fixed: changing
/// it would move groups between logs.
pub const OFFSETS_PARTITIONS: u32 = 8;

/// One committed offset: `(topic, partition, offset, metadata)`.
pub type Commit = (String, u32, i64, String);

/// A change to committed offsets: the payload of one entry in an offsets log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetsCommand {
    /// Record offsets for a group.
    Commit {
        /// Group id.
        group: String,
        /// The offsets.
        offsets: Vec<Commit>,
    },
    /// Forget every group's offsets of a deleted topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Forget a deleted group's offsets.
    DeleteGroup {
        /// Group id.
        group: String,
    },
    /// Forget some of a group's offsets (Kafka's OffsetDelete).
    DeletePartitions {
        /// Group id.
        group: String,
        /// `(topic, partition)` of each offset to forget.
        partitions: Vec<(String, u32)>,
    },
    /// Set (or, `None`, forget) a transactional id's state (its coordinator decided it).
    PutTxn {
        /// The transactional id.
        id: String,
        /// Its state from now on.
        state: Option<TxnState>,
    },
    /// Offsets a transaction commits for a group (TxnOffsetCommit): pending until the
    /// transaction ends.
    TxnOffsets {
        /// Group id.
        group: String,
        /// The transaction's producer id.
        producer_id: i64,
        /// The offsets.
        offsets: Vec<Commit>,
    },
    /// A transaction ended: its pending offsets in this log become the groups' committed
    /// offsets (`commit`) or are dropped.
    EndTxnOffsets {
        /// The transaction's producer id.
        producer_id: i64,
        /// Committed or aborted.
        commit: bool,
    },
}

/// A transaction's pending offsets for one group: `(topic, partition) → offset`.
pub type Pending = BTreeMap<(String, u32), CommittedOffset>;

/// Committed offsets by `(group, topic, partition)` of the groups in one offsets log, and the
/// transactions whose ids hash to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// The offsets.
    pub offsets: BTreeMap<(String, String, u32), CommittedOffset>,
    /// Transactional ids' states.
    pub txns: BTreeMap<String, TxnState>,
    /// Offsets transactions commit, pending until they end: by `(group, producer id)`.
    pub pending: BTreeMap<(String, i64), Pending>,
}

/// [`GroupOffsets`] before transactions: read from stores written then.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupOffsetsV1 {
    offsets: BTreeMap<(String, String, u32), CommittedOffset>,
}

impl From<GroupOffsetsV1> for GroupOffsets {
    fn from(g: GroupOffsetsV1) -> Self {
        GroupOffsets {
            offsets: g.offsets,
            ..GroupOffsets::default()
        }
    }
}

/// The offsets log that holds `group` (FNV-1a: stable across builds and platforms).
pub fn partition_for(group: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % OFFSETS_PARTITIONS
}

impl GroupOffsets {
    /// Applies a command; returns the keys it changed with their new value (`None`: removed).
    pub fn apply(&mut self, cmd: &OffsetsCommand) -> Vec<((String, String, u32), Option<CommittedOffset>)> {
        match cmd {
            OffsetsCommand::Commit { group, offsets } => offsets
                .iter()
                .map(|(topic, partition, offset, metadata)| {
                    let key = (group.clone(), topic.clone(), *partition);
                    let value = CommittedOffset {
                        offset: *offset,
                        metadata: metadata.clone(),
                    };
                    self.offsets.insert(key.clone(), value.clone());
                    (key, Some(value))
                })
                .collect(),
            OffsetsCommand::DeleteTopic { name } => {
                for pending in self.pending.values_mut() {
                    pending.retain(|(t, _), _| t != name);
                }
                let gone: Vec<_> = self.offsets.keys().filter(|k| k.1 == *name).cloned().collect();
                gone.into_iter()
                    .map(|k| {
                        self.offsets.remove(&k);
                        (k, None)
                    })
                    .collect()
            }
            OffsetsCommand::DeleteGroup { group } => {
                let gone: Vec<_> = self.offsets.keys().filter(|k| k.0 == *group).cloned().collect();
                gone.into_iter()
                    .map(|k| {
                        self.offsets.remove(&k);
                        (k, None)
                    })
                    .collect()
            }
            OffsetsCommand::DeletePartitions { group, partitions } => partitions
                .iter()
                .filter_map(|(t, p)| {
                    let k = (group.clone(), t.clone(), *p);
                    self.offsets.remove(&k).map(|_| (k, None))
                })
                .collect(),
            OffsetsCommand::PutTxn { id, state } => {
                match state {
                    Some(s) => drop(self.txns.insert(id.clone(), s.clone())),
                    None => drop(self.txns.remove(id)),
                }
                Vec::new()
            }
            OffsetsCommand::TxnOffsets {
                group,
                producer_id,
                offsets,
            } => {
                let pending = self.pending.entry((group.clone(), *producer_id)).or_default();
                for (t, p, offset, metadata) in offsets {
                    pending.insert(
                        (t.clone(), *p),
                        CommittedOffset {
                            offset: *offset,
                            metadata: metadata.clone(),
                        },
                    );
                }
                Vec::new()
            }
            OffsetsCommand::EndTxnOffsets { producer_id, commit } => {
                let keys: Vec<(String, i64)> = self
                    .pending
                    .keys()
                    .filter(|(_, pid)| pid == producer_id)
                    .cloned()
                    .collect();
                let mut changed = Vec::new();
                for key in keys {
                    let Some(offsets) = self.pending.remove(&key) else {
                        continue;
                    };
                    if !commit {
                        continue;
                    }
                    for ((t, p), o) in offsets {
                        let k = (key.0.clone(), t, p);
                        self.offsets.insert(k.clone(), o.clone());
                        changed.push((k, Some(o)));
                    }
                }
                changed
            }
        }
    }

    /// Whether a transaction has offsets pending for `group`'s `(topic, partition)`
    /// (OffsetFetch with `require_stable` answers `UNSTABLE_OFFSET_COMMIT` then).
    pub fn has_pending(&self, group: &str, topic: &str, partition: u32) -> bool {
        self.pending
            .iter()
            .filter(|((g, _), _)| g == group)
            .any(|(_, o)| o.contains_key(&(topic.to_string(), partition)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_overwrite_and_topic_deletion_forgets() {
        let mut g = GroupOffsets::default();
        g.apply(&OffsetsCommand::Commit {
            group: "g".into(),
            offsets: vec![("t".into(), 0, 5, "m".into()), ("u".into(), 1, 7, String::new())],
        });
        let changed = g.apply(&OffsetsCommand::Commit {
            group: "g".into(),
            offsets: vec![("t".into(), 0, 9, String::new())],
        });
        assert_eq!(changed.len(), 1);
        assert_eq!(g.offsets[&("g".into(), "t".into(), 0)].offset, 9);
        let gone = g.apply(&OffsetsCommand::DeleteTopic { name: "t".into() });
        assert_eq!(gone, vec![(("g".into(), "t".into(), 0), None)]);
        assert_eq!(g.offsets.len(), 1);
    }

    #[test]
    fn group_deletion_forgets_that_groups_offsets_only() {
        let mut g = GroupOffsets::default();
        for group in ["g", "h"] {
            g.apply(&OffsetsCommand::Commit {
                group: group.into(),
                offsets: vec![
                    ("t".into(), 0, 5, String::new()),
                    ("u".into(), 1, 7, String::new()),
                ],
            });
        }
        let gone = g.apply(&OffsetsCommand::DeleteGroup { group: "g".into() });
        assert_eq!(
            gone,
            vec![
                (("g".into(), "t".into(), 0), None),
                (("g".into(), "u".into(), 1), None)
            ]
        );
        assert!(g.offsets.keys().all(|k| k.0 == "h") && g.offsets.len() == 2);
    }

    #[test]
    fn offset_deletion_forgets_the_partitions_named_only() {
        let mut g = GroupOffsets::default();
        for group in ["g", "h"] {
            g.apply(&OffsetsCommand::Commit {
                group: group.into(),
                offsets: vec![
                    ("t".into(), 0, 5, String::new()),
                    ("t".into(), 1, 7, String::new()),
                ],
            });
        }
        let gone = g.apply(&OffsetsCommand::DeletePartitions {
            group: "g".into(),
            partitions: vec![("t".into(), 1), ("t".into(), 9), ("u".into(), 0)],
        });
        assert_eq!(gone, vec![(("g".into(), "t".into(), 1), None)]);
        assert_eq!(g.offsets.len(), 3);
        assert!(g.offsets.contains_key(&("g".into(), "t".into(), 0)));
    }

    #[test]
    fn groups_spread_over_the_logs_stably() {
        assert_eq!(partition_for("bridge"), partition_for("bridge"));
        let used: std::collections::BTreeSet<u32> =
            (0..100).map(|i| partition_for(&format!("group-{i}"))).collect();
        assert_eq!(used.len(), OFFSETS_PARTITIONS as usize);
    }
}
