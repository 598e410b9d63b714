//! The consumer-group coordinator, classic protocol, as a sans-I/O state machine: one
//! [`Coordinator`] holds every group of this node and is fed events (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, the check of an OffsetCommit, DeleteGroups, and [`Coordinator::tick`])
//! with the time passed in. It answers at once where Kafka does, and otherwise returns
//! [`Reply`]s for requests parked earlier, identified by the [`Token`] the caller gave them. No
//! channels, clocks or random ids inside: new member ids are made by the caller and passed in.
//! The async shell is [`crate::api::groups`]; committed offsets live in [`crate::sm::offsets`].
//!
//! Modelled on Apache Kafka's classic group coordinator (`GroupCoordinator.scala` in 3.x and
//! the classic-group paths of `GroupMetadataManager` / `ClassicGroup` in the new
//! group-coordinator module, which agree on everything below).
//!
//! # States
//! `Empty` → (a member joins) → `PreparingRebalance` → (every member and no pending member has
//! (re)joined, or the rebalance timeout passed: the rest are removed) → `CompletingRebalance`
//! (generation + 1, protocol chosen by vote, joiners answered, the leader with the member list)
//! → (the leader's SyncGroup brings the assignments) → `Stable`. A join of a new member, of the
//! leader, or of a member with new metadata, a leave, or a member's session running out sends
//! the group back to `PreparingRebalance`; members learn it from `REBALANCE_IN_PROGRESS` on
//! their next heartbeat. When the last member goes, the rebalance completes with no one:
//! `Empty`, generation + 1. `Dead` is what Kafka calls a group being removed; here it is any
//! group that is not held in memory (never joined, deleted, forgotten, or lost in a restart).
//!
//! # State × request
//! "Member" is a member of the group; "pending" is a member id handed out with
//! `MEMBER_ID_REQUIRED` and not yet used to join. Checks before the state, in this order:
//! JoinGroup/SyncGroup/Heartbeat/LeaveGroup with an empty group id → `INVALID_GROUP_ID`;
//! JoinGroup with a session timeout outside the bounds → `INVALID_SESSION_TIMEOUT`; protocol
//! type or protocols the group cannot take → `INCONSISTENT_GROUP_PROTOCOL`; SyncGroup and
//! Heartbeat from a non-member → `UNKNOWN_MEMBER_ID`, then with another generation →
//! `ILLEGAL_GENERATION`; SyncGroup v5 with another protocol type or name →
//! `INCONSISTENT_GROUP_PROTOCOL`.
//!
//! | request | Empty | PreparingRebalance | CompletingRebalance | Stable | Dead (not held) |
//! |---|---|---|---|---|---|
//! | JoinGroup, no member id, v4+ | `MEMBER_ID_REQUIRED` with a new id (pending until its session timeout) | same | same | same | group created `Empty`, then same |
//! | JoinGroup, no member id, v0–3 | added; initial rebalance (parked) | added (parked) | added; rebalance (parked) | added; rebalance (parked) | created, then as `Empty` |
//! | JoinGroup, pending id | added; initial rebalance (parked) | added (parked) | added; rebalance (parked) | added; rebalance (parked) | `UNKNOWN_MEMBER_ID` |
//! | JoinGroup, member | — (no members) | metadata updated (parked) | same metadata: current generation at once (the leader gets the members); new metadata: rebalance (parked) | follower with same metadata: current generation at once; leader or new metadata: rebalance (parked) | `UNKNOWN_MEMBER_ID` |
//! | JoinGroup, other id | `UNKNOWN_MEMBER_ID` | same | same | same | same |
//! | SyncGroup, member of the generation | — | `REBALANCE_IN_PROGRESS` | follower: parked until the leader's; leader: assignments kept (missing ones empty) → `Stable`, every parked SyncGroup answered | its assignment at once (session timer reset) | `UNKNOWN_MEMBER_ID` |
//! | Heartbeat, member of the generation | — | `REBALANCE_IN_PROGRESS` (timer reset) | `NONE` (timer reset) | `NONE` (timer reset) | `UNKNOWN_MEMBER_ID` |
//! | LeaveGroup, member | — | `NONE`; its parked JoinGroup gets `UNKNOWN_MEMBER_ID`; the join may complete | `NONE`; rebalance | `NONE`; rebalance | `UNKNOWN_MEMBER_ID` |
//! | LeaveGroup, pending / other id | `NONE` / `UNKNOWN_MEMBER_ID` | same | same | same | `UNKNOWN_MEMBER_ID` |
//! | OffsetCommit, generation ≥ 0, member of the generation | — | accepted (timer reset) | `REBALANCE_IN_PROGRESS` | accepted (timer reset) | `ILLEGAL_GENERATION` |
//! | OffsetCommit, generation ≥ 0, non-member / other generation | `UNKNOWN_MEMBER_ID` | `UNKNOWN_MEMBER_ID` / `ILLEGAL_GENERATION` | same | same | `ILLEGAL_GENERATION` |
//! | OffsetCommit, generation < 0 ("simple"), no member id | accepted | `UNKNOWN_MEMBER_ID` | same | same | accepted |
//! | OffsetCommit, generation < 0 with a member id | accepted | non-member `UNKNOWN_MEMBER_ID`, member `ILLEGAL_GENERATION` | same | same | accepted |
//! | OffsetFetch | offsets | offsets | offsets | offsets | offsets |
//! | DescribeGroups | `Empty`, protocol type, members | `PreparingRebalance`, protocol type, members without metadata or assignment | `CompletingRebalance`, same | `Stable`, protocol type and name, members with metadata and assignment | `Dead`, nothing (`Empty` if it has committed offsets) |
//! | ListGroups | listed | listed | listed | listed | listed as `Empty` if it has committed offsets |
//! | DeleteGroups | deleted with its offsets | `NON_EMPTY_GROUP` | `NON_EMPTY_GROUP` | `NON_EMPTY_GROUP` | offsets deleted if it has some, else `GROUP_ID_NOT_FOUND` |
//!
//! A member of the current generation may, during a rebalance, commit offsets while the group
//! is `PreparingRebalance` (Kafka relies on the heartbeat to tell it of the rebalance), but not
//! in `CompletingRebalance`, where it already holds the next generation's JoinGroup answer.
//!
//! # Timers
//! - **Session**: a member is removed (and the group rebalances) when its session timeout
//!   passes without a heartbeat, a commit in `Stable`/`PreparingRebalance`, a completed join
//!   or an answered SyncGroup. A member parked in JoinGroup or SyncGroup is not expired,
//!   except a member new to the group, whose first JoinGroup is given 5 minutes (Kafka's
//!   `NewMemberJoinTimeoutMs`). A pending member id lapses after its session timeout.
//! - **Rebalance** (the largest rebalance timeout of the members): when it passes, the join
//!   completes with whoever rejoined. A rebalance out of `Empty` waits
//!   [`Limits::initial_rebalance_delay`] for more members, once more for each newcomer, up to
//!   the rebalance timeout (Kafka's `InitialDelayedJoin`). After a join completes, members that
//!   send no SyncGroup within the rebalance timeout are removed and the group rebalances.
//! - **Forgetting**: an `Empty` group with no pending member is dropped after
//!   [`Limits::empty_group_retention`] (Kafka's offsets-cleanup interval); its committed
//!   offsets stay, so it is still listed and described as `Empty` (protocol type `""`).
//!
//! # Bounds and deviations from Kafka
//! - Session timeout 6 s–30 min, Kafka's `group.min/max.session.timeout.ms` defaults. The
//!   clients here use 6 s (the kafka-python group test), 10 s (the rdkafka tests; kafka-python
//!   pinned below 3.0) and 45 s (librdkafka's and kafka-python 3's default, so the bridge's
//!   reconcile consumer). Before this module the broker took 1 s–5 min.
//! - `group.max.size` is [`Limits::max_size`] (Kafka: unlimited by default); past it a
//!   joiner gets `GROUP_MAX_SIZE_REACHED`. Pending member ids count towards it here (not in
//!   Kafka), so that a client looping on JoinGroup without a member id cannot grow a group's
//!   pending set without bound.
//! - Initial rebalance delay 500 ms (Kafka: `group.initial.rebalance.delay.ms` 3 s).
//! - Static membership (`group.instance.id`) is not implemented: the instance id is recorded,
//!   shown and passed to the leader, and the member is treated as dynamic.
//! - Kafka leaves a superseded parked request (a second JoinGroup or SyncGroup from the same
//!   member) and the parked request of a removed member unanswered; here they are answered
//!   (`REBALANCE_IN_PROGRESS`, `UNKNOWN_MEMBER_ID`), so no waiter is left behind.
//! - Group metadata is not persisted: after a restart, members rejoin as after a coordinator
//!   move, and only the committed offsets remain.

