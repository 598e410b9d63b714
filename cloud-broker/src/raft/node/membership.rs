//! Replacing a dead node with a new one, without stopping the cluster.
//!
//! An operator starts the new node with `--join` (it initializes nothing, so it cannot start
//! a cluster of its own) and asks any member to replace the old node with it
//! (`cloud-broker cluster replace`). That member checks that the old node is silent and the
//! new one answers, then records the decision in the metadata log
//! ([`MetaCommand::ReplaceNode`]): the new node takes the old one's place in every replica
//! list. Nothing else is done by that request. From then on, every group's leader brings its
//! Raft membership in line with the metadata on each balancer round ([`Node::converge`]):
//! it adds the missing replicas as learners, waits until each has caught up (openraft sends a
//! snapshot and the entries after it), and replaces the voters with the metadata's replicas
//! (openraft's joint consensus; the two remaining voters are a quorum of both the old and
//! the new set, so the group keeps serving throughout). A leader that dies halfway is
//! succeeded by one that finishes the job, since the target lives in the replicated metadata.
//!
//! The metadata group itself follows the same rule, its target being its voters with every
//! retired node swapped for its successor. A retired node is refused by every member from
//! then on (its directory should be deleted: it is no longer part of the cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use tracing::{debug, info, warn};

use super::{Node, ISR_MAX_LAG};
use crate::raft::{GroupId, GroupRaft, NodeAddr, NodeId};
use crate::sm::metadata::{MetaCommand, MetaOutcome};
use crate::sm::offsets::OFFSETS_PARTITIONS;

/// How long one attempt waits for new replicas to catch up before the next round retries.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

impl Node {
    /// Replaces node `old`, which must be silent, with node `new`, whose Raft listener
    /// answers at `raft` (started with `join`): records the decision in the metadata; the
    /// groups' leaders carry it out (see the module docs). Refused with the reason when a
    /// check fails or the metadata refuses.
    pub async fn replace(&self, old: NodeId, new: NodeId, raft: &str) -> Result<(), String> {
        if self.cfg.join {
            return Err(format!(
                "node {} joined in a replacement's place and knows the cluster only through it: ask a node that was a member before",
                self.cfg.id
            ));
        }
        let meta = self.metadata();
        if let Some(by) = meta.replaced.get(&old) {
            return Err(format!("node {old} was replaced by node {by} already"));
        }
        if meta.replaced.contains_key(&new) {
            return Err(format!(
                "node {new} was retired; a replacement needs a new node id"
            ));
        }
        if old == new {
            return Err("a node cannot replace itself".into());
        }
        if self.alive(old) {
            return Err(format!(
                "node {old} is alive: stop it first (a replacement retires it for good)"
            ));
        }
        if !self.net.ping(new, raft, Duration::from_secs(2)).await {
            return Err(format!(
                "node {new} does not answer at {raft}: start it first, with --join, the same cluster name and that --raft-listen"
            ));
        }
        let offsets = (0..OFFSETS_PARTITIONS)
            .map(|n| self.offsets_replicas(n))
            .collect();
        let cmd = MetaCommand::ReplaceNode {
            old,
            new,
            raft: raft.to_string(),
            offsets,
        };
        match self.propose_meta(cmd, Duration::from_secs(10)).await? {
            MetaOutcome::Replaced => {
                info!(old, new, raft, "node replaced in the metadata; the groups follow");
                Ok(())
            }
            MetaOutcome::Refused(_) => Err(format!(
                "the metadata refused: node {old} is not a member, or node {new} already is"
            )),
            other => Err(format!("the metadata answered {other:?}")),
        }
    }

    /// The voters of a group this node hosts, as its Raft membership says (`None`: not hosted).
    pub fn voters(&self, group: GroupId) -> Option<Vec<NodeId>> {
        let raft = if group == GroupId::Metadata {
            Some(self.meta_raft.clone())
        } else {
            self.groups.get(group.key())
        }?;
        let m = raft.metrics().borrow_watched().clone();
        Some(m.membership_config.membership().voter_ids().collect())
    }

    /// The voters each group this node leads should have, by the metadata: a partition's
    /// replicas, an offsets log's replicas, and for the metadata group its voters with each
    /// retired node swapped for its successor.
    fn membership_targets(&self) -> Vec<(u64, GroupRaft, BTreeSet<NodeId>)> {
        let meta = self.metadata();
        let mut out = Vec::new();
        let voters: BTreeSet<NodeId> = self
            .meta_raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let target = voters.iter().map(|v| meta.successor(*v)).collect();
        out.push((GroupId::Metadata.key(), self.meta_raft.clone(), target));
        out.extend(
            self.placed_groups()
                .into_iter()
                .map(|(key, raft, replicas)| (key, raft, replicas.into_iter().collect())),
        );
        out
    }

    /// One round of membership convergence: every group this node leads whose voters differ
    /// from the metadata's replicas, and whose change is not under way already, gets a task
    /// that carries the change out (see the module docs).
    pub async fn converge(&self) {
        for (key, raft, target) in self.membership_targets() {
            if target.is_empty() || !self.leads(&raft) {
                continue;
            }
            let m = raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            // A joint configuration means openraft is in the middle of a change.
            if voters == target || membership.get_joint_config().len() > 1 {
                continue;
            }
            if !self
                .changing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key)
            {
                continue;
            }
            let addrs = self.members(target.iter().copied());
            let changing = self.changing.clone();
            tokio::spawn(async move {
                if let Err(e) = change_voters(&raft, &target, &addrs).await {
                    debug!(group = key, error = %e, "a membership change did not finish this round");
                }
                changing.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            });
        }
    }
}

/// Makes `target` the voters of the group `raft` leads: the missing ones are added as
/// learners, and once each has caught up the voters are replaced (the ones left out are
/// removed from the group).
async fn change_voters(
    raft: &GroupRaft,
    target: &BTreeSet<NodeId>,
    addrs: &BTreeMap<NodeId, NodeAddr>,
) -> Result<(), String> {
    let m = raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let adding: Vec<NodeId> = target.difference(&voters).copied().collect();
    for id in &adding {
        if learners.contains(id) {
            continue;
        }
        let Some(addr) = addrs.get(id).filter(|a| !a.raft.is_empty()) else {
            return Err(format!("no address known for node {id}"));
        };
        info!(node = id, "adding a replica to a group as a learner");
        raft.add_learner(*id, addr.clone(), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    raft.wait(Some(CATCH_UP_WAIT))
        .metrics(
            |m| {
                let last = m.last_log_index.unwrap_or(0);
                adding.iter().all(|id| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .is_some_and(|matched| matched.index + ISR_MAX_LAG >= last)
                })
            },
            "the new replicas have caught up",
        )
        .await
        .map_err(|e| e.to_string())?;
    info!(voters = ?target, "changing a group's voters");
    raft.change_membership(ChangeMembers::ReplaceAllVoters(target.clone()), false)
        .await
        .map_err(|e| {
            warn!(error = %e, "changing a group's voters failed");
            e.to_string()
        })?;
    Ok(())
}
