//! Replication: one Raft group (openraft) per partition, one for the metadata, a few for the
//! group offsets, all sharing one node-wide store.
//!
//! # The shape
//! - [`store`] — every group's Raft log, vote and state on one redb database, written by one
//!   thread that commits many groups' writes with one fsync (group commit).
//! - [`machine`] — the state machine of every group (partition, metadata, offsets by kind):
//!   applies commands, moves the high watermark, builds and installs snapshots.
//! - [`node`] — a cluster node: the metadata group, the partition groups the metadata assigns
//!   it, bootstrap from a static peer list.
//! - [`net`] — the transport: one TCP connection per peer, shared by every group.
//! - [`sequencer`] — the leader side of a partition: produce requests batched into one entry
//!   per round trip, decided against the leader's tip.
//! - [`router`] — an in-process transport for tests, with links that can be cut.
//!
//! # The Raft log is the partition log
//! A produce becomes one `Append` entry holding the record batches with their offsets written
//! in. Appending the entry writes the batches once, with an index row from their first offset
//! to the entry; applying it moves the head and the producer windows, copying nothing. Readers
//! see offsets below the high watermark, which only applied (committed) entries move.
//!
//! # Snapshots and retention
//! A snapshot of a partition is its state at the applied index (head, producer windows) plus
//! the batches between the log start and that index. Retention moves the log start by a
//! replicated `Truncate` command; each replica then snapshots and purges its own log up to the
//! last entry wholly below the log start. A follower that fell behind the purge installs the
//! snapshot, keeps its batches apart from the Raft log ("sealed"), and takes the entries after it.

pub mod machine;
pub mod net;
pub mod node;
pub mod router;
pub mod sequencer;
pub mod store;
pub mod verify;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sm::metadata::{MetaCommand, MetaOutcome};
use crate::sm::offsets::OffsetsCommand;
use crate::sm::partition::PartitionCommand;

/// A node of the cluster.
pub type NodeId = u64;

pub use crate::sm::metadata::NodeAddr;

/// The payload of every group's log entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A change to a partition.
    Partition(PartitionCommand),
    /// A change to the metadata.
    Meta(MetaCommand),
    /// A change to group offsets.
    Offsets(OffsetsCommand),
}

/// What applying a [`Command`] answers the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A partition command was applied; the partition now ends at `next_offset`.
    Partition {
        /// The log end offset after the command.
        next_offset: i64,
    },
    /// What a metadata command did.
    Meta(MetaOutcome),
    /// A blank, membership or offsets entry.
    Nothing,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Partition(PartitionCommand::Append { batches }) => {
                write!(f, "append {} batches", batches.len())
            }
            Command::Partition(PartitionCommand::Truncate { log_start, .. }) => {
                write!(f, "truncate before {log_start}")
            }
            Command::Partition(PartitionCommand::Compact { remove, .. }) => {
                write!(f, "compact {} batches", remove.len())
            }
            Command::Meta(m) => write!(f, "metadata {m:?}"),
            Command::Offsets(OffsetsCommand::Commit { group, offsets }) => {
                write!(f, "commit {} offsets of group {group}", offsets.len())
            }
            Command::Offsets(o) => write!(f, "offsets {o:?}"),
        }
    }
}

openraft::declare_raft_types!(
    /// The Raft types of every group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        Term = u64,
        // One leader per term, so that the term is the Kafka leader epoch.
        LeaderId = openraft::impls::leader_id_std::LeaderId<Self::Term, Self::NodeId>,
);

/// A group's Raft handle.
pub type GroupRaft = openraft::Raft<TypeConfig, machine::GroupMachine>;

/// Which log a group is: the key of everything the node stores for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupId {
    /// The metadata log (topics, producer-id blocks, membership).
    Metadata,
    /// One of the group-offsets logs.
    Offsets(u32),
    /// A partition.
    Partition {
        /// Internal topic id.
        topic: u32,
        /// Partition index.
        partition: u32,
    },
}

const KIND_SHIFT: u32 = 62;
const TOPIC_SHIFT: u32 = 20;
const PARTITION_MASK: u64 = (1 << TOPIC_SHIFT) - 1;

