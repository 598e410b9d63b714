//! Consumer groups, classic protocol: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, and the admin side: ListGroups, DescribeGroups,
//! DeleteGroups. This node coordinates every group.
//!
//! The rules are in [`crate::coordinator`] (a sans-I/O state machine, with the state × request
//! table); this is its thin async shell. It owns what the core must not: the clock
//! (`Instant::now()` per request, [`Coordinator::tick`] from the broker's 100 ms ticker), new
//! member ids (client id, `-`, a random UUID, as Kafka makes them), and the waiting: a
//! JoinGroup or SyncGroup the core parks is a oneshot receiver under a token, completed when a
//! later event's replies name that token. Committed offsets are durable, written through the
//! log writer; membership lives in memory (clients rejoin after a broker restart, as they do
//! after a coordinator move).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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
use crate::coordinator::{
    self, Deletion, Description, JoinRequest, JoinResponse, Limits, Listed, Reply, Response, SyncRequest,
    SyncResponse, Token,
};
use crate::errors::Code;
use crate::storage::OffsetTable;

/// DescribeGroups v3+ `authorized_operations` when asked for: every operation on a group
/// (READ, DELETE, DESCRIBE: bits 3, 6, 8), as a Kafka 3.x broker without an authorizer
/// answers.
pub const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// The type ListGroups v5 gives every group (the only one there is here).
pub const GROUP_TYPE: &str = "classic";

/// Who sent a request: the header's client id and the peer's address, kept per member for
/// DescribeGroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// `client_id` from the request header (`""` if none).
    pub id: String,
    /// The peer's address as Kafka shows it (`/127.0.0.1`), `""` if unknown.
    pub host: String,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) core: coordinator::Coordinator,
    waiting: HashMap<Token, oneshot::Sender<Response>>,
    next: Token,
}

impl Inner {
    fn deliver(&mut self, replies: Vec<Reply>) {
        for r in replies {
            if let Some(tx) = self.waiting.remove(&r.token) {
                let _ = tx.send(r.response);
            }
        }
    }

    /// A token for a request that may be parked, and the receiver of its answer.
    fn park(&mut self) -> (Token, oneshot::Receiver<Response>) {
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(self.next, tx);
        (self.next, rx)
    }
}

/// The coordinator of every group on this node: the core behind a lock, and the waiters.
#[derive(Debug, Default)]
pub struct Coordinator {
    inner: Mutex<Inner>,
}

