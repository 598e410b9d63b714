//! The consumer's membership of its group: finding the coordinator, JoinGroup and SyncGroup
//! (the leader assigns every member with [`group::range`]), heartbeats, offset commits and
//! LeaveGroup.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

use super::conn::Conn;
use super::*;

impl Consumer {
    /// `req` to the group's coordinator; on a failed call the connection is dropped (the next
    /// call finds the coordinator again).
    async fn coordinator_call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> anyhow::Result<R::Response> {
        let r = self.coordinator().await?.call(req, version, timeout).await;
        if r.is_err() {
            self.coordinator = None;
        }
        r
    }

    async fn coordinator(&mut self) -> anyhow::Result<&mut Conn> {
        // A connection left with a request in flight (a cancelled call) is not reused.
        if self.coordinator.as_ref().is_some_and(|c| !c.is_idle()) {
            self.coordinator = None;
            if let Some(addr) = self.coordinator_addr.clone() {
                if let Ok(c) = Conn::connect(&addr, &self.cfg.client_id, self.cfg.login.as_deref()).await {
                    self.coordinator = Some(c);
                }
            }
        }
        if self.coordinator.is_none() {
            if self.meta.is_none() {
                self.metadata(&self.cfg.topics.clone()).await?;
            }
            let meta = self.meta.as_mut().ok_or_else(|| anyhow!("no broker"))?;
            let r = meta
                .call(
                    &FindCoordinatorRequest::default()
                        .with_key(StrBytes::from_string(self.cfg.group_id.clone()))
                        .with_key_type(0),
                    FIND_COORDINATOR_V,
                    REQUEST_TIMEOUT,
                )
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    self.meta = None;
                    return Err(e);
                }
            };
            if r.error_code != 0 {
                bail!(
                    "no coordinator for group {:?} (error {}{})",
                    self.cfg.group_id,
                    r.error_code,
                    r.error_message.map(|m| format!(": {m}")).unwrap_or_default()
                );
            }
            let addr = format!("{}:{}", r.host, r.port);
            self.coordinator =
                Some(Conn::connect(&addr, &self.cfg.client_id, self.cfg.login.as_deref()).await?);
            self.coordinator_addr = Some(addr);
        }
        self.coordinator.as_mut().ok_or_else(|| anyhow!("no coordinator"))
    }

    /// JoinGroup then SyncGroup: the membership and this member's partitions.
    pub(super) async fn join(&mut self) -> anyhow::Result<()> {
        self.assigned.clear();
        self.fetch_conns.clear();
        let subscription = group::subscription(&self.cfg.topics);
        let join_timeout = self.cfg.rebalance_timeout + Duration::from_secs(5);
        let mut tries = 0;
        let joined = loop {
            tries += 1;
            if tries > 5 {
                bail!("could not join group {:?}", self.cfg.group_id);
            }
            let req = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(self.cfg.group_id.clone())))
                .with_session_timeout_ms(self.cfg.session_timeout.as_millis() as i32)
                .with_rebalance_timeout_ms(self.cfg.rebalance_timeout.as_millis() as i32)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(group::ASSIGNOR))
                    .with_metadata(subscription.clone())]);
            let r = self.coordinator_call(&req, JOIN_V, join_timeout).await?;
            match r.error_code {
                0 => break r,
                MEMBER_ID_REQUIRED => self.member_id = r.member_id.to_string(),
                UNKNOWN_MEMBER_ID => self.member_id.clear(),
                REBALANCE_IN_PROGRESS => {}
                COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => {
                    self.coordinator = None;
                    self.coordinator_addr = None;
                    bail!(
                        "the group's coordinator moved or is loading (error {})",
                        r.error_code
                    );
                }
                e => bail!("joining group {:?}: error {e}", self.cfg.group_id),
            }
        };
        self.member_id = joined.member_id.to_string();
        self.generation = joined.generation_id;
        let mut assignments = Vec::new();
        if joined.leader == joined.member_id {
            let members: BTreeMap<String, Vec<String>> = joined
                .members
                .iter()
                .map(|m| {
                    let topics = group::subscribed_topics(m.metadata.clone()).unwrap_or_default();
                    (m.member_id.to_string(), topics)
                })
                .collect();
            let mut all: Vec<String> = members.values().flatten().cloned().collect();
            all.sort();
            all.dedup();
            let mine = self.counts.clone();
            if all != self.cfg.topics {
                self.metadata(&all).await?;
            }
            let counts = self.counts.clone();
            self.counts = mine;
            for (m, parts) in group::range(&members, &counts) {
                assignments.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(m))
                        .with_assignment(group::assignment(&parts)),
                );
            }
        }
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.cfg.group_id.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str(group::ASSIGNOR)))
            .with_assignments(assignments);
        let r = self.coordinator_call(&req, SYNC_V, join_timeout).await?;
        if r.error_code != 0 {
            if r.error_code == UNKNOWN_MEMBER_ID {
                self.member_id.clear();
            }
            bail!("syncing group {:?}: error {}", self.cfg.group_id, r.error_code);
        }
        let parts = group::assigned(r.assignment)
            .ok_or_else(|| anyhow!("the group's leader sent an assignment that does not read"))?;
        self.joined = self.counts.clone();
        for (t, ps) in parts {
            for p in ps {
                self.assigned.insert(
                    (t.clone(), p),
                    Part {
                        next: None,
                        committed: -1,
                        paused_until: None,
                        stale_leader: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// One heartbeat; `Some(Rejoin)` when the group is rebalancing or forgot this member.
    pub(super) async fn heartbeat(&mut self) -> anyhow::Result<Option<Exit>> {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.cfg.group_id.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let r = self
            .coordinator_call(&req, HEARTBEAT_V, REQUEST_TIMEOUT)
            .await
            .context("heartbeat")?;
        Ok(self.group_error(r.error_code))
    }

    /// What a group error means for this member.
    fn group_error(&mut self, code: i16) -> Option<Exit> {
        match code {
            0 => None,
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                Some(Exit::Rejoin)
            }
            COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR | COORDINATOR_LOAD_IN_PROGRESS => {
                self.coordinator = None;
                self.coordinator_addr = None;
                Some(Exit::Rejoin)
            }
            // REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, FENCED_INSTANCE_ID and the rest.
            _ => Some(Exit::Rejoin),
        }
    }

    /// Commits the positions that moved since the last commit.
    pub(super) async fn commit(&mut self) -> anyhow::Result<Option<Exit>> {
        let mut topics: BTreeMap<String, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((t, p), part) in &self.assigned {
            if let Some(next) = part.next.filter(|&n| n != part.committed) {
                topics.entry(t.clone()).or_default().push(
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(*p)
                        .with_committed_offset(next)
                        .with_committed_leader_epoch(-1),
                );
            }
        }
        if topics.is_empty() || self.generation < 0 {
            return Ok(None);
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.cfg.group_id.clone())))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let r = self
            .coordinator_call(&req, COMMIT_V, REQUEST_TIMEOUT)
            .await
            .context("committing offsets")?;
        let mut exit = None;
        for t in &r.topics {
            for p in &t.partitions {
                let key = (t.name.0.to_string(), p.partition_index);
                if p.error_code == 0 {
                    let committed = req
                        .topics
                        .iter()
                        .filter(|x| x.name == t.name)
                        .flat_map(|x| &x.partitions)
                        .find(|x| x.partition_index == p.partition_index)
                        .map(|x| x.committed_offset);
                    if let (Some(part), Some(c)) = (self.assigned.get_mut(&key), committed) {
                        part.committed = c;
                    }
                } else if matches!(
                    p.error_code,
                    REBALANCE_IN_PROGRESS
                        | ILLEGAL_GENERATION
                        | UNKNOWN_MEMBER_ID
                        | NOT_COORDINATOR
                        | COORDINATOR_NOT_AVAILABLE
                ) {
                    exit = self.group_error(p.error_code);
                }
            }
        }
        Ok(exit)
    }

    /// Commits and leaves the group (so its partitions go to another member at once).
    pub(super) async fn leave(&mut self) {
        if self.member_id.is_empty() || self.coordinator_addr.is_none() {
            return;
        }
        let _ = self.commit().await;
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.cfg.group_id.clone())))
            .with_members(vec![
                MemberIdentity::default().with_member_id(StrBytes::from_string(self.member_id.clone()))
            ]);
        if let Ok(c) = self.coordinator().await {
            let _ = c.call(&req, LEAVE_V, REQUEST_TIMEOUT).await;
        }
        self.member_id.clear();
    }
}
