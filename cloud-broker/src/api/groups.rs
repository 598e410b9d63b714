//! Consumer groups, classic protocol: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch. This node coordinates every group.
//!
//! # Group states
//! `Empty` → (first join, after a short initial delay) → `PreparingRebalance` → (every known
//! member rejoined, or the rebalance timeout expired: stragglers are removed) →
//! `CompletingRebalance` (generation + 1, leader chosen, joiners answered; the leader gets the
//! member list) → (the leader's SyncGroup carries the assignments) → `Stable`. A member joining
//! or leaving, or missing its session timeout, sends the group back to `PreparingRebalance`;
//! members learn it from `REBALANCE_IN_PROGRESS` on their next heartbeat and rejoin.
//!
//! Membership lives in memory (clients rejoin after a broker restart, as they do after a
//! coordinator move); committed offsets are durable (written through the log writer).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::Broker;
use crate::errors::Code;
use crate::state::Request;

/// How long an empty group waits for more members before its first rebalance completes.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// What a joiner gets when the rebalance completes.
#[derive(Debug, Clone)]
struct JoinResult {
    code: Code,
    generation: i32,
    protocol: String,
    leader: String,
    member_id: String,
    members: Vec<(String, Bytes)>,
}

#[derive(Debug)]
struct Member {
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_heartbeat: Instant,
    joined: Option<oneshot::Sender<JoinResult>>,
    syncing: Option<oneshot::Sender<(Code, Bytes)>>,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// When the current rebalance gives up on members that did not rejoin.
    deadline: Instant,
    /// A fresh group waits until then for more members even if all known ones joined.
    not_before: Instant,
    assignments: HashMap<String, Bytes>,
}