mod group;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::errors::Code;
use group::Group;

/// The id of a parked request, chosen by the caller; it comes back in the [`Reply`].
pub type Token = u64;

/// A group's state, spelled as Kafka spells it on the wire ([`State::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// No members (it may have pending member ids and committed offsets).
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignments.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Not held by the coordinator.
    Dead,
}

impl State {
    /// Every state.
    pub const ALL: [State; 5] = [
        State::Empty,
        State::PreparingRebalance,
        State::CompletingRebalance,
        State::Stable,
        State::Dead,
    ];

    /// The name in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }

    /// Whether `filter` (a ListGroups states filter entry) names this state: case-insensitive
    /// and trimmed, as Kafka compares them.
    pub fn matches(self, filter: &str) -> bool {
        filter.trim().eq_ignore_ascii_case(self.name())
    }
}

/// The coordinator's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest session timeout a member may ask for.
    pub min_session_timeout: Duration,
    /// Longest session timeout a member may ask for.
    pub max_session_timeout: Duration,
    /// Most members (and pending member ids) in a group.
    pub max_size: usize,
    /// How long a rebalance out of `Empty` waits for more members.
    pub initial_rebalance_delay: Duration,
    /// How long a member new to the group may wait in its first JoinGroup.
    pub new_member_join_timeout: Duration,
    /// How long an `Empty` group with no pending member is kept in memory.
    pub empty_group_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_session_timeout: Duration::from_millis(6_000),
            max_session_timeout: Duration::from_millis(1_800_000),
            max_size: 1_000,
            initial_rebalance_delay: Duration::from_millis(500),
            new_member_join_timeout: Duration::from_secs(300),
            empty_group_retention: Duration::from_secs(600),
        }
    }
}

