//! One group: its members, state and timers, and what each request does to them.
//!
//! Invariants (checked by the tests after every event): `Empty` has no members, every other
//! state has at least one, or is `PreparingRebalance` waiting for pending members;
//! the leader is a member whenever there are members; parked JoinGroups exist only in
//! `PreparingRebalance`, parked SyncGroups only in `CompletingRebalance`; pending-sync members
//! are members, and exist only in `CompletingRebalance` and `Stable`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    Description, JoinMember, JoinRequest, JoinResponse, Limits, MemberDescription, Reply, Response, State,
    SyncRequest, SyncResponse, Token,
};
use crate::errors::Code;

#[derive(Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// A parked JoinGroup.
    awaiting_join: Option<Token>,
    /// A parked SyncGroup.
    awaiting_sync: Option<Token>,
    /// Joined and not yet through a completed join: its JoinGroup may expire.
    is_new: bool,
    /// When the session (or, for a new member, its first JoinGroup) runs out.
    deadline: Instant,
}

impl Member {
    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(p, _)| p == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Kafka's `hasSatisfiedHeartbeat`: a parked member is alive, unless it is new.
    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
            && (self.is_new || (self.awaiting_join.is_none() && self.awaiting_sync.is_none()))
    }
}

/// The extension state of a rebalance out of `Empty` (Kafka's `InitialDelayedJoin`).
#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    delay: Duration,
    remaining: Duration,
}