impl Group {
    fn new() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            deadline: Instant::now(),
            not_before: Instant::now(),
            assignments: HashMap::new(),
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, delay: Duration) {
        if self.state != State::PreparingRebalance {
            let timeout = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::from_secs(30));
            self.not_before = now + delay;
            self.deadline = now + timeout.max(delay);
            self.state = State::PreparingRebalance;
            // Anyone waiting on a sync from the old generation rejoins.
            for m in self.members.values_mut() {
                if let Some(tx) = m.syncing.take() {
                    let _ = tx.send((Code::RebalanceInProgress, Bytes::new()));
                }
            }
        }
    }

    /// Completes the rebalance once every member rejoined (and a fresh group's initial delay
    /// passed), or when the rebalance timeout expires (members that did not rejoin are dropped).
    fn maybe_complete(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = !self.members.is_empty() && self.members.values().all(|m| m.joined.is_some());
        if !((all_joined && now >= self.not_before) || now >= self.deadline) {
            return;
        }
        self.members.retain(|_, m| m.joined.is_some());
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            return;
        }
        self.generation += 1;
        // The first protocol (in the first member's preference order) that every member offers.
        let first = self
            .members
            .values()
            .next()
            .map(|m| m.protocols.clone())
            .unwrap_or_default();
        self.protocol = first
            .iter()
            .map(|(n, _)| n.clone())
            .find(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .unwrap_or_default();
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        let metas: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.protocols
                        .iter()
                        .find(|(p, _)| *p == self.protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        self.state = State::CompletingRebalance;
        self.assignments.clear();
        for (id, m) in self.members.iter_mut() {
            m.last_heartbeat = now;
            if let Some(tx) = m.joined.take() {
                let _ = tx.send(JoinResult {
                    code: Code::None,
                    generation: self.generation,
                    protocol: self.protocol.clone(),
                    leader: self.leader.clone(),
                    member_id: id.clone(),
                    members: if *id == self.leader {
                        metas.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }
}

/// The coordinator of every group on this node.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
}

impl Coordinator {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Completes due rebalances and expires members whose session timed out. Call every ~100 ms.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.lock();
        for g in groups.values_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.joined.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            // Also mid-rebalance (Kafka does the same): a member that died without LeaveGroup
            // is dropped after its session timeout, not after the rebalance timeout (the
            // client's max.poll.interval.ms, 5 minutes by default) that the others wait for.
            if !expired.is_empty() {
                for id in &expired {
                    g.members.remove(id);
                }
                if g.members.is_empty() {
                    g.state = State::Empty;
                } else {
                    g.prepare_rebalance(now, Duration::ZERO);
                }
            }
            g.maybe_complete(now);
        }
    }

    /// Whether `member` may commit for `generation` in `group` (standalone commits with
    /// generation -1 are always allowed).
    fn check_commit(&self, group: &str, member: &str, generation: i32) -> Code {
        if generation < 0 && member.is_empty() {
            return Code::None;
        }
        let groups = self.lock();
        let Some(g) = groups.get(group) else {
            return Code::UnknownMemberId;
        };
        if !g.members.contains_key(member) {
            return Code::UnknownMemberId;
        }
        if generation != g.generation {
            return Code::IllegalGeneration;
        }
        if g.state == State::PreparingRebalance || g.state == State::CompletingRebalance {
            return Code::RebalanceInProgress;
        }
        Code::None
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// FindCoordinator: always this node (v4+: for each key asked, in a list).
pub fn find_coordinator(b: &Arc<Broker>, r: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let (host, port) = b.cfg.advertised();
    let me = BrokerId(b.cfg.node_id);
    if version >= 4 {
        let coordinators = r
            .coordinator_keys
            .into_iter()
            .map(|key| {
                find_coordinator_response::Coordinator::default()
                    .with_key(key)
                    .with_node_id(me)
                    .with_host(s(&host))
                    .with_port(port)
                    .with_error_message(None)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let mut r = FindCoordinatorResponse::default()
        .with_node_id(me)
        .with_host(s(&host))
        .with_port(port);
    if version >= 1 {
        r = r.with_error_message(None);
    }
    r
}

/// JoinGroup: waits until the rebalance completes.
pub async fn join(b: &Arc<Broker>, r: JoinGroupRequest, version: i16) -> JoinGroupResponse {
    let fail = |code: Code, member: &str| {
        JoinGroupResponse::default()
            .with_error_code(code.code())
            .with_generation_id(-1)
            .with_member_id(s(member))
            .with_protocol_name(Some(StrBytes::default()))
    };
    let group = r.group_id.0.to_string();
    if group.is_empty() {
        return fail(Code::InvalidGroupId, "");
    }
    let protocol_type = r.protocol_type.clone();
    if !(1_000..=300_000).contains(&r.session_timeout_ms) {
        return fail(Code::InvalidSessionTimeout, &r.member_id);
    }
    let rebalance_ms = if version >= 1 {
        r.rebalance_timeout_ms
    } else {
        r.session_timeout_ms
    };
    let (tx, rx) = oneshot::channel();
    let member_id;
    {
        let mut groups = b.groups.lock();
        let g = groups.entry(group.clone()).or_insert_with(Group::new);
        if !g.members.is_empty() && g.protocol_type != r.protocol_type.as_str() {
            return fail(Code::InconsistentGroupProtocol, &r.member_id);
        }
        member_id = if r.member_id.is_empty() {
            format!("member-{:016x}", foundation::ids::random_u64())
        } else if g.members.contains_key(r.member_id.as_str()) {
            r.member_id.to_string()
        } else {
            return fail(Code::UnknownMemberId, &r.member_id);
        };
        g.protocol_type = r.protocol_type.to_string();
        let now = Instant::now();
        let protocols = r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        let m = g.members.entry(member_id.clone()).or_insert_with(|| Member {
            session_timeout: Duration::ZERO,
            rebalance_timeout: Duration::ZERO,
            protocols: Vec::new(),
            last_heartbeat: now,
            joined: None,
            syncing: None,
        });
        m.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        m.rebalance_timeout = Duration::from_millis(rebalance_ms.max(0) as u64);
        m.protocols = protocols;
        m.last_heartbeat = now;
        m.joined = Some(tx);
        let delay = if g.state == State::Empty {
            INITIAL_REBALANCE_DELAY
        } else {
            Duration::ZERO
        };
        g.prepare_rebalance(now, delay);
        g.maybe_complete(now);
    }
    match rx.await {
        Ok(j) => JoinGroupResponse::default()
            .with_error_code(j.code.code())
            .with_generation_id(j.generation)
            .with_protocol_type(Some(protocol_type))
            .with_protocol_name(Some(s(&j.protocol)))
            .with_leader(s(&j.leader))
            .with_member_id(s(&j.member_id))
            .with_members(
                j.members
                    .into_iter()
                    .map(|(id, meta)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(s(&id))
                            .with_metadata(meta)
                    })
                    .collect(),
            ),
        Err(_) => fail(Code::RebalanceInProgress, &member_id),
    }
}

/// SyncGroup: the leader brings the assignments; everyone gets theirs (v5+: with the group's
/// protocol type and name, which clients check).
pub async fn sync(b: &Arc<Broker>, r: SyncGroupRequest) -> SyncGroupResponse {
    let fail = |c: Code| SyncGroupResponse::default().with_error_code(c.code());
    let (tx, rx) = oneshot::channel();
    let ok;
    {
        let mut groups = b.groups.lock();
        let Some(g) = groups.get_mut(r.group_id.as_str()) else {
            return fail(Code::UnknownMemberId);
        };
        let member = r.member_id.to_string();
        if !g.members.contains_key(&member) {
            return fail(Code::UnknownMemberId);
        }
        if r.generation_id != g.generation {
            return fail(Code::IllegalGeneration);
        }
        let (protocol_type, protocol) = (s(&g.protocol_type), s(&g.protocol));
        ok = move |code: Code, a: Bytes| {
            SyncGroupResponse::default()
                .with_error_code(code.code())
                .with_protocol_type(Some(protocol_type))
                .with_protocol_name(Some(protocol))
                .with_assignment(a)
        };
        match g.state {
            State::PreparingRebalance | State::Empty => return fail(Code::RebalanceInProgress),
            State::Stable => {
                let a = g.assignments.get(&member).cloned().unwrap_or_default();
                return ok(Code::None, a);
            }
            State::CompletingRebalance => {}
        }
        if member == g.leader {
            for a in &r.assignments {
                g.assignments
                    .insert(a.member_id.to_string(), a.assignment.clone());
            }
            g.state = State::Stable;
            let now = Instant::now();
            for (id, m) in g.members.iter_mut() {
                m.last_heartbeat = now;
                if let Some(w) = m.syncing.take() {
                    let _ = w.send((Code::None, g.assignments.get(id).cloned().unwrap_or_default()));
                }
            }
            let a = g.assignments.get(&member).cloned().unwrap_or_default();
            return ok(Code::None, a);
        }
        if let Some(m) = g.members.get_mut(&member) {
            m.syncing = Some(tx);
        }
    }
    match rx.await {
        Ok((code, a)) => ok(code, a),
        Err(_) => fail(Code::RebalanceInProgress),
    }
}

/// Heartbeat: keeps the session; tells members to rejoin during a rebalance.
pub fn heartbeat(b: &Arc<Broker>, r: HeartbeatRequest) -> HeartbeatResponse {
    let mut groups = b.groups.lock();
    let code = match groups.get_mut(r.group_id.as_str()) {
        None => Code::UnknownMemberId,
        Some(g) => match g.members.get_mut(r.member_id.as_str()) {
            None => Code::UnknownMemberId,
            Some(m) => {
                m.last_heartbeat = Instant::now();
                if r.generation_id != g.generation {
                    Code::IllegalGeneration
                } else if g.state == State::PreparingRebalance {
                    Code::RebalanceInProgress
                } else {
                    Code::None
                }
            }
        },
    };
    HeartbeatResponse::default().with_error_code(code.code())
}

/// LeaveGroup: one member (v0–2) or a list of them (v3+, each with its own result).
pub fn leave(b: &Arc<Broker>, r: LeaveGroupRequest) -> LeaveGroupResponse {
    let batch = !r.members.is_empty();
    let ids: Vec<StrBytes> = if batch {
        r.members.iter().map(|m| m.member_id.clone()).collect()
    } else {
        vec![r.member_id.clone()]
    };
    let mut groups = b.groups.lock();
    let codes: Vec<Code> = match groups.get_mut(r.group_id.as_str()) {
        None => vec![Code::UnknownMemberId; ids.len()],
        Some(g) => {
            let codes: Vec<Code> = ids
                .iter()
                .map(|id| match g.members.remove(id.as_str()) {
                    Some(_) => Code::None,
                    None => Code::UnknownMemberId,
                })
                .collect();
            if codes.contains(&Code::None) {
                if g.members.is_empty() {
                    g.state = State::Empty;
                } else {
                    g.prepare_rebalance(Instant::now(), Duration::ZERO);
                    g.maybe_complete(Instant::now());
                }
            }
            codes
        }
    };
    if !batch {
        return LeaveGroupResponse::default().with_error_code(codes[0].code());
    }
    let members = r
        .members
        .into_iter()
        .zip(codes)
        .map(|(m, c)| {
            leave_group_response::MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(c.code())
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// OffsetCommit: checks the member and generation, then commits durably.
pub async fn offset_commit(b: &Arc<Broker>, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = r.group_id.to_string();
    let check = b
        .groups
        .check_commit(&group, r.member_id.as_str(), r.generation_id_or_member_epoch);
    let mut entries = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            entries.push((
                t.name.to_string(),
                p.partition_index.max(0) as u32,
                p.committed_offset,
                p.committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            ));
        }
    }
    let codes = if check != Code::None {
        vec![check; entries.len()]
    } else {
        let (tx, rx) = oneshot::channel();
        if b.writer.send(Request::CommitOffsets {
            group,
            offsets: entries.clone(),
            reply: tx,
        }) {
            rx.await
                .unwrap_or_else(|_| vec![Code::KafkaStorageError; entries.len()])
        } else {
            vec![Code::KafkaStorageError; entries.len()]
        }
    };
    let mut i = 0;
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let c = codes.get(i).copied().unwrap_or(Code::KafkaStorageError);
                    i += 1;
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(c.code())
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(parts)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Per topic: `(partition, offset or -1, metadata)`.
type FetchedOffsets = Vec<(String, Vec<(i32, i64, String)>)>;

/// Committed offsets of `group` for `topics` (None = all it has).
fn fetch_offsets(b: &Broker, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> FetchedOffsets {
    let offsets = b.offsets.read().unwrap_or_else(|e| e.into_inner());
    let topics = topics.unwrap_or_else(|| {
        let mut m: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (g, t, p) in offsets.keys() {
            if g == group {
                m.entry(t.clone()).or_default().push(*p as i32);
            }
        }
        m.into_iter().collect()
    });
    topics
        .into_iter()
        .map(|(t, parts)| {
            let ps = parts
                .into_iter()
                .map(
                    |p| match offsets.get(&(group.to_string(), t.clone(), p.max(0) as u32)) {
                        Some(o) => (p, o.offset, o.metadata.clone()),
                        None => (p, -1, String::new()),
                    },
                )
                .collect();
            (t, ps)
        })
        .collect()
}

/// OffsetFetch (v2–7 one group; v8 a list of groups).
pub fn offset_fetch(b: &Arc<Broker>, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = r
            .groups
            .iter()
            .map(|g| {
                let want = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let topics = fetch_offsets(b, g.group_id.as_str(), want)
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(s(&t)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|(p, o, m)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_metadata(Some(s(&m)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let want = r.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let topics = fetch_offsets(b, r.group_id.as_str(), want)
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(&t)))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, o, m)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_metadata(Some(s(&m)))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(now: Instant, joined: Option<oneshot::Sender<JoinResult>>) -> Member {
        Member {
            session_timeout: Duration::from_secs(6),
            rebalance_timeout: Duration::from_secs(60),
            protocols: vec![("range".into(), Bytes::new())],
            last_heartbeat: now,
            joined,
            syncing: None,
        }
    }

    /// Regression: a member killed without LeaveGroup while a rebalance was starting held the
    /// group until the rebalance timeout (kafka-python and librdkafka: 5 minutes), because
    /// session expiry was skipped in `PreparingRebalance`.
    #[test]
    fn a_member_dead_mid_rebalance_is_dropped_at_its_session_timeout() {
        let c = Coordinator::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        {
            let mut groups = c.lock();
            let g = groups.entry("g".into()).or_insert_with(Group::new);
            g.state = State::Stable;
            g.generation = 1;
            g.members.insert("dead".into(), member(t0, None));
            g.members.insert("live".into(), member(t0, Some(tx))); // rejoined, awaiting the result
            g.prepare_rebalance(t0, Duration::ZERO);
        }
        c.tick(t0 + Duration::from_secs(5));
        assert!(
            rx.try_recv().is_err(),
            "completed before the dead member's session ran out"
        );
        c.tick(t0 + Duration::from_secs(7));
        let j = rx.try_recv().expect("rebalance completed at the session timeout");
        assert_eq!((j.generation, j.leader.as_str(), j.members.len()), (2, "live", 1));
        let groups = c.lock();
        assert_eq!(groups["g"].members.keys().collect::<Vec<_>>(), ["live"]);
        assert_eq!(groups["g"].state, State::CompletingRebalance);
    }
}