/// A JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Identifies this request if it is parked.
    pub token: Token,
    /// Group id.
    pub group: String,
    /// The member id asked with (empty for a new member).
    pub member_id: String,
    /// The id the member gets if it comes without one (Kafka: client id, `-`, a UUID).
    pub new_member_id: String,
    /// `group.instance.id` (recorded; static membership is not implemented).
    pub group_instance_id: Option<String>,
    /// JoinGroup v4+: a new member is first handed its id with `MEMBER_ID_REQUIRED`.
    pub require_known_member_id: bool,
    /// Client id from the request header.
    pub client_id: String,
    /// The client's address, as Kafka shows it (`/127.0.0.1`).
    pub client_host: String,
    /// Session timeout, ms.
    pub session_timeout_ms: i32,
    /// Rebalance timeout, ms (v0: the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Protocol type (`consumer` for consumers).
    pub protocol_type: String,
    /// Protocols in preference order, with the member's metadata for each.
    pub protocols: Vec<(String, Bytes)>,
}

/// A member in the leader's JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    /// Member id.
    pub member_id: String,
    /// `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    /// Error code.
    pub code: Code,
    /// Generation (-1 with an error).
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's id (the new one, for `MEMBER_ID_REQUIRED`).
    pub member_id: String,
    /// Every member, for the leader; empty for the others.
    pub members: Vec<JoinMember>,
}