/// One group.
#[derive(Debug)]
pub(super) struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED`, and when they lapse.
    pending: BTreeMap<String, Instant>,
    /// Members that have not sent SyncGroup since the join completed.
    pending_sync: BTreeSet<String>,
    /// When the members in `pending_sync` are removed.
    sync_deadline: Option<Instant>,
    /// `PreparingRebalance`: when the join completes with whoever rejoined.
    join_deadline: Instant,
    /// Set during a rebalance out of `Empty`.
    initial: Option<InitialDelay>,
    /// A member was added during the initial delay.
    new_member_added: bool,
    /// When the group last became `Empty`.
    empty_since: Instant,
}

fn reply(out: &mut Vec<Reply>, token: Token, response: Response) {
    out.push(Reply { token, response });
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Group {
    pub(super) fn new(now: Instant) -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            sync_deadline: None,
            join_deadline: now,
            initial: None,
            new_member_added: false,
            empty_since: now,
        }
    }

    pub(super) fn state(&self) -> State {
        self.state
    }

    pub(super) fn generation(&self) -> i32 {
        self.generation
    }

    pub(super) fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// The largest rebalance timeout of the members (Kafka's `rebalanceTimeoutMs`).
    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    fn is_leader(&self, member: &str) -> bool {
        self.leader.as_deref() == Some(member)
    }

    /// Kafka's `supportsProtocols`.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == State::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(p, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == p))
            })
    }

    /// Kafka's `acceptJoiningMember`; a joiner without a member id also counts the pending
    /// member ids (see the module doc).
    fn accept_joining_member(&self, member: &str, max: usize) -> bool {
        let pending = if member.is_empty() { self.pending.len() } else { 0 };
        match self.state {
            State::Empty | State::Dead => pending < max,
            State::PreparingRebalance => {
                let awaiting = self
                    .members
                    .values()
                    .filter(|m| m.awaiting_join.is_some())
                    .count();
                self.members
                    .get(member)
                    .is_some_and(|m| m.awaiting_join.is_some())
                    || awaiting + pending < max
            }
            State::CompletingRebalance | State::Stable => {
                self.members.contains_key(member) || self.members.len() + pending < max
            }
        }
    }

    /// Kafka's `selectProtocol`: of the protocols every member supports, each member votes for
    /// its most preferred; most votes wins, ties going to the leader's preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = |p: &str| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(q, _)| q == p))
        };
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((p, _)) = m.protocols.iter().find(|(p, _)| candidates(p)) {
                *votes.entry(p.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        let leader = self.leader.as_ref().and_then(|l| self.members.get(l))?;
        leader
            .protocols
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| votes.get(p) == Some(&best))
            .map(str::to_string)
    }

    fn member_list(&self) -> Vec<JoinMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .iter()
            .map(|(id, m)| JoinMember {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata(protocol),
            })
            .collect()
    }

    /// The current generation's JoinGroup answer for `member`.
    fn current(&self, member: &str, with_members: bool) -> JoinResponse {
        JoinResponse {
            code: Code::None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member.to_string(),
            members: if with_members {
                self.member_list()
            } else {
                Vec::new()
            },
        }
    }

    // ---- JoinGroup ----

    pub(super) fn join(&mut self, now: Instant, limits: &Limits, req: JoinRequest, out: &mut Vec<Reply>) {
        let token = req.token;
        if !self.accept_joining_member(&req.member_id, limits.max_size) {
            self.remove_member(&req.member_id, out);
            reply(
                out,
                token,
                Response::Join(JoinResponse::error("", Code::GroupMaxSizeReached)),
            );
        } else if req.member_id.is_empty() {
            self.join_new_member(now, limits, req, out);
        } else {
            self.join_existing_member(now, limits, req, out);
        }
        self.maybe_complete_join(now, out);
    }

    fn join_new_member(&mut self, now: Instant, limits: &Limits, req: JoinRequest, out: &mut Vec<Reply>) {
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            let r = JoinResponse::error("", Code::InconsistentGroupProtocol);
            reply(out, req.token, Response::Join(r));
        } else if req.require_known_member_id {
            let id = req.new_member_id.clone();
            self.pending
                .insert(id.clone(), now + millis(req.session_timeout_ms));
            reply(
                out,
                req.token,
                Response::Join(JoinResponse::error(&id, Code::MemberIdRequired)),
            );
        } else {
            let id = req.new_member_id.clone();
            self.add_member_and_rebalance(now, limits, id, req, out);
        }
    }

    fn join_existing_member(
        &mut self,
        now: Instant,
        limits: &Limits,
        req: JoinRequest,
        out: &mut Vec<Reply>,
    ) {
        let id = req.member_id.clone();
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            reply(
                out,
                req.token,
                Response::Join(JoinResponse::error(&id, Code::InconsistentGroupProtocol)),
            );
            return;
        }
        if self.pending.contains_key(&id) {
            self.add_member_and_rebalance(now, limits, id, req, out);
            return;
        }
        let (is_leader, matches) = match self.members.get(&id) {
            None => {
                reply(
                    out,
                    req.token,
                    Response::Join(JoinResponse::error(&id, Code::UnknownMemberId)),
                );
                return;
            }
            Some(m) => (self.is_leader(&id), m.matches(&req.protocols)),
        };
        match self.state {
            State::PreparingRebalance => self.update_member_and_rebalance(now, limits, req, out),
            // Same metadata: the member most likely missed the JoinGroup answer.
            State::CompletingRebalance if matches => {
                let r = self.current(&id, is_leader);
                reply(out, req.token, Response::Join(r));
            }
            // The leader's JoinGroup asks for a rebalance (e.g. the topics' metadata changed).
            State::Stable if matches && !is_leader => {
                let r = self.current(&id, false);
                reply(out, req.token, Response::Join(r));
            }
            State::CompletingRebalance | State::Stable => {
                self.update_member_and_rebalance(now, limits, req, out)
            }
            State::Empty | State::Dead => {
                reply(
                    out,
                    req.token,
                    Response::Join(JoinResponse::error(&id, Code::UnknownMemberId)),
                );
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        now: Instant,
        limits: &Limits,
        id: String,
        req: JoinRequest,
        out: &mut Vec<Reply>,
    ) {
        if self.state == State::PreparingRebalance && self.initial.is_some() {
            self.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        self.pending.remove(&id);
        self.members.insert(
            id,
            Member {
                group_instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: millis(req.session_timeout_ms),
                rebalance_timeout: millis(req.rebalance_timeout_ms),
                protocols: req.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(req.token),
                awaiting_sync: None,
                is_new: true,
                deadline: now + limits.new_member_join_timeout,
            },
        );
        self.maybe_prepare_rebalance(now, limits, out);
    }

    fn update_member_and_rebalance(
        &mut self,
        now: Instant,
        limits: &Limits,
        req: JoinRequest,
        out: &mut Vec<Reply>,
    ) {
        if let Some(m) = self.members.get_mut(&req.member_id) {
            m.protocols = req.protocols;
            m.session_timeout = millis(req.session_timeout_ms);
            m.rebalance_timeout = millis(req.rebalance_timeout_ms);
            if let Some(old) = m.awaiting_join.replace(req.token) {
                let r = JoinResponse::error(&req.member_id, Code::RebalanceInProgress);
                reply(out, old, Response::Join(r));
            }
        }
        self.maybe_prepare_rebalance(now, limits, out);
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant, limits: &Limits, out: &mut Vec<Reply>) {
        if matches!(
            self.state,
            State::Empty | State::CompletingRebalance | State::Stable
        ) {
            self.prepare_rebalance(now, limits, out);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, limits: &Limits, out: &mut Vec<Reply>) {
        if self.state == State::CompletingRebalance {
            self.reset_and_propagate_assignment_error(now, out);
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        if self.state == State::Empty {
            let delay = limits.initial_rebalance_delay;
            self.initial = Some(InitialDelay {
                delay,
                remaining: self.rebalance_timeout().saturating_sub(delay),
            });
            self.new_member_added = false;
            self.join_deadline = now + delay;
        } else {
            self.initial = None;
            self.join_deadline = now + self.rebalance_timeout();
        }
        self.state = State::PreparingRebalance;
        self.maybe_complete_join(now, out);
    }

    /// Completes the join if every member and no pending member has joined (never during the
    /// initial delay: that ends on its timer).
    fn maybe_complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        let all_joined = self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some());
        if self.state == State::PreparingRebalance && self.initial.is_none() && all_joined {
            self.complete_join(now, out);
        }
    }

    fn complete_join(&mut self, now: Instant, out: &mut Vec<Reply>) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.awaiting_join.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id, out);
        }
        // The leader is still a member, so it rejoined (Kafka's `maybeElectNewJoinedLeader`):
        // removing a leader hands the role to another member.
        self.initial = None;
        self.new_member_added = false;
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.state = State::Empty;
            self.empty_since = now;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = State::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let everyone = self.member_list();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let mut r = self.current(&id, false);
            if id == leader {
                r.members = everyone.clone();
            }
            if let Some(m) = self.members.get_mut(&id) {
                if let Some(t) = m.awaiting_join.take() {
                    reply(out, t, Response::Join(r));
                }
                m.deadline = now + m.session_timeout;
                m.is_new = false;
            }
            self.pending_sync.insert(id);
        }
        self.sync_deadline = Some(now + self.rebalance_timeout());
    }

    /// Removes a member, answering its parked requests with `UNKNOWN_MEMBER_ID`.
    fn remove_member(&mut self, id: &str, out: &mut Vec<Reply>) {
        if let Some(m) = self.members.remove(id) {
            if let Some(t) = m.awaiting_join {
                reply(
                    out,
                    t,
                    Response::Join(JoinResponse::error("", Code::UnknownMemberId)),
                );
            }
            if let Some(t) = m.awaiting_sync {
                reply(out, t, Response::Sync(SyncResponse::error(Code::UnknownMemberId)));
            }
        }
        if self.is_leader(id) {
            self.leader = self.members.keys().next().cloned();
        }
        self.pending.remove(id);
        self.pending_sync.remove(id);
        if self.members.is_empty() {
            self.leader = None;
        }
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    fn remove_member_and_update(&mut self, now: Instant, limits: &Limits, id: &str, out: &mut Vec<Reply>) {
        self.remove_member(id, out);
        match self.state {
            State::Stable | State::CompletingRebalance => self.maybe_prepare_rebalance(now, limits, out),
            State::PreparingRebalance => self.maybe_complete_join(now, out),
            State::Empty | State::Dead => {}
        }
    }

    // ---- SyncGroup ----

    pub(super) fn sync(&mut self, now: Instant, req: SyncRequest, out: &mut Vec<Reply>) {
        let token = req.token;
        let fail = |out: &mut Vec<Reply>, code| reply(out, token, Response::Sync(SyncResponse::error(code)));
        let id = req.member_id.as_str();
        if !self.members.contains_key(id) {
            return fail(out, Code::UnknownMemberId);
        }
        if req.generation != self.generation {
            return fail(out, Code::IllegalGeneration);
        }
        if req.protocol_type.is_some() && req.protocol_type != self.protocol_type {
            return fail(out, Code::InconsistentGroupProtocol);
        }
        if req.protocol_name.is_some() && req.protocol_name != self.protocol_name {
            return fail(out, Code::InconsistentGroupProtocol);
        }
        match self.state {
            State::Empty | State::Dead => fail(out, Code::UnknownMemberId),
            State::PreparingRebalance => fail(out, Code::RebalanceInProgress),
            State::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(id) {
                    if let Some(old) = m.awaiting_sync.replace(token) {
                        reply(
                            out,
                            old,
                            Response::Sync(SyncResponse::error(Code::RebalanceInProgress)),
                        );
                    }
                }
                self.pending_sync.remove(id);
                if self.sync_done() {
                    self.sync_deadline = None;
                }
                if self.is_leader(id) {
                    let given: BTreeMap<String, Bytes> = req.assignments.into_iter().collect();
                    for (mid, m) in self.members.iter_mut() {
                        m.assignment = given.get(mid).cloned().unwrap_or_default();
                    }
                    self.propagate(now, Code::None, out);
                    self.state = State::Stable;
                }
            }
            State::Stable => {
                self.pending_sync.remove(id);
                if self.sync_done() {
                    self.sync_deadline = None;
                }
                let (pt, pn) = (self.protocol_type.clone(), self.protocol_name.clone());
                if let Some(m) = self.members.get_mut(id) {
                    m.deadline = now + m.session_timeout;
                    let r = SyncResponse {
                        code: Code::None,
                        protocol_type: pt,
                        protocol_name: pn,
                        assignment: m.assignment.clone(),
                    };
                    reply(out, token, Response::Sync(r));
                }
            }
        }
    }

    fn sync_done(&self) -> bool {
        self.pending_sync.is_empty()
    }

    /// Answers every parked SyncGroup with its assignment (or `code`), resetting the session
    /// timers of those answered (Kafka's `propagateAssignment`).
    fn propagate(&mut self, now: Instant, code: Code, out: &mut Vec<Reply>) {
        let (pt, pn) = if code == Code::None {
            (self.protocol_type.clone(), self.protocol_name.clone())
        } else {
            (None, None)
        };
        for m in self.members.values_mut() {
            if let Some(t) = m.awaiting_sync.take() {
                let r = SyncResponse {
                    code,
                    protocol_type: pt.clone(),
                    protocol_name: pn.clone(),
                    assignment: m.assignment.clone(),
                };
                reply(out, t, Response::Sync(r));
                m.deadline = now + m.session_timeout;
            }
        }
    }

    fn reset_and_propagate_assignment_error(&mut self, now: Instant, out: &mut Vec<Reply>) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        self.propagate(now, Code::RebalanceInProgress, out);
    }

    // ---- Heartbeat, LeaveGroup, OffsetCommit ----

    pub(super) fn heartbeat(&mut self, now: Instant, member: &str, generation: i32) -> Code {
        let Some(m) = self.members.get_mut(member) else {
            return Code::UnknownMemberId;
        };
        if generation != self.generation {
            return Code::IllegalGeneration;
        }
        match self.state {
            State::Empty | State::Dead => Code::UnknownMemberId,
            State::PreparingRebalance => {
                m.deadline = now + m.session_timeout;
                Code::RebalanceInProgress
            }
            State::CompletingRebalance | State::Stable => {
                m.deadline = now + m.session_timeout;
                Code::None
            }
        }
    }

    pub(super) fn leave(
        &mut self,
        now: Instant,
        limits: &Limits,
        member: &str,
        out: &mut Vec<Reply>,
    ) -> Code {
        if self.pending.remove(member).is_some() {
            self.maybe_complete_join(now, out);
            Code::None
        } else if self.members.contains_key(member) {
            self.remove_member_and_update(now, limits, member, out);
            Code::None
        } else {
            Code::UnknownMemberId
        }
    }

    pub(super) fn commit(&mut self, now: Instant, member: &str, generation: i32) -> Code {
        if generation < 0 && self.state == State::Empty {
            return Code::None;
        }
        if generation >= 0 || !member.is_empty() {
            if !self.members.contains_key(member) {
                return Code::UnknownMemberId;
            }
            if generation != self.generation {
                return Code::IllegalGeneration;
            }
        } else if self.state != State::Empty {
            return Code::UnknownMemberId;
        }
        match self.state {
            State::Empty => Code::None,
            State::PreparingRebalance | State::Stable => {
                if let Some(m) = self.members.get_mut(member) {
                    m.deadline = now + m.session_timeout;
                }
                Code::None
            }
            State::CompletingRebalance => Code::RebalanceInProgress,
            State::Dead => Code::CoordinatorNotAvailable,
        }
    }

    // ---- Timers ----

    /// Runs the timers due at `now`; false: forget the group.
    pub(super) fn tick(&mut self, now: Instant, limits: &Limits, out: &mut Vec<Reply>) -> bool {
        let lapsed: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, d)| now >= **d)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            self.pending.remove(&id);
            self.maybe_complete_join(now, out);
        }
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_member_and_update(now, limits, &id, out);
        }
        if self.state == State::PreparingRebalance && now >= self.join_deadline {
            match self.initial {
                Some(i) if self.new_member_added && !i.remaining.is_zero() => {
                    self.new_member_added = false;
                    let delay = limits.initial_rebalance_delay.min(i.remaining);
                    self.initial = Some(InitialDelay {
                        delay,
                        remaining: i.remaining.saturating_sub(i.delay),
                    });
                    self.join_deadline = now + delay;
                }
                _ => self.complete_join(now, out),
            }
        }
        let sync_due = self.sync_deadline.is_some_and(|d| now >= d);
        if sync_due && matches!(self.state, State::CompletingRebalance | State::Stable) {
            self.sync_deadline = None;
            let late: Vec<String> = self.pending_sync.iter().cloned().collect();
            if !late.is_empty() {
                for id in &late {
                    self.remove_member(id, out);
                }
                self.prepare_rebalance(now, limits, out);
            }
        }
        !(self.state == State::Empty
            && self.members.is_empty()
            && self.pending.is_empty()
            && now.saturating_duration_since(self.empty_since) >= limits.empty_group_retention)
    }

    // ---- DescribeGroups ----

    pub(super) fn describe(&self) -> Description {
        let stable = self.state == State::Stable;
        let protocol = if stable {
            self.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        Description {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
            protocol,
        }
    }

    /// Panics if an invariant of the module doc does not hold (tests).
    #[cfg(test)]
    pub(super) fn check_invariants(&self, id: &str) {
        let s = self.state;
        match s {
            State::Empty => assert!(self.members.is_empty(), "{id}: Empty with members"),
            State::PreparingRebalance => {}
            State::CompletingRebalance | State::Stable => {
                assert!(!self.members.is_empty(), "{id}: {s:?} without members")
            }
            State::Dead => panic!("{id}: a Dead group is held"),
        }
        if !self.members.is_empty() {
            let l = self.leader.as_deref().unwrap_or_default();
            assert!(self.members.contains_key(l), "{id}: leader {l:?} is not a member");
        }
        for (mid, m) in &self.members {
            if m.awaiting_join.is_some() {
                assert_eq!(
                    s,
                    State::PreparingRebalance,
                    "{id}: {mid} parked in JoinGroup in {s:?}"
                );
            }
            if m.awaiting_sync.is_some() {
                assert_eq!(
                    s,
                    State::CompletingRebalance,
                    "{id}: {mid} parked in SyncGroup in {s:?}"
                );
            }
            assert!(
                !self.pending.contains_key(mid),
                "{id}: {mid} both member and pending"
            );
        }
        for p in &self.pending_sync {
            assert!(
                self.members.contains_key(p),
                "{id}: pending sync {p} is not a member"
            );
            assert!(
                matches!(s, State::CompletingRebalance | State::Stable),
                "{id}: pending sync in {s:?}"
            );
        }
    }

    /// Whether `member` is a member (tests).
    #[cfg(test)]
    pub(super) fn has_member(&self, member: &str) -> bool {
        self.members.contains_key(member)
    }

    /// The leader (tests).
    #[cfg(test)]
    pub(super) fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }
}
