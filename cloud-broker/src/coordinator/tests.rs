//! The coordinator without sockets or clocks: the state × request table of the module doc,
//! row by row; the timers; and a proptest of random clients against the table and the
//! invariants (every parked request answered exactly once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A coordinator, a clock and token numbering.
struct H {
    c: Coordinator,
    now: Instant,
    next: Token,
    /// Every reply given, by token.
    answered: BTreeMap<Token, Response>,
}

impl H {
    fn new() -> Self {
        H {
            c: Coordinator::new(Limits::default()),
            now: Instant::now(),
            next: 1,
            answered: BTreeMap::new(),
        }
    }

    fn token(&mut self) -> Token {
        self.next += 1;
        self.next
    }

    fn record(&mut self, replies: Vec<Reply>) {
        for r in replies {
            assert!(
                self.answered.insert(r.token, r.response).is_none(),
                "token {} answered twice",
                r.token
            );
        }
        self.c.check_invariants();
    }

    fn join_req(&mut self, member: &str, new_id: &str, v4: bool, meta: &'static [u8]) -> JoinRequest {
        JoinRequest {
            token: self.token(),
            group: "g".into(),
            member_id: member.into(),
            new_member_id: new_id.into(),
            group_instance_id: None,
            require_known_member_id: v4,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(meta))],
        }
    }

    /// JoinGroup; `Some` if answered at once.
    fn join(
        &mut self,
        member: &str,
        new_id: &str,
        v4: bool,
        meta: &'static [u8],
    ) -> (Token, Option<JoinResponse>) {
        let req = self.join_req(member, new_id, v4, meta);
        self.join_with(req)
    }

    fn join_with(&mut self, req: JoinRequest) -> (Token, Option<JoinResponse>) {
        let t = req.token;
        let replies = self.c.join(self.now, req);
        self.record(replies);
        (t, self.join_answer(t))
    }

    fn join_answer(&self, t: Token) -> Option<JoinResponse> {
        match self.answered.get(&t) {
            Some(Response::Join(j)) => Some(j.clone()),
            Some(r) => panic!("token {t}: {r:?}"),
            None => None,
        }
    }

    fn sync_answer(&self, t: Token) -> Option<SyncResponse> {
        match self.answered.get(&t) {
            Some(Response::Sync(s)) => Some(s.clone()),
            Some(r) => panic!("token {t}: {r:?}"),
            None => None,
        }
    }

    fn sync(
        &mut self,
        member: &str,
        generation: i32,
        assignments: &[(&str, &'static [u8])],
    ) -> (Token, Option<SyncResponse>) {
        let token = self.token();
        let replies = self.c.sync(
            self.now,
            SyncRequest {
                token,
                group: "g".into(),
                member_id: member.into(),
                generation,
                protocol_type: Some("consumer".into()),
                protocol_name: None,
                assignments: assignments
                    .iter()
                    .map(|(m, a)| (m.to_string(), Bytes::from_static(a)))
                    .collect(),
            },
        );
        self.record(replies);
        (token, self.sync_answer(token))
    }

    fn heartbeat(&mut self, member: &str, generation: i32) -> Code {
        let c = self.c.heartbeat(self.now, "g", member, generation);
        self.c.check_invariants();
        c
    }

    fn commit(&mut self, member: &str, generation: i32) -> Code {
        let c = self.c.commit(self.now, "g", member, generation);
        self.c.check_invariants();
        c
    }

    fn leave(&mut self, member: &str) -> Code {
        let (codes, replies) = self.c.leave(self.now, "g", &[member.to_string()]).unwrap();
        self.record(replies);
        codes[0]
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let replies = self.c.tick(self.now);
        self.record(replies);
    }

    fn state(&self) -> State {
        self.c.state("g")
    }

    fn generation(&self) -> i32 {
        self.c.generation("g").unwrap_or(-1)
    }

    /// A v4 member: MEMBER_ID_REQUIRED, then the join with the id handed out (parked).
    fn join_v4(&mut self, id: &str) -> Token {
        let (_, first) = self.join("", id, true, b"m");
        let first = first.expect("answered at once");
        assert_eq!(
            (first.code, first.member_id.as_str()),
            (Code::MemberIdRequired, id)
        );
        self.join(id, "unused", true, b"m").0
    }

    /// `a` (the leader) and `b` joined, the initial delay passed: `CompletingRebalance`, gen 1.
    fn completing() -> Self {
        let mut h = H::new();
        let ta = h.join_v4("a");
        let tb = h.join_v4("b");
        h.advance(ms(600)); // initial delay, extended once for b
        h.advance(ms(600));
        assert_eq!(h.state(), State::CompletingRebalance);
        let (ja, jb) = (h.join_answer(ta).unwrap(), h.join_answer(tb).unwrap());
        assert_eq!(
            (ja.code, ja.generation, ja.leader.as_str(), ja.members.len()),
            (Code::None, 1, "a", 2)
        );
        assert_eq!((jb.code, jb.generation, jb.members.len()), (Code::None, 1, 0));
        h
    }

    /// As [`H::completing`], then both synced: `Stable`, gen 1.
    fn stable() -> Self {
        let mut h = H::completing();
        let (tb, _) = h.sync("b", 1, &[]);
        let (_, sa) = h.sync("a", 1, &[("a", b"A"), ("b", b"B")]);
        assert_eq!(sa.unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(h.sync_answer(tb).unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(h.state(), State::Stable);
        h
    }

    /// As [`H::stable`], then a third member `c` joins: `PreparingRebalance`, still gen 1.
    fn preparing() -> Self {
        let mut h = H::stable();
        h.join_v4("c");
        assert_eq!(h.state(), State::PreparingRebalance);
        assert_eq!(h.generation(), 1);
        h
    }

    /// As [`H::stable`], then both left: `Empty`, gen 2.
    fn empty() -> Self {
        let mut h = H::stable();
        assert_eq!(h.leave("a"), Code::None);
        assert_eq!(h.leave("b"), Code::None);
        assert_eq!((h.state(), h.generation()), (State::Empty, 2));
        h
    }

    fn in_state(s: State) -> Self {
        match s {
            State::Empty => H::empty(),
            State::PreparingRebalance => H::preparing(),
            State::CompletingRebalance => H::completing(),
            State::Stable => H::stable(),
            State::Dead => H::new(),
        }
    }
}

/// What a request in the table gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// An error code, or NONE, at once.
    Code(Code),
    /// Parked (answered later).
    Parked,
    /// JoinGroup answered at once with the current generation, with (true) or without the
    /// member list.
    Current(bool),
    /// DeleteGroups: the group's offsets are to be deleted.
    Deleted,
}

#[derive(Debug, Clone, Copy)]
enum Req {
    HeartbeatMember,
    HeartbeatOtherGeneration,
    HeartbeatStranger,
    SyncMember,
    SyncOtherGeneration,
    CommitMember,
    CommitOtherGeneration,
    CommitStranger,
    CommitSimple,
    CommitSimpleWithMember,
    JoinFollowerSameMetadata,
    JoinLeaderSameMetadata,
    JoinFollowerNewMetadata,
    JoinStranger,
    JoinNoIdV4,
    JoinNoIdV3,
    LeaveMember,
    LeaveStranger,
    Delete,
}

use Code::{
    IllegalGeneration as IG, MemberIdRequired as MIR, NonEmptyGroup as NEG, RebalanceInProgress as RIP,
    UnknownMemberId as UMI,
};
const OK: Out = Out::Code(Code::None);
const fn c(code: Code) -> Out {
    Out::Code(code)
}

/// The module doc's table: columns Empty, PreparingRebalance, CompletingRebalance, Stable,
/// Dead. `b` is a follower of the current generation (in `Empty` and `Dead`, it is gone).
const TABLE: &[(Req, [Out; 5])] = &[
    (Req::HeartbeatMember, [c(UMI), c(RIP), OK, OK, c(UMI)]),
    (
        Req::HeartbeatOtherGeneration,
        [c(UMI), c(IG), c(IG), c(IG), c(UMI)],
    ),
    (Req::HeartbeatStranger, [c(UMI), c(UMI), c(UMI), c(UMI), c(UMI)]),
    (Req::SyncMember, [c(UMI), c(RIP), Out::Parked, OK, c(UMI)]),
    (Req::SyncOtherGeneration, [c(UMI), c(IG), c(IG), c(IG), c(UMI)]),
    (Req::CommitMember, [c(UMI), OK, c(RIP), OK, c(IG)]),
    (Req::CommitOtherGeneration, [c(UMI), c(IG), c(IG), c(IG), c(IG)]),
    (Req::CommitStranger, [c(UMI), c(UMI), c(UMI), c(UMI), c(IG)]),
    (Req::CommitSimple, [OK, c(UMI), c(UMI), c(UMI), OK]),
    (Req::CommitSimpleWithMember, [OK, c(IG), c(IG), c(IG), OK]),
    (
        Req::JoinFollowerSameMetadata,
        [
            c(UMI),
            Out::Parked,
            Out::Current(false),
            Out::Current(false),
            c(UMI),
        ],
    ),
    (
        Req::JoinLeaderSameMetadata,
        [c(UMI), Out::Parked, Out::Current(true), Out::Parked, c(UMI)],
    ),
    (
        Req::JoinFollowerNewMetadata,
        [c(UMI), Out::Parked, Out::Parked, Out::Parked, c(UMI)],
    ),
    (Req::JoinStranger, [c(UMI), c(UMI), c(UMI), c(UMI), c(UMI)]),
    (Req::JoinNoIdV4, [c(MIR), c(MIR), c(MIR), c(MIR), c(MIR)]),
    (Req::JoinNoIdV3, [Out::Parked; 5]),
    (Req::LeaveMember, [c(UMI), OK, OK, OK, c(UMI)]),
    (Req::LeaveStranger, [c(UMI), c(UMI), c(UMI), c(UMI), c(UMI)]),
    (
        Req::Delete,
        [Out::Deleted, c(NEG), c(NEG), c(NEG), c(Code::GroupIdNotFound)],
    ),
];

/// The state a group is left in by a request of the table (None: unchanged).
fn after(req: Req, s: State) -> Option<State> {
    use State::*;
    match (req, s) {
        (Req::JoinLeaderSameMetadata, Stable) => Some(PreparingRebalance),
        (Req::JoinFollowerNewMetadata, CompletingRebalance | Stable) => Some(PreparingRebalance),
        (Req::JoinNoIdV3, Empty | CompletingRebalance | Stable | Dead) => Some(PreparingRebalance),
        (Req::JoinNoIdV4, Dead) => Some(Empty),
        (Req::LeaveMember, CompletingRebalance | Stable) => Some(PreparingRebalance),
        (Req::Delete, Empty) => Some(Dead),
        _ => None,
    }
}

fn run(h: &mut H, req: Req) -> Out {
    let g = h.generation().max(1);
    let join = |h: &mut H, member: &str, meta: &'static [u8]| {
        let (t, r) = h.join(member, "new", false, meta);
        match r {
            None => Out::Parked,
            Some(j) if j.code == Code::None => {
                assert_eq!(
                    (j.generation, j.member_id.as_str()),
                    (h.generation(), member),
                    "{j:?}"
                );
                Out::Current(!j.members.is_empty())
            }
            Some(j) => {
                assert_eq!(j.generation, -1);
                let _ = t;
                Out::Code(j.code)
            }
        }
    };
    match req {
        Req::HeartbeatMember => c(h.heartbeat("b", g)),
        Req::HeartbeatOtherGeneration => c(h.heartbeat("b", g + 5)),
        Req::HeartbeatStranger => c(h.heartbeat("z", g)),
        Req::SyncMember | Req::SyncOtherGeneration => {
            let gen = if matches!(req, Req::SyncMember) { g } else { g + 5 };
            match h.sync("b", gen, &[]).1 {
                None => Out::Parked,
                Some(s) => c(s.code),
            }
        }
        Req::CommitMember => c(h.commit("b", g)),
        Req::CommitOtherGeneration => c(h.commit("b", g + 5)),
        Req::CommitStranger => c(h.commit("z", g)),
        Req::CommitSimple => c(h.commit("", -1)),
        Req::CommitSimpleWithMember => c(h.commit("b", -1)),
        Req::JoinFollowerSameMetadata => join(h, "b", b"m"),
        Req::JoinLeaderSameMetadata => join(h, "a", b"m"),
        Req::JoinFollowerNewMetadata => join(h, "b", b"changed"),
        Req::JoinStranger => join(h, "z", b"m"),
        Req::JoinNoIdV4 => match h.join("", "new", true, b"m").1 {
            Some(j) => {
                assert_eq!(j.member_id, "new");
                c(j.code)
            }
            None => Out::Parked,
        },
        Req::JoinNoIdV3 => join(h, "", b"m"),
        Req::LeaveMember => c(h.leave("b")),
        Req::LeaveStranger => c(h.leave("z")),
        Req::Delete => match h.c.delete("g", false) {
            Deletion::DeleteOffsets => Out::Deleted,
            Deletion::Refused(code) => c(code),
        },
    }
}

#[test]
fn every_state_answers_every_request_as_the_table_says() {
    for (req, outs) in TABLE {
        for (s, want) in State::ALL.iter().zip(outs) {
            let mut h = H::in_state(*s);
            assert_eq!(h.state(), *s);
            let got = run(&mut h, *req);
            assert_eq!(got, *want, "{req:?} in {s:?}");
            let expected_state = after(*req, *s).unwrap_or(*s);
            assert_eq!(h.state(), expected_state, "state after {req:?} in {s:?}");
        }
    }
}

#[test]
fn describe_shows_kafka_state_names_and_metadata_only_when_stable() {
    for s in State::ALL {
        let h = H::in_state(s);
        let d = h.c.describe("g", false);
        assert_eq!(d.state, s);
        assert_eq!(d.state.name(), format!("{s:?}"));
        match s {
            State::Stable => {
                assert_eq!(
                    (d.protocol_type.as_str(), d.protocol.as_str()),
                    ("consumer", "range")
                );
                let b = d.members.iter().find(|m| m.member_id == "b").unwrap();
                assert_eq!(
                    (b.metadata.as_ref(), b.assignment.as_ref()),
                    (&b"m"[..], &b"B"[..])
                );
                assert_eq!(
                    (b.client_id.as_str(), b.client_host.as_str()),
                    ("client", "/127.0.0.1")
                );
            }
            State::Dead => assert!(d.protocol_type.is_empty() && d.members.is_empty()),
            _ => {
                assert_eq!((d.protocol_type.as_str(), d.protocol.as_str()), ("consumer", ""));
                assert!(d
                    .members
                    .iter()
                    .all(|m| m.metadata.is_empty() && m.assignment.is_empty()));
            }
        }
    }
    // A group known only by its committed offsets is Empty, as Kafka loads it.
    assert_eq!(H::new().c.describe("g", true).state, State::Empty);
}

/// Regression: an OffsetCommit from a member of the current generation while the group was
/// `PreparingRebalance` was refused with REBALANCE_IN_PROGRESS; Kafka accepts it (the member
/// learns of the rebalance from its next heartbeat) and resets the member's session timer.
#[test]
fn a_commit_of_the_current_generation_is_accepted_while_preparing_a_rebalance() {
    let mut h = H::preparing();
    h.advance(ms(9_000));
    assert_eq!(h.commit("b", 1), Code::None);
    assert_eq!(h.heartbeat("a", 1), Code::RebalanceInProgress);
    // b's session was renewed by the commit: 9 s later it is still a member.
    h.advance(ms(9_000));
    assert!(h.c.group("g").unwrap().has_member("b"));
    // Refused once the join completed and the member holds the next generation's answer.
    let ta = h.join("a", "", true, b"m").0;
    let tb = h.join("b", "", true, b"m").0;
    assert_eq!(h.state(), State::CompletingRebalance);
    assert_eq!(h.join_answer(ta).unwrap().generation, 2);
    assert_eq!(h.join_answer(tb).unwrap().generation, 2);
    assert_eq!(h.commit("b", 2), Code::RebalanceInProgress);
    assert_eq!(h.commit("b", 1), Code::IllegalGeneration);
}

#[test]
fn session_timeouts_outside_kafkas_bounds_are_refused() {
    for (session, want) in [
        (5_999, Some(Code::InvalidSessionTimeout)),
        (6_000, None),
        (1_800_000, None),
        (1_800_001, Some(Code::InvalidSessionTimeout)),
        (-1, Some(Code::InvalidSessionTimeout)),
    ] {
        let mut h = H::new();
        let mut req = h.join_req("", "x", false, b"m");
        req.session_timeout_ms = session;
        let (_, r) = h.join_with(req);
        assert_eq!(r.map(|j| j.code), want, "session timeout {session}");
    }
}

#[test]
fn a_member_id_handed_out_lapses_after_its_session_timeout() {
    let mut h = H::stable();
    let (_, r) = h.join("", "p", true, b"m");
    assert_eq!(r.unwrap().code, Code::MemberIdRequired);
    assert_eq!(h.state(), State::Stable, "a pending member id does not rebalance");
    // The leader rejoins: the rebalance waits for the pending member too.
    let ta = h.join("a", "", true, b"m").0;
    let tb = h.join("b", "", true, b"m").0;
    assert_eq!(h.state(), State::PreparingRebalance);
    h.advance(ms(9_000));
    assert!(
        h.join_answer(ta).is_none(),
        "completed while a member id was pending"
    );
    h.advance(ms(1_100));
    assert_eq!(h.state(), State::CompletingRebalance);
    assert_eq!(h.join_answer(tb).unwrap().generation, 2);
    // Too late now.
    assert_eq!(h.join("p", "", true, b"m").1.unwrap().code, Code::UnknownMemberId);
}

#[test]
fn a_pending_member_that_rejoins_is_added() {
    let mut h = H::stable();
    h.join("", "p", true, b"m");
    let tp = h.join("p", "", true, b"m").0;
    let ta = h.join("a", "", true, b"m").0;
    assert!(h.join_answer(tp).is_none());
    let tb = h.join("b", "", true, b"m").0;
    let ja = h.join_answer(ta).unwrap();
    assert_eq!((ja.generation, ja.members.len()), (2, 3));
    assert!(h.join_answer(tb).is_some() && h.join_answer(tp).is_some());
}

#[test]
fn the_initial_delay_waits_for_more_members_and_grows_with_each_newcomer() {
    let mut h = H::new();
    let ta = h.join_v4("a");
    h.advance(ms(400));
    let tb = h.join_v4("b");
    h.advance(ms(100)); // 500 ms: the first delay ends, b came meanwhile: once more
    assert_eq!(h.state(), State::PreparingRebalance);
    h.advance(ms(400));
    assert!(h.join_answer(ta).is_none());
    h.advance(ms(100)); // 1000 ms: no newcomer in the second delay
    assert_eq!(h.state(), State::CompletingRebalance);
    assert_eq!(h.join_answer(ta).unwrap().members.len(), 2);
    assert!(h.join_answer(tb).is_some());
}

#[test]
fn the_initial_delay_grows_no_further_than_the_rebalance_timeout() {
    let mut h = H::new();
    let mut req = h.join_req("", "a", false, b"m");
    req.rebalance_timeout_ms = 800;
    let (ta, _) = h.join_with(req);
    let mut n = 0;
    while h.join_answer(ta).is_none() {
        n += 1;
        assert!(n < 50, "the initial rebalance never completed");
        h.join("", &format!("x{n}"), false, b"m");
        h.advance(ms(100));
    }
    // 500 ms, then once more for the newcomers (min(500, 800 - 500) = 300 ms), then done.
    assert_eq!(n, 8);
}

/// Regression: a member killed without LeaveGroup while a rebalance was starting held the
/// group until the rebalance timeout (kafka-python and librdkafka: 5 minutes), because
/// session expiry was skipped in `PreparingRebalance`.
#[test]
fn a_member_dead_mid_rebalance_is_dropped_at_its_session_timeout() {
    let mut h = H::stable();
    let ta = h.join("a", "", true, b"m").0; // the leader rejoins; b is dead
    assert_eq!(h.state(), State::PreparingRebalance);
    h.advance(ms(9_000));
    assert!(
        h.join_answer(ta).is_none(),
        "completed before b's session ran out"
    );
    h.advance(ms(1_000));
    let j = h.join_answer(ta).expect("completed at b's session timeout");
    assert_eq!((j.generation, j.leader.as_str(), j.members.len()), (2, "a", 1));
    assert_eq!(h.state(), State::CompletingRebalance);
}

#[test]
fn parked_members_are_not_expired_but_new_ones_give_up_after_five_minutes() {
    let mut h = H::stable();
    // b rejoins and waits; a (the leader) never does and keeps heartbeating: the rebalance
    // waits for it until the rebalance timeout (30 s), b's session (10 s) notwithstanding.
    let tb = h.join("b", "", true, b"changed").0;
    for _ in 0..25 {
        h.advance(ms(1_000));
        assert_eq!(h.heartbeat("a", 1), Code::RebalanceInProgress);
    }
    assert!(h.join_answer(tb).is_none());
    h.advance(ms(5_000));
    let j = h.join_answer(tb).expect("completed at the rebalance timeout");
    assert_eq!((j.code, j.leader.as_str()), (Code::None, "b"));
    assert!(!h.c.group("g").unwrap().has_member("a"));

    // A new member waits in a rebalance that never ends (a 10-minute rebalance timeout and a
    // member that heartbeats but never rejoins): it is dropped after 5 minutes.
    let mut h = H::new();
    let mut req = h.join_req("", "slow", false, b"m");
    req.rebalance_timeout_ms = 600_000;
    let (ts, _) = h.join_with(req);
    h.advance(ms(1_000));
    let gen = h.join_answer(ts).unwrap().generation;
    h.sync("slow", gen, &[("slow", b"S")]);
    let tn = h.join("", "newcomer", false, b"m").0;
    for _ in 0..299 {
        h.advance(ms(1_000));
        assert_eq!(h.heartbeat("slow", gen), Code::RebalanceInProgress);
    }
    assert!(h.join_answer(tn).is_none());
    h.advance(ms(1_000));
    let j = h.join_answer(tn).expect("the new member's JoinGroup expired");
    assert_eq!(j.code, Code::UnknownMemberId);
}

#[test]
fn members_that_never_sync_are_removed_after_the_rebalance_timeout() {
    let mut h = H::completing();
    let (ta, _) = h.sync("a", 1, &[("a", b"A"), ("b", b"B")]);
    assert_eq!(h.sync_answer(ta).unwrap().code, Code::None);
    assert_eq!(h.state(), State::Stable);
    // b heartbeats but never sends SyncGroup.
    for _ in 0..29 {
        h.advance(ms(1_000));
        assert_eq!(h.heartbeat("a", 1), Code::None);
        assert_eq!(h.heartbeat("b", 1), Code::None);
    }
    h.advance(ms(1_100));
    assert!(!h.c.group("g").unwrap().has_member("b"));
    assert_eq!(h.state(), State::PreparingRebalance);
}

#[test]
fn a_rebalance_answers_parked_syncs_with_rebalance_in_progress() {
    let mut h = H::completing();
    let (tb, r) = h.sync("b", 1, &[]);
    assert!(r.is_none());
    h.join("", "c", false, b"m");
    let s = h.sync_answer(tb).unwrap();
    assert_eq!(
        (s.code, s.protocol_type, s.assignment.len()),
        (Code::RebalanceInProgress, None, 0)
    );
}

#[test]
fn the_last_member_leaving_empties_the_group_and_bumps_the_generation() {
    let mut h = H::preparing();
    for m in ["a", "b"] {
        assert_eq!(h.leave(m), Code::None);
    }
    // c is the only member left, parked: the join completes without a and b.
    assert_eq!(h.state(), State::CompletingRebalance);
    assert_eq!(h.generation(), 2);
    assert_eq!(h.c.group("g").unwrap().leader(), Some("c"));
    // Kafka: a rebalance with no member left completes at once.
    assert_eq!(h.leave("c"), Code::None);
    assert_eq!((h.state(), h.generation()), (State::Empty, 3));
}

#[test]
fn a_leaving_member_gets_its_parked_join_answered() {
    let mut h = H::preparing();
    let ta = h.join("a", "", true, b"m").0;
    assert_eq!(h.leave("a"), Code::None);
    assert_eq!(h.join_answer(ta).unwrap().code, Code::UnknownMemberId);
}

#[test]
fn a_second_join_from_a_parked_member_supersedes_the_first() {
    let mut h = H::preparing();
    let t1 = h.join("a", "", true, b"m").0;
    let t2 = h.join("a", "", true, b"m").0;
    assert_eq!(h.join_answer(t1).unwrap().code, Code::RebalanceInProgress);
    assert!(h.join_answer(t2).is_none());
}

#[test]
fn the_protocol_is_chosen_by_vote_among_those_every_member_supports() {
    let mut h = H::new();
    let p = |names: &[&str]| -> Vec<(String, Bytes)> {
        names
            .iter()
            .map(|n| (n.to_string(), Bytes::from(n.to_string())))
            .collect()
    };
    let mut tokens = Vec::new();
    for (id, prefs) in [
        ("a", &["roundrobin", "range", "sticky"][..]),
        ("b", &["range", "sticky"]),
        ("c", &["sticky", "range"]),
    ] {
        let mut req = h.join_req("", id, false, b"m");
        req.protocols = p(prefs);
        tokens.push(h.join_with(req).0);
    }
    h.advance(ms(600));
    h.advance(ms(600));
    assert_eq!(h.state(), State::CompletingRebalance);
    let j = h.join_answer(tokens[0]).unwrap();
    // Candidates: range, sticky. Votes: a range, b range, c sticky.
    assert_eq!(j.protocol_name.as_deref(), Some("range"));
    assert!(j
        .members
        .iter()
        .all(|m| m.metadata == Bytes::from_static(b"range")));
    // A newcomer without any common protocol is refused.
    let mut req = h.join_req("", "d", false, b"m");
    req.protocols = p(&["roundrobin"]);
    assert_eq!(h.join_with(req).1.unwrap().code, Code::InconsistentGroupProtocol);
    let mut req = h.join_req("", "e", false, b"m");
    req.protocol_type = "connect".into();
    assert_eq!(h.join_with(req).1.unwrap().code, Code::InconsistentGroupProtocol);
}

#[test]
fn sync_checks_the_protocol_type_and_name() {
    let mut h = H::stable();
    let mut ask = |pt: Option<&str>, pn: Option<&str>| {
        let token = h.token();
        let replies = h.c.sync(
            h.now,
            SyncRequest {
                token,
                group: "g".into(),
                member_id: "b".into(),
                generation: 1,
                protocol_type: pt.map(str::to_string),
                protocol_name: pn.map(str::to_string),
                assignments: vec![],
            },
        );
        match &replies[..] {
            [Reply {
                response: Response::Sync(s),
                ..
            }] => s.code,
            r => panic!("{r:?}"),
        }
    };
    assert_eq!(ask(Some("consumer"), Some("range")), Code::None);
    assert_eq!(ask(None, None), Code::None);
    assert_eq!(ask(Some("connect"), None), Code::InconsistentGroupProtocol);
    assert_eq!(ask(None, Some("sticky")), Code::InconsistentGroupProtocol);
}

#[test]
fn empty_group_ids_are_invalid_except_for_commits() {
    let mut h = H::new();
    let mut req = h.join_req("", "x", false, b"m");
    req.group = String::new();
    assert_eq!(h.join_with(req).1.unwrap().code, Code::InvalidGroupId);
    assert_eq!(h.c.heartbeat(h.now, "", "x", 0), Code::InvalidGroupId);
    assert_eq!(
        h.c.leave(h.now, "", &["x".into()]).unwrap_err(),
        Code::InvalidGroupId
    );
    assert_eq!(h.c.commit(h.now, "", "", -1), Code::None);
}

#[test]
fn the_group_max_size_counts_members_and_pending_ids() {
    let mut h = H::new();
    h.c = Coordinator::new(Limits {
        max_size: 2,
        ..Limits::default()
    });
    assert_eq!(
        h.join("", "p1", true, b"m").1.unwrap().code,
        Code::MemberIdRequired
    );
    assert_eq!(
        h.join("", "p2", true, b"m").1.unwrap().code,
        Code::MemberIdRequired
    );
    let r = h.join("", "p3", true, b"m").1.unwrap();
    assert_eq!((r.code, r.member_id.as_str()), (Code::GroupMaxSizeReached, ""));
    // The pending ids themselves may still join.
    assert!(h.join("p1", "", true, b"m").1.is_none());
    assert!(h.join("p2", "", true, b"m").1.is_none());
    h.advance(ms(600));
    h.advance(ms(600));
    assert_eq!(h.state(), State::CompletingRebalance);
    assert_eq!(
        h.join("", "p4", false, b"m").1.unwrap().code,
        Code::GroupMaxSizeReached
    );
}

#[test]
fn list_filters_by_state_and_includes_groups_known_by_offsets() {
    let h = H::stable();
    let offsets: BTreeSet<String> = ["g".to_string(), "old".to_string()].into();
    let all = h.c.list(&offsets, &[]);
    let got: Vec<(&str, &str, State)> = all
        .iter()
        .map(|l| (l.group.as_str(), l.protocol_type.as_str(), l.state))
        .collect();
    assert_eq!(got, [("g", "consumer", State::Stable), ("old", "", State::Empty)]);
    let empty = h.c.list(&offsets, &[" empty ".into()]);
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].group, "old");
    assert_eq!(h.c.list(&offsets, &["STABLE".into(), "Dead".into()]).len(), 1);
    assert!(h.c.list(&offsets, &["nonsense".into()]).is_empty());
}

