//! Who leads: the leader lease as clients are told it, the in-sync replicas and follower lag
//! (`cluster status`), and the leader balancer that hands leadership back to each group's
//! preferred replica.

use std::collections::BTreeMap;

use openraft::async_runtime::WatchReceiver;
use tracing::{debug, warn};

use super::{Node, ISR_MAX_LAG};
use crate::raft::{GroupId, GroupRaft, NodeId};

impl Node {
    /// The leader balancer's round: every group this node leads whose preferred leader (the
    /// first of its replicas) is another node that is heard from and holds the whole log is
    /// handed to that node (openraft's leadership transfer: the target starts an election at
    /// once and wins it). So leadership spreads back over the nodes after one returns, as the
    /// topic's creation spread it, and the group coordinators with the offsets logs.
    pub async fn balance(&self) {
        let groups = self
            .placed_groups()
            .into_iter()
            .filter_map(|(_, raft, replicas)| Some((raft, replicas.first().copied()?)));
        for (raft, preferred) in groups {
            if preferred == self.cfg.id
                || !self.leads(&raft)
                || !self.net.heard().within(preferred, self.cfg.timing.lease())
            {
                continue;
            }
            let m = raft.metrics().borrow_watched().clone();
            // A replica still being added (a learner) cannot take over.
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == preferred);
            let caught_up = voter
                && m.replication
                    .as_ref()
                    .and_then(|r| r.get(&preferred).cloned().flatten())
                    .is_some_and(|matched| Some(matched.index) >= m.last_log_index);
            if caught_up {
                debug!(to = preferred, "handing leadership back to the preferred replica");
                if let Err(e) = raft.trigger().transfer_leader(preferred).await {
                    warn!(error = %e, "a leadership transfer failed");
                }
            }
        }
    }

    /// The in-sync replicas of a group this node hosts, as far as it knows: on the leader,
    /// itself and every follower heard from within the lease whose log is no more than
    /// [`ISR_MAX_LAG`] entries behind; on a follower, while the leader is heard from, every
    /// replica it hears from and itself (how far behind the others are is the leader's to
    /// know; `cluster status` shows each partition as its leader sees it).
    pub fn in_sync(&self, raft: &GroupRaft) -> Vec<NodeId> {
        let m = raft.metrics().borrow_watched().clone();
        let lease = self.cfg.timing.lease();
        if self.leads(raft) {
            let last = m.last_log_index.unwrap_or(0);
            let mut isr = vec![self.cfg.id];
            for (id, matched) in m.replication.iter().flatten() {
                let behind = matched
                    .as_ref()
                    .map_or(u64::MAX, |l| last.saturating_sub(l.index));
                if *id != self.cfg.id && self.net.heard().within(*id, lease) && behind <= ISR_MAX_LAG {
                    isr.push(*id);
                }
            }
            isr.sort_unstable();
            return isr;
        }
        if self.partition_leader(raft).is_none() {
            return Vec::new();
        }
        let mut isr: Vec<NodeId> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id == self.cfg.id || self.net.heard().within(*id, lease))
            .collect();
        isr.sort_unstable();
        isr
    }

    /// How many log entries each follower of a group this node leads is behind it (empty when
    /// it does not lead).
    pub fn follower_lag(&self, raft: &GroupRaft) -> BTreeMap<NodeId, u64> {
        if !self.leads(raft) {
            return BTreeMap::new();
        }
        let m = raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.cfg.id)
            .map(|(id, matched)| {
                (
                    *id,
                    matched
                        .as_ref()
                        .map_or(last + 1, |l| last.saturating_sub(l.index)),
                )
            })
            .collect()
    }

    /// The leader of a group this node hosts, as this node knows it and clients should be told
    /// (see [`Node::partition_leader`]).
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        let raft = if group == GroupId::Metadata {
            Some(self.meta_raft.clone())
        } else {
            self.groups.get(group.key())
        };
        raft.and_then(|r| self.partition_leader(&r))
    }

    /// Whether node `id` is alive as far as this node knows: itself, or a peer heard from
    /// within the lease (nodes ping each other every heartbeat).
    pub fn alive(&self, id: NodeId) -> bool {
        id == self.cfg.id || self.net.heard().within(id, self.cfg.timing.lease())
    }

    /// Whether this node leads `raft`'s group with a quorum's backing (see
    /// [`crate::raft::leading_term`]).
    pub fn leads(&self, raft: &GroupRaft) -> bool {
        crate::raft::leading_term(
            self.cfg.id,
            &raft.metrics().borrow_watched(),
            self.cfg.timing.lease(),
        )
        .is_some()
    }

    /// The leader of a hosted group as clients should be told: this node only while it
    /// leads with a quorum's backing, another only while it is heard from (`None`: nobody
    /// known).
    pub fn partition_leader(&self, raft: &GroupRaft) -> Option<NodeId> {
        let leader = raft.metrics().borrow_watched().current_leader;
        match leader {
            Some(l) if l == self.cfg.id => self.leads(raft).then_some(l),
            // A leader not heard from within its lease is probably gone: saying "none" keeps
            // clients asking (librdkafka refreshes fast while a leader is unknown) instead of
            // dialling a dead node until the election is over.
            Some(l) => self.net.heard().within(l, self.cfg.timing.lease()).then_some(l),
            None => None,
        }
    }
}