impl JoinResponse {
    /// An error answer, as Kafka's `JoinGroupResult(memberId, error)`.
    pub fn error(member_id: &str, code: Code) -> Self {
        JoinResponse {
            code,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// A SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Identifies this request if it is parked.
    pub token: Token,
    /// Group id.
    pub group: String,
    /// Member id.
    pub member_id: String,
    /// Generation.
    pub generation: i32,
    /// v5+: the protocol type the member expects.
    pub protocol_type: Option<String>,
    /// v5+: the protocol the member expects.
    pub protocol_name: Option<String>,
    /// The leader's assignments by member id (empty from followers).
    pub assignments: Vec<(String, Bytes)>,
}

/// A SyncGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    /// Error code.
    pub code: Code,
    /// The group's protocol type (none with an error).
    pub protocol_type: Option<String>,
    /// The group's protocol (none with an error).
    pub protocol_name: Option<String>,
    /// The member's assignment.
    pub assignment: Bytes,
}

impl SyncResponse {
    /// An error answer.
    pub fn error(code: Code) -> Self {
        SyncResponse {
            code,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// What a parked (or just answered) request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// To a JoinGroup.
    Join(JoinResponse),
    /// To a SyncGroup.
    Sync(SyncResponse),
}

/// An answer for the request that was given `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's token.
    pub token: Token,
    /// The answer.
    pub response: Response,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address (`/127.0.0.1`).
    pub client_host: String,
    /// Its metadata for the chosen protocol (`Stable` only, as in Kafka).
    pub metadata: Bytes,
    /// Its assignment (`Stable` only).
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// State.
    pub state: State,
    /// Protocol type (`""` if none).
    pub protocol_type: String,
    /// The chosen protocol (`Stable` only, else `""`).
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Group id.
    pub group: String,
    /// Protocol type (`""` if none).
    pub protocol_type: String,
    /// State.
    pub state: State,
}

/// What DeleteGroups may do with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Forgotten here; the caller deletes its committed offsets durably.
    DeleteOffsets,
    /// Refused with this code (`NON_EMPTY_GROUP`, `GROUP_ID_NOT_FOUND`).
    Refused(Code),
}

/// Every group of this node.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    limits: Limits,
}

impl Coordinator {
    /// A coordinator with no groups.
    pub fn new(limits: Limits) -> Self {
        Coordinator {
            groups: BTreeMap::new(),
            limits,
        }
    }

    /// The settings.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state of `group` (`Dead` if not held).
    pub fn state(&self, group: &str) -> State {
        self.groups.get(group).map_or(State::Dead, Group::state)
    }

    /// The generation of `group` (None if not held).
    pub fn generation(&self, group: &str) -> Option<i32> {
        self.groups.get(group).map(Group::generation)
    }