impl Coordinator {
    /// A coordinator with these limits.
    pub fn new(limits: Limits) -> Self {
        Coordinator {
            inner: Mutex::new(Inner {
                core: coordinator::Coordinator::new(limits),
                ..Inner::default()
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the group timers due at `now` and answers whoever they complete. Call every
    /// ~100 ms.
    pub fn tick(&self, now: Instant) {
        let mut inner = self.lock();
        let replies = inner.core.tick(now);
        inner.deliver(replies);
    }

    /// Feeds a request that may be parked to the core; resolves to its answer.
    async fn parked(
        &self,
        f: impl FnOnce(&mut coordinator::Coordinator, Token) -> Vec<Reply>,
    ) -> Option<Response> {
        let rx = {
            let mut inner = self.lock();
            let (token, rx) = inner.park();
            let replies = f(&mut inner.core, token);
            inner.deliver(replies);
            rx
        };
        rx.await.ok()
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A member id as Kafka makes them: the client id, `-`, a random (v4) UUID.
fn new_member_id(client_id: &str) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&foundation::ids::random_u64().to_be_bytes());
    b[8..].copy_from_slice(&foundation::ids::random_u64().to_be_bytes());
    format!("{client_id}-{}", uuid::Builder::from_random_bytes(b).into_uuid())
}

/// Whether `group` has committed offsets.
fn has_offsets(offsets: &OffsetTable, group: &str) -> bool {
    let table = offsets.read().unwrap_or_else(|e| e.into_inner());
    table
        .range((group.to_string(), String::new(), 0)..)
        .next()
        .is_some_and(|((g, _, _), _)| g == group)
}

/// Every group with committed offsets.
fn groups_with_offsets(offsets: &OffsetTable) -> BTreeSet<String> {
    let table = offsets.read().unwrap_or_else(|e| e.into_inner());
    let mut out = BTreeSet::new();
    for (g, _, _) in table.keys() {
        if out.last() != Some(g) {
            out.insert(g.clone());
        }
    }
    out
}

/// FindCoordinator: always this node (v4+: for each key asked, in a list).
pub fn find_coordinator(
    b: &Arc<Broker>,
    r: FindCoordinatorRequest,
    version: i16,
    listener: &str,
) -> FindCoordinatorResponse {
    // Transaction coordinators are groups' too; the key names the group either way.
    let answer = |key: &str| match b.coordinator(key, listener) {
        Some((id, host, port)) => (Code::None, BrokerId(id), host, port),
        None => (Code::CoordinatorNotAvailable, BrokerId(-1), String::new(), -1),
    };
    if version >= 4 {
        let coordinators = r
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (code, id, host, port) = answer(key.as_str());
                find_coordinator_response::Coordinator::default()
                    .with_key(key)
                    .with_error_code(code.code())
                    .with_node_id(id)
                    .with_host(s(&host))
                    .with_port(port)
                    .with_error_message(None)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (code, id, host, port) = answer(r.key.as_str());
    let mut r = FindCoordinatorResponse::default()
        .with_error_code(code.code())
        .with_node_id(id)
        .with_host(s(&host))
        .with_port(port);
    if version >= 1 {
        r = r.with_error_message(None);
    }
    r
}

/// The JoinGroup response for `version` (v0–6 have no null protocol name; group instance ids
/// from v5).
fn join_response(j: JoinResponse, version: i16) -> JoinGroupResponse {
    let members = j
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(s(&m.member_id))
                .with_group_instance_id(m.group_instance_id.filter(|_| version >= 5).map(|i| s(&i)))
                .with_metadata(m.metadata)
        })
        .collect();
    let protocol_name = match j.protocol_name {
        Some(p) => Some(s(&p)),
        None if version >= 7 => None,
        None => Some(StrBytes::default()),
    };
    JoinGroupResponse::default()
        .with_error_code(j.code.code())
        .with_generation_id(j.generation)
        .with_protocol_type(j.protocol_type.filter(|_| version >= 7).map(|p| s(&p)))
        .with_protocol_name(protocol_name)
        .with_leader(s(&j.leader))
        .with_member_id(s(&j.member_id))
        .with_members(members)
}

/// JoinGroup: answered at once or when the rebalance completes.
pub async fn join(b: &Arc<Broker>, r: JoinGroupRequest, version: i16, client: &Client) -> JoinGroupResponse {
    let member_id = r.member_id.to_string();
    let req = |token| JoinRequest {
        token,
        group: r.group_id.to_string(),
        member_id: member_id.clone(),
        new_member_id: new_member_id(&client.id),
        group_instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
        require_known_member_id: version >= 4,
        client_id: client.id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: r.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            r.rebalance_timeout_ms
        } else {
            r.session_timeout_ms
        },
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
    };
    let answer = b
        .groups
        .parked(|core, token| core.join(Instant::now(), req(token)))
        .await;
    let j = match answer {
        Some(Response::Join(j)) => j,
        _ => JoinResponse::error(&member_id, Code::CoordinatorNotAvailable),
    };
    join_response(j, version)
}

fn sync_response(r: SyncResponse) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(r.code.code())
        .with_protocol_type(r.protocol_type.map(|p| s(&p)))
        .with_protocol_name(r.protocol_name.map(|p| s(&p)))
        .with_assignment(r.assignment)
}

/// SyncGroup: the leader brings the assignments; everyone gets theirs (v5+: with the group's
/// protocol type and name, which clients check).
pub async fn sync(b: &Arc<Broker>, r: SyncGroupRequest) -> SyncGroupResponse {
    let req = |token| SyncRequest {
        token,
        group: r.group_id.to_string(),
        member_id: r.member_id.to_string(),
        generation: r.generation_id,
        protocol_type: r.protocol_type.as_ref().map(|p| p.to_string()),
        protocol_name: r.protocol_name.as_ref().map(|p| p.to_string()),
        assignments: r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let answer = b
        .groups
        .parked(|core, token| core.sync(Instant::now(), req(token)))
        .await;
    match answer {
        Some(Response::Sync(r)) => sync_response(r),
        _ => sync_response(SyncResponse::error(Code::CoordinatorNotAvailable)),
    }
}

/// Heartbeat: keeps the session; tells members to rejoin during a rebalance.
pub fn heartbeat(b: &Arc<Broker>, r: HeartbeatRequest) -> HeartbeatResponse {
    let code = b.groups.lock().core.heartbeat(
        Instant::now(),
        r.group_id.as_str(),
        r.member_id.as_str(),
        r.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code.code())
}

/// The LeaveGroup response: v0–2 carry one member's code at the top, v3+ one per member.
fn leave_response(
    result: Result<Vec<Code>, Code>,
    members: Vec<leave_group_request::MemberIdentity>,
    version: i16,
) -> LeaveGroupResponse {
    match (result, version >= 3) {
        (Err(code), _) => LeaveGroupResponse::default().with_error_code(code.code()),
        (Ok(codes), false) => {
            let code = codes.first().copied().unwrap_or(Code::None);
            LeaveGroupResponse::default().with_error_code(code.code())
        }
        (Ok(codes), true) => {
            let members = members
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
    }
}

/// LeaveGroup: one member (v0–2) or a list of them (v3+, each with its own result).
pub fn leave(b: &Arc<Broker>, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members = if version >= 3 {
        r.members
    } else {
        vec![leave_group_request::MemberIdentity::default().with_member_id(r.member_id.clone())]
    };
    let ids: Vec<String> = members.iter().map(|m| m.member_id.to_string()).collect();
    let result = {
        let mut inner = b.groups.lock();
        let result = inner.core.leave(Instant::now(), r.group_id.as_str(), &ids);
        result.map(|(codes, replies)| {
            inner.deliver(replies);
            codes
        })
    };
    leave_response(result, members, version)
}

/// OffsetCommit: checks the member and generation, then commits durably.
pub async fn offset_commit(b: &Arc<Broker>, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = r.group_id.to_string();
    let check = if b.coordinates(&group) {
        b.groups.lock().core.commit(
            Instant::now(),
            &group,
            r.member_id.as_str(),
            r.generation_id_or_member_epoch,
        )
    } else {
        Code::NotCoordinator
    };
    let mut entries = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            entries.push((
                t.name.to_string(),
                // A negative index is no partition (refused below), never partition 0.
                u32::try_from(p.partition_index).unwrap_or(u32::MAX),
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
        b.commit_offsets(&group, entries.clone()).await
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
                .map(|p| {
                    match u32::try_from(p)
                        .ok()
                        .and_then(|i| offsets.get(&(group.to_string(), t.clone(), i)))
                    {
                        Some(o) => (p, o.offset, o.metadata.clone()),
                        None => (p, -1, String::new()),
                    }
                })
                .collect();
            (t, ps)
        })
        .collect()
}

/// OffsetFetch (v2–7 one group; v8 a list of groups): offsets in every group state.
pub fn offset_fetch(b: &Arc<Broker>, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    // KIP-447: a read_committed consumer asks for stable offsets only; an offset a transaction
    // holds pending is UNSTABLE_OFFSET_COMMIT (retriable) until the transaction ends.
    let unstable = |group: &str, topic: &str, p: i32| {
        r.require_stable
            && b.pending.read().unwrap_or_else(|e| e.into_inner()).contains(&(
                group.to_string(),
                topic.to_string(),
                p.max(0) as u32,
            ))
    };
    let code = |group: &str, topic: &str, p: i32| {
        if unstable(group, topic, p) {
            Code::UnstableOffsetCommit.code()
        } else {
            0
        }
    };
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
                let group = g.group_id.as_str();
                let topics = fetch_offsets(b, group, want)
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
                                            .with_error_code(code(group, &t, p))
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
    let group = r.group_id.as_str();
    let topics = fetch_offsets(b, group, want)
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
                                .with_error_code(code(group, &t, p))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// The ListGroups response for `version` (state from v4, type from v5).
fn list_response(groups: Vec<Listed>, version: i16) -> ListGroupsResponse {
    let groups = groups
        .into_iter()
        .map(|l| {
            let mut g = list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(s(&l.group)))
                .with_protocol_type(s(&l.protocol_type));
            if version >= 4 {
                g = g.with_group_state(s(l.state.name()));
            }
            if version >= 5 {
                g = g.with_group_type(s(GROUP_TYPE));
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// ListGroups: the groups held, and those known only by committed offsets (as `Empty`);
/// v4+ filters by state, v5+ by type (every group here is `classic`).
pub fn list_groups(b: &Arc<Broker>, r: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let states: Vec<String> = r.states_filter.iter().map(|f| f.to_string()).collect();
    let type_ok = r.types_filter.is_empty()
        || r.types_filter
            .iter()
            .any(|t| t.trim().eq_ignore_ascii_case(GROUP_TYPE));
    let groups = if type_ok {
        let with_offsets = groups_with_offsets(&b.offsets);
        b.groups.lock().core.list(&with_offsets, &states)
    } else {
        Vec::new()
    };
    list_response(groups, version)
}

/// One DescribeGroups entry for `version` (instance ids from v4, operations from v3).
fn described(
    group: &str,
    d: Description,
    version: i16,
    operations: bool,
) -> describe_groups_response::DescribedGroup {
    let members = d
        .members
        .into_iter()
        .map(|m| {
            describe_groups_response::DescribedGroupMember::default()
                .with_member_id(s(&m.member_id))
                .with_group_instance_id(m.group_instance_id.filter(|_| version >= 4).map(|i| s(&i)))
                .with_client_id(s(&m.client_id))
                .with_client_host(s(&m.client_host))
                .with_member_metadata(m.metadata)
                .with_member_assignment(m.assignment)
        })
        .collect();
    let mut g = describe_groups_response::DescribedGroup::default()
        .with_group_id(GroupId(s(group)))
        .with_group_state(s(d.state.name()))
        .with_protocol_type(s(&d.protocol_type))
        .with_protocol_data(s(&d.protocol))
        .with_members(members);
    if version >= 3 && operations {
        g = g.with_authorized_operations(GROUP_OPERATIONS);
    }
    g
}

/// DescribeGroups: state (as Kafka spells it), protocol type, and the members with their
/// client id and host; the protocol, member metadata and assignments only when `Stable`. A
/// group not held is `Dead` (`Empty` if it has committed offsets).
pub fn describe_groups(b: &Arc<Broker>, r: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let offsets = has_offsets(&b.offsets, g.as_str());
            let d = b.groups.lock().core.describe(g.as_str(), offsets);
            described(g.as_str(), d, version, r.include_authorized_operations)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

fn delete_response(results: Vec<(GroupId, Code)>) -> DeleteGroupsResponse {
    let results = results
        .into_iter()
        .map(|(g, c)| {
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(c.code())
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

/// DeleteGroups: an `Empty` group, or one known only by its committed offsets, is forgotten
/// and its offsets deleted durably; a group with members is `NON_EMPTY_GROUP`, an unknown one
/// `GROUP_ID_NOT_FOUND`. Each group is answered once, however often it is named.
pub async fn delete_groups(b: &Arc<Broker>, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut seen = BTreeSet::new();
    let mut results = Vec::new();
    for g in r.groups_names {
        if !seen.insert(g.to_string()) {
            continue;
        }
        let offsets = has_offsets(&b.offsets, g.as_str());
        let deletion = b.groups.lock().core.delete(g.as_str(), offsets);
        let code = match deletion {
            Deletion::Refused(code) => code,
            Deletion::DeleteOffsets => b.delete_group_offsets(g.as_str()).await,
        };
        results.push((g, code));
    }
    delete_response(results)
}

/// The topics a consumer group's members subscribe to (their `consumer` protocol metadata);
/// `None` when that is not known (a group with members that is not `Stable`).
fn subscribed_topics(d: &Description) -> Option<BTreeSet<String>> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if d.members.is_empty() {
        return Some(BTreeSet::new());
    }
    if d.state != coordinator::State::Stable {
        return None;
    }
    let mut topics = BTreeSet::new();
    for m in &d.members {
        let mut buf = m.metadata.clone();
        if buf.len() < 2 {
            return None;
        }
        let version = i16::from_be_bytes([buf[0], buf[1]]);
        let _ = bytes::Buf::get_i16(&mut buf);
        // A version newer than the decoder knows is read as the newest it knows (the newer
        // fields follow the topics); anything undecodable makes the subscriptions unknown.
        let sub = ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()?;
        topics.extend(sub.topics.iter().map(|t| t.to_string()));
    }
    Some(topics)
}

/// OffsetDelete: forgets a group's committed offsets of the partitions named, except those
/// of topics the group's members subscribe to (`GROUP_SUBSCRIBED_TO_TOPIC`), as Kafka does;
/// a group with members of another protocol type is `NON_EMPTY_GROUP`, an unknown one
/// `GROUP_ID_NOT_FOUND`.
pub async fn offset_delete(b: &Arc<Broker>, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
    use kafka_protocol::messages::offset_delete_response::{
        OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    };
    let group = r.group_id.to_string();
    let top = |code: Code| OffsetDeleteResponse::default().with_error_code(code.code());
    if group.is_empty() {
        return top(Code::InvalidGroupId);
    }
    if !b.coordinates(&group) {
        return top(Code::NotCoordinator);
    }
    let desc = b
        .groups
        .lock()
        .core
        .describe(&group, has_offsets(&b.offsets, &group));
    if desc.state == coordinator::State::Dead {
        return top(Code::GroupIdNotFound);
    }
    let consumer = desc.protocol_type == "consumer" || desc.members.is_empty();
    if !consumer {
        return top(Code::NonEmptyGroup);
    }
    let subscribed = subscribed_topics(&desc);
    let mut forget = Vec::new();
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let name = t.name.to_string();
        let known = b.catalog.topic(&name);
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let code = match &known {
                    Some(k) if p.partition_index >= 0 && (p.partition_index as u32) < k.meta.partitions => {
                        if subscribed.as_ref().is_none_or(|s| s.contains(&name)) {
                            Code::GroupSubscribedToTopic
                        } else {
                            forget.push((name.clone(), p.partition_index as u32));
                            Code::None
                        }
                    }
                    _ => Code::UnknownTopicOrPartition,
                };
                (p.partition_index, code)
            })
            .collect::<Vec<_>>();
        topics.push((t.name.clone(), partitions));
    }
    let written = if forget.is_empty() {
        Code::None
    } else {
        b.delete_offsets(&group, forget).await
    };
    if written != Code::None {
        return top(written);
    }
    OffsetDeleteResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, parts)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(i, c)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(i)
                                    .with_error_code(c.code())
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{JoinMember, MemberDescription, State};
    use crate::protocol::supported;
    use bytes::Bytes;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn versions(k: ApiKey) -> std::ops::RangeInclusive<i16> {
        let (lo, hi) = supported(k).expect("advertised");
        lo..=hi
    }

    fn round_trip<T: Encodable + Decodable>(what: &str, v: i16, m: &T) -> T {
        let mut buf = bytes::BytesMut::new();
        m.encode(&mut buf, v)
            .unwrap_or_else(|e| panic!("{what} v{v} does not encode: {e}"));
        T::decode(&mut buf.freeze(), v).unwrap_or_else(|e| panic!("{what} v{v} does not decode: {e}"))
    }

    fn member(id: &str) -> MemberDescription {
        MemberDescription {
            member_id: id.into(),
            group_instance_id: Some("instance".into()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            metadata: Bytes::from_static(b"meta"),
            assignment: Bytes::from_static(b"assignment"),
        }
    }

    #[test]
    fn every_group_response_encodes_at_every_advertised_version() {
        for v in versions(ApiKey::JoinGroup) {
            let ok = JoinResponse {
                code: Code::None,
                generation: 3,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                leader: "a".into(),
                member_id: "a".into(),
                members: vec![JoinMember {
                    member_id: "a".into(),
                    group_instance_id: Some("i".into()),
                    metadata: Bytes::from_static(b"m"),
                }],
            };
            let got = round_trip("JoinGroup", v, &join_response(ok, v));
            assert_eq!((got.generation_id, got.members.len()), (3, 1));
            assert_eq!(got.protocol_name.as_deref(), Some("range"));
            let err = JoinResponse::error("new-id", Code::MemberIdRequired);
            let got = round_trip("JoinGroup error", v, &join_response(err, v));
            assert_eq!((got.error_code, got.member_id.as_str()), (79, "new-id"));
        }
        for v in versions(ApiKey::SyncGroup) {
            let ok = SyncResponse {
                code: Code::None,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignment: Bytes::from_static(b"a"),
            };
            assert_eq!(
                round_trip("SyncGroup", v, &sync_response(ok)).assignment.as_ref(),
                b"a"
            );
            round_trip(
                "SyncGroup error",
                v,
                &sync_response(SyncResponse::error(Code::RebalanceInProgress)),
            );
        }
        for v in versions(ApiKey::LeaveGroup) {
            let members = vec![
                leave_group_request::MemberIdentity::default().with_member_id(s("a")),
                leave_group_request::MemberIdentity::default().with_member_id(s("b")),
            ];
            let r = leave_response(Ok(vec![Code::None, Code::UnknownMemberId]), members, v);
            let got = round_trip("LeaveGroup", v, &r);
            if v >= 3 {
                assert_eq!(got.members.len(), 2);
            }
            round_trip(
                "LeaveGroup error",
                v,
                &leave_response(Err(Code::InvalidGroupId), vec![], v),
            );
        }
        for v in versions(ApiKey::ListGroups) {
            let listed = vec![Listed {
                group: "g".into(),
                protocol_type: "consumer".into(),
                state: State::Stable,
            }];
            let got = round_trip("ListGroups", v, &list_response(listed, v));
            assert_eq!(got.groups[0].group_id.as_str(), "g");
            if v >= 4 {
                assert_eq!(got.groups[0].group_state.as_str(), "Stable");
            }
        }
        for v in versions(ApiKey::DescribeGroups) {
            for operations in [false, true] {
                let d = Description {
                    state: State::Stable,
                    protocol_type: "consumer".into(),
                    protocol: "range".into(),
                    members: vec![member("a"), member("b")],
                };
                let r = DescribeGroupsResponse::default().with_groups(vec![described("g", d, v, operations)]);
                let got = round_trip("DescribeGroups", v, &r);
                let g = &got.groups[0];
                assert_eq!(
                    (g.group_state.as_str(), g.protocol_data.as_str()),
                    ("Stable", "range")
                );
                assert_eq!(g.members[1].client_host.as_str(), "/127.0.0.1");
                if v >= 3 && operations {
                    assert_eq!(g.authorized_operations, GROUP_OPERATIONS);
                }
            }
        }
        for v in versions(ApiKey::DeleteGroups) {
            let r = delete_response(vec![(GroupId(s("g")), Code::NonEmptyGroup)]);
            assert_eq!(round_trip("DeleteGroups", v, &r).results[0].error_code, 68);
        }
    }

    #[test]
    fn member_ids_are_the_client_id_and_a_uuid() {
        let id = new_member_id("rdkafka");
        let (client, uuid) = id.split_at("rdkafka-".len());
        assert_eq!(client, "rdkafka-");
        let u = uuid::Uuid::parse_str(uuid).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_ne!(new_member_id("rdkafka"), id);
    }

    #[test]
    fn parked_requests_are_answered_by_later_events_and_the_ticker() {
        let c = Coordinator::default();
        let join = |c: &Coordinator, id: &str| {
            let mut inner = c.lock();
            let (token, rx) = inner.park();
            let replies = inner.core.join(
                Instant::now(),
                JoinRequest {
                    token,
                    group: "g".into(),
                    member_id: String::new(),
                    new_member_id: id.into(),
                    group_instance_id: None,
                    require_known_member_id: false,
                    client_id: "c".into(),
                    client_host: String::new(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 10_000,
                    protocol_type: "consumer".into(),
                    protocols: vec![("range".into(), Bytes::new())],
                },
            );
            inner.deliver(replies);
            rx
        };
        let mut a = join(&c, "a");
        let mut b = join(&c, "b");
        assert!(a.try_recv().is_err(), "answered before the initial delay");
        let later = Instant::now() + std::time::Duration::from_secs(5);
        c.tick(later);
        c.tick(later + std::time::Duration::from_secs(1));
        for rx in [&mut a, &mut b] {
            match rx.try_recv() {
                Ok(Response::Join(j)) => assert_eq!((j.code, j.generation), (Code::None, 1)),
                r => panic!("{r:?}"),
            }
        }
        assert!(c.lock().waiting.is_empty(), "a waiter was left behind");
    }
}