#[test]
fn empty_groups_are_forgotten_after_the_retention() {
    let mut h = H::empty();
    h.advance(ms(599_000));
    assert_eq!(h.state(), State::Empty);
    h.advance(ms(1_000));
    assert_eq!(h.state(), State::Dead);
    assert_eq!(h.c.delete("g", false), Deletion::Refused(Code::GroupIdNotFound));
    assert_eq!(h.c.delete("g", true), Deletion::DeleteOffsets);
}

// ---- The proptest: random clients against the table and the invariants. ----

#[derive(Debug, Clone)]
enum Op {
    /// Client `i` joins: with its member id if it has one, or without (v4 or not); with the
    /// first or the second metadata.
    Join {
        i: usize,
        v4: bool,
        meta: bool,
    },
    /// Client `i` syncs with its generation (or another); the leader brings assignments.
    Sync {
        i: usize,
        stale: bool,
    },
    Heartbeat {
        i: usize,
        stale: bool,
    },
    /// Client `i` commits with its generation, another, or -1 (with or without its id).
    Commit {
        i: usize,
        gen: GenChoice,
        with_id: bool,
    },
    Leave {
        i: usize,
    },
    Delete,
    Advance {
        ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum GenChoice {
    Current,
    Stale,
    Simple,
}

const CLIENTS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let i = 0..CLIENTS;
    prop_oneof![
        (i.clone(), any::<bool>(), any::<bool>()).prop_map(|(i, v4, meta)| Op::Join { i, v4, meta }),
        (i.clone(), prop::bool::weighted(0.2)).prop_map(|(i, stale)| Op::Sync { i, stale }),
        (i.clone(), prop::bool::weighted(0.2)).prop_map(|(i, stale)| Op::Heartbeat { i, stale }),
        (
            i.clone(),
            prop_oneof![
                Just(GenChoice::Current),
                Just(GenChoice::Stale),
                Just(GenChoice::Simple)
            ],
            any::<bool>()
        )
            .prop_map(|(i, gen, with_id)| Op::Commit { i, gen, with_id }),
        i.prop_map(|i| Op::Leave { i }),
        Just(Op::Delete),
        prop_oneof![0..200u64, 200..3_000u64, 3_000..12_000u64].prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the group looks like to the table before a request.
struct Snapshot {
    state: State,
    generation: i32,
    member: bool,
}

fn snapshot(h: &H, member: &str) -> Snapshot {
    Snapshot {
        state: h.state(),
        generation: h.generation(),
        member: h.c.group("g").is_some_and(|g| g.has_member(member)),
    }
}

/// The table's Heartbeat rows as a function.
fn expected_heartbeat(s: &Snapshot, generation: i32) -> Code {
    match s.state {
        State::Dead | State::Empty => Code::UnknownMemberId,
        _ if !s.member => Code::UnknownMemberId,
        _ if generation != s.generation => Code::IllegalGeneration,
        State::PreparingRebalance => Code::RebalanceInProgress,
        _ => Code::None,
    }
}

/// The table's OffsetCommit rows as a function.
fn expected_commit(s: &Snapshot, member_id: &str, generation: i32) -> Code {
    match s.state {
        State::Dead if generation < 0 => Code::None,
        State::Dead => Code::IllegalGeneration,
        State::Empty if generation < 0 => Code::None,
        _ if generation < 0 && member_id.is_empty() => Code::UnknownMemberId,
        _ if !s.member => Code::UnknownMemberId,
        _ if generation != s.generation => Code::IllegalGeneration,
        State::CompletingRebalance => Code::RebalanceInProgress,
        _ => Code::None,
    }
}

#[derive(Debug, Default, Clone)]
struct Client {
    id: String,
    generation: i32,
    leader: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_clients_get_what_the_table_says_and_every_wait_ends(ops in prop::collection::vec(op(), 1..120)) {
        let mut h = H::new();
        let mut clients = vec![Client::default(); CLIENTS];
        let mut parked: BTreeMap<Token, usize> = BTreeMap::new();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Join { i, v4, meta } => {
                    n += 1;
                    let id = clients[i].id.clone();
                    let (t, _) = h.join(&id, &format!("c{i}-{n}"), v4, if meta { b"x" } else { b"y" });
                    parked.insert(t, i);
                }
                Op::Sync { i, stale } => {
                    let cl = clients[i].clone();
                    let gen = cl.generation - i32::from(stale);
                    let a: Vec<(String, Bytes)> = if cl.leader {
                        clients.iter().filter(|c| !c.id.is_empty()).map(|c| (c.id.clone(), Bytes::from(c.id.clone()))).collect()
                    } else {
                        vec![]
                    };
                    let token = h.token();
                    let replies = h.c.sync(h.now, SyncRequest {
                        token, group: "g".into(), member_id: cl.id.clone(), generation: gen,
                        protocol_type: None, protocol_name: None, assignments: a,
                    });
                    h.record(replies);
                    parked.insert(token, i);
                }
                Op::Heartbeat { i, stale } => {
                    let gen = clients[i].generation - i32::from(stale);
                    let s = snapshot(&h, &clients[i].id);
                    let got = h.heartbeat(&clients[i].id, gen);
                    prop_assert_eq!(got, expected_heartbeat(&s, gen), "heartbeat of {:?} in {:?}", clients[i], s.state);
                }
                Op::Commit { i, gen, with_id } => {
                    let id = if with_id { clients[i].id.clone() } else { String::new() };
                    let g = match gen {
                        GenChoice::Current => clients[i].generation,
                        GenChoice::Stale => clients[i].generation - 1,
                        GenChoice::Simple => -1,
                    };
                    let s = snapshot(&h, &id);
                    let got = h.commit(&id, g);
                    prop_assert_eq!(got, expected_commit(&s, &id, g), "commit {:?} gen {} in {:?}", id, g, s.state);
                }
                Op::Leave { i } => {
                    let id = clients[i].id.clone();
                    let member = snapshot(&h, &id).member;
                    let code = h.leave(&id);
                    if member {
                        prop_assert_eq!(code, Code::None);
                    }
                    clients[i] = Client::default();
                }
                Op::Delete => {
                    let s = h.state();
                    let d = h.c.delete("g", false);
                    h.c.check_invariants();
                    let want = match s {
                        State::Empty => Deletion::DeleteOffsets,
                        State::Dead => Deletion::Refused(Code::GroupIdNotFound),
                        _ => Deletion::Refused(Code::NonEmptyGroup),
                    };
                    prop_assert_eq!(d, want);
                }
                Op::Advance { ms } => h.advance(Duration::from_millis(ms)),
            }
            // Clients learn from their answers.
            let done: Vec<Token> = parked.keys().copied().filter(|t| h.answered.contains_key(t)).collect();
            for t in done {
                let i = parked.remove(&t).unwrap_or_default();
                match &h.answered[&t] {
                    Response::Join(j) if j.code == Code::None => {
                        clients[i] = Client { id: j.member_id.clone(), generation: j.generation, leader: j.leader == j.member_id };
                    }
                    Response::Join(j) if j.code == Code::MemberIdRequired => clients[i].id = j.member_id.clone(),
                    Response::Join(j) if j.code == Code::UnknownMemberId => clients[i] = Client::default(),
                    _ => {}
                }
            }
        }
        // Everyone leaves, time passes: no request is left waiting.
        for c in &clients {
            if !c.id.is_empty() {
                h.leave(&c.id);
            }
        }
        h.advance(Duration::from_secs(3_600));
        let waiting: Vec<&Token> = parked.keys().filter(|t| !h.answered.contains_key(t)).collect();
        prop_assert!(waiting.is_empty(), "never answered: {:?}", waiting);
    }
}