    /// JoinGroup. Returns the answers due now, this request's among them unless it is parked.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Vec<Reply> {
        let mut out = Vec::new();
        let token = req.token;
        let fail = |out: &mut Vec<Reply>, member: &str, code| {
            out.push(Reply {
                token,
                response: Response::Join(JoinResponse::error(member, code)),
            })
        };
        if req.group.is_empty() {
            fail(&mut out, &req.member_id, Code::InvalidGroupId);
            return out;
        }
        let session = u64::try_from(req.session_timeout_ms).map(Duration::from_millis);
        match session {
            Ok(s) if (self.limits.min_session_timeout..=self.limits.max_session_timeout).contains(&s) => {}
            _ => {
                fail(&mut out, &req.member_id, Code::InvalidSessionTimeout);
                return out;
            }
        }
        let unknown = req.member_id.is_empty();
        if !unknown && !self.groups.contains_key(&req.group) {
            fail(&mut out, &req.member_id, Code::UnknownMemberId);
            return out;
        }
        let g = self
            .groups
            .entry(req.group.clone())
            .or_insert_with(|| Group::new(now));
        g.join(now, &self.limits, req, &mut out);
        out
    }

    /// SyncGroup. Returns the answers due now, this request's among them unless it is parked.
    pub fn sync(&mut self, now: Instant, req: SyncRequest) -> Vec<Reply> {
        let mut out = Vec::new();
        let token = req.token;
        let code = if req.group.is_empty() {
            Some(Code::InvalidGroupId)
        } else {
            match self.groups.get_mut(&req.group) {
                None => Some(Code::UnknownMemberId),
                Some(g) => {
                    g.sync(now, req, &mut out);
                    None
                }
            }
        };
        if let Some(code) = code {
            out.push(Reply {
                token,
                response: Response::Sync(SyncResponse::error(code)),
            });
        }
        out
    }

    /// Heartbeat.
    pub fn heartbeat(&mut self, now: Instant, group: &str, member: &str, generation: i32) -> Code {
        if group.is_empty() {
            return Code::InvalidGroupId;
        }
        match self.groups.get_mut(group) {
            None => Code::UnknownMemberId,
            Some(g) => g.heartbeat(now, member, generation),
        }
    }

    /// LeaveGroup of `members` (member ids; an empty one, a static member named by instance id
    /// alone, is not known here). `Err`: the request's own error; `Ok`: one code per member, and
    /// the answers due now to parked requests.
    pub fn leave(
        &mut self,
        now: Instant,
        group: &str,
        members: &[String],
    ) -> Result<(Vec<Code>, Vec<Reply>), Code> {
        if group.is_empty() {
            return Err(Code::InvalidGroupId);
        }
        let mut out = Vec::new();
        let codes = match self.groups.get_mut(group) {
            None => vec![Code::UnknownMemberId; members.len()],
            Some(g) => members
                .iter()
                .map(|m| g.leave(now, &self.limits, m, &mut out))
                .collect(),
        };
        Ok((codes, out))
    }

    /// Whether an OffsetCommit from `member` with `generation` may be written; a member's commit
    /// in `Stable` or `PreparingRebalance` also resets its session timer.
    pub fn commit(&mut self, now: Instant, group: &str, member: &str, generation: i32) -> Code {
        match self.groups.get_mut(group) {
            // Kafka creates a "simple" group here; its offsets make it listed as Empty.
            None if generation < 0 => Code::None,
            None => Code::IllegalGeneration,
            Some(g) => g.commit(now, member, generation),
        }
    }

    /// Time passes: session and pending-member timeouts, rebalance and sync deadlines, and
    /// forgetting long-empty groups. Returns the answers due.
    pub fn tick(&mut self, now: Instant) -> Vec<Reply> {
        let mut out = Vec::new();
        let limits = self.limits;
        self.groups.retain(|_, g| g.tick(now, &limits, &mut out));
        out
    }

    /// DescribeGroups of one group; `has_offsets`: it has committed offsets.
    pub fn describe(&self, group: &str, has_offsets: bool) -> Description {
        match self.groups.get(group) {
            Some(g) => g.describe(),
            None => Description {
                state: if has_offsets { State::Empty } else { State::Dead },
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// ListGroups: every group held, and those in `with_offsets` (groups with committed
    /// offsets) as `Empty`; `states` filters (empty: all).
    pub fn list(&self, with_offsets: &BTreeSet<String>, states: &[String]) -> Vec<Listed> {
        let mut all: BTreeMap<&str, Listed> = with_offsets
            .iter()
            .map(|g| {
                let l = Listed {
                    group: g.clone(),
                    protocol_type: String::new(),
                    state: State::Empty,
                };
                (g.as_str(), l)
            })
            .collect();
        for (id, g) in &self.groups {
            all.insert(
                id,
                Listed {
                    group: id.clone(),
                    protocol_type: g.protocol_type().unwrap_or_default().to_string(),
                    state: g.state(),
                },
            );
        }
        all.into_values()
            .filter(|l| states.is_empty() || states.iter().any(|s| l.state.matches(s)))
            .collect()
    }

    /// DeleteGroups of one group; `has_offsets`: it has committed offsets. An `Empty` group
    /// is forgotten at once (Kafka: `Dead`, then removed).
    pub fn delete(&mut self, group: &str, has_offsets: bool) -> Deletion {
        match self.groups.get(group).map(Group::state) {
            Some(State::Empty) => {
                self.groups.remove(group);
                Deletion::DeleteOffsets
            }
            Some(_) => Deletion::Refused(Code::NonEmptyGroup),
            None if has_offsets => Deletion::DeleteOffsets,
            None => Deletion::Refused(Code::GroupIdNotFound),
        }
    }

    /// Checks the invariants of every group (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        for (id, g) in &self.groups {
            g.check_invariants(id);
        }
    }

    /// A group (tests).
    #[cfg(test)]
    fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }
}