impl GroupId {
    /// The group's storage key: two bits of kind, then the kind's fields.
    pub fn key(self) -> u64 {
        match self {
            GroupId::Metadata => 0,
            GroupId::Offsets(n) => (1 << KIND_SHIFT) | u64::from(n),
            GroupId::Partition { topic, partition } => {
                (2 << KIND_SHIFT)
                    | (u64::from(topic) << TOPIC_SHIFT)
                    | (u64::from(partition) & PARTITION_MASK)
            }
        }
    }

    /// The group a storage key names, if any.
    pub fn from_key(k: u64) -> Option<Self> {
        let body = k & ((1 << KIND_SHIFT) - 1);
        match k >> KIND_SHIFT {
            0 if body == 0 => Some(GroupId::Metadata),
            1 => u32::try_from(body).ok().map(GroupId::Offsets),
            2 => Some(GroupId::Partition {
                topic: u32::try_from(body >> TOPIC_SHIFT).ok()?,
                partition: (body & PARTITION_MASK) as u32,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Metadata => write!(f, "metadata"),
            GroupId::Offsets(n) => write!(f, "offsets-{n}"),
            GroupId::Partition { topic, partition } => write!(f, "topic {topic} partition {partition}"),
        }
    }
}

/// Raft timing for many groups per node: openraft's defaults (a 50 ms heartbeat) are made for
/// one group; hundreds of them would spend two cores on ticks and heartbeats. The failover
/// time follows from the election timeout: an openraft follower starts an election only once
/// the leader's lease (the longest election timeout) *and* its own random timeout have passed
/// since it last heard from the leader, so a dead leader is replaced after min + max to
/// 2 × max; and a leader is never deposed by less silence than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Leader heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Election timeout range (ms): a follower that hears nothing for a random time in it
    /// starts an election.
    pub election_ms: (u64, u64),
}

impl Default for Timing {
    fn default() -> Self {
        Timing::from_heartbeat(200)
    }
}

impl Timing {
    /// The timing of a heartbeat every `ms`: election timeouts of 3 to 5 heartbeats, so a dead
    /// leader is replaced after 8 to 10 heartbeats of silence (1.6–2 s at 200 ms).
    pub fn from_heartbeat(ms: u64) -> Timing {
        Timing {
            heartbeat_ms: ms,
            election_ms: (3 * ms, 5 * ms),
        }
    }
}

impl Timing {
    /// How long a leader keeps claiming leadership without hearing from a quorum: the
    /// longest election timeout, after which the others may have elected someone else.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.election_ms.1)
    }
}

/// The term in which node `me` leads a group, if it does and still has the quorum's
/// backing: a quorum acknowledged it within `lease` (or it is the only voter). A leader cut
/// off from its followers stops claiming leadership once they may have elected another, so
/// Metadata stops sending clients to it and its produce requests are refused at once with
/// `NOT_LEADER_OR_FOLLOWER` instead of waiting for a commit that cannot come (openraft
/// itself keeps such a leader in place until it hears of a newer term).
pub fn leading_term(
    me: NodeId,
    m: &openraft::RaftMetrics<TypeConfig>,
    lease: std::time::Duration,
) -> Option<u64> {
    if m.current_leader != Some(me) || !m.state.is_leader() {
        return None;
    }
    let alone = m.membership_config.membership().voter_ids().count() <= 1;
    let backed = m
        .last_quorum_acked
        .as_ref()
        .is_some_and(|t| openraft::Instant::elapsed(&**t) < lease);
    (alone || backed).then_some(m.current_term)
}

/// The openraft configuration of a partition group.
pub fn partition_config(t: Timing) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: "iot-appliance".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_ms.0,
        election_timeout_max: t.election_ms.1,
        enable_pre_vote: Some(true),
        // Snapshots and purges follow retention (see the module docs), never a log length.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        purge_batch_size: 256,
        replication_lag_threshold: u64::MAX,
        install_snapshot_timeout: 60_000,
        // A leader restarted before the others noticed must win an election again rather than
        // resume its term: its state machine is saved without a fsync (a restart re-applies the
        // log), and a resumed leader would take a stale state for the current one (openraft's
        // own warning; it showed here as a tip reusing offsets after a kill -9).
        enable_leader_restore: Some(false),
        ..openraft::Config::default()
    }
    .validate()
}

/// An I/O error for openraft, from anything displayable.
pub(crate) fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
