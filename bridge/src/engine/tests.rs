//! The engine against the in-memory cloud twin and edge log, with a manual clock: its
//! guarantees under outages, failures, lost reports, crashes, restarts, replays and quota
//! pressure, checked against a plain model in milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::cloud::twin::{Twin, TwinRecord, TwinSession};
use crate::cloud::{OutRecord, Sent};
use crate::headers;
use crate::source::mem::MemLog;

const GW: &str = "gw";
const TELEMETRY: &str = "telemetry";
const PARTITIONS: u32 = 3;
const DEVICES: u32 = 6;

/// The edge log, the cloud, the clock, and an engine that may crash.
struct World {
    log: Arc<MemLog>,
    twin: Twin,
    clock: Arc<ManualClock>,
    cfg: BridgeConfig,
    engine: Option<Engine>,
    session: Option<TwinSession>,
    /// Per device: next sequence number.
    seq: BTreeMap<u32, u64>,
    /// Replay jobs asked for: (id, partition, from, end).
    jobs: Vec<(u64, u32, u64, u64)>,
    next_job: u64,
    /// The last persisted checkpoint per source key (they must never go backwards).
    persisted: BTreeMap<String, u64>,
}

impl World {
    fn new(cfg: BridgeConfig, seed: u64) -> World {
        let log = Arc::new(MemLog::new());
        log.create(TELEMETRY, PARTITIONS, false);
        log.create("device-status", 1, true);
        log.create("dead-letter", 1, false);
        let mut w = World {
            log,
            twin: Twin::new(seed),
            clock: Arc::new(ManualClock::new()),
            cfg,
            engine: None,
            session: None,
            seq: BTreeMap::new(),
            jobs: Vec::new(),
            next_job: 1,
            persisted: BTreeMap::new(),
        };
        w.boot();
        w
    }

    /// Starts an engine from what the log holds (first start, or after a crash).
    fn boot(&mut self) {
        let e = Engine::new(
            self.cfg.clone(),
            self.log.clone(),
            self.clock.clone(),
            GW,
            vec![("agent".into(), "test".into())],
        )
        .expect("an engine");
        self.next_job = self.next_job.max(e.max_job_id() + 1);
        self.engine = Some(e);
        self.session = None;
        self.check_persisted();
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("booted")
    }

    /// Persisted checkpoints never go backwards.
    fn check_persisted(&mut self) {
        let Some(bytes) = self.log.load_state().unwrap() else {
            return;
        };
        let st = State::decode(&bytes).unwrap();
        for (k, s) in st.sources {
            let before = self.persisted.insert(k.clone(), s.checkpoint).unwrap_or(0);
            assert!(
                s.checkpoint >= before,
                "{k}: persisted checkpoint went back {before} -> {}",
                s.checkpoint
            );
        }
    }

    /// `n` readings of `device`, in its partition (the edge partitions by key).
    fn append(&mut self, device: u32, n: u64) {
        let seq = self.seq.entry(device).or_insert(0);
        let recs = (0..n)
            .map(|i| {
                let s = *seq + i;
                (
                    Some(format!("d{device}").into_bytes()),
                    format!("{device}:{s}").into_bytes(),
                    Some((1, s)),
                )
            })
            .collect();
        *seq += n;
        self.log
            .append(TELEMETRY, device % PARTITIONS, recs, self.clock.wall_ms());
    }

    /// One turn of the shell's loop: a session if there is none (and the cloud answers),
    /// sends, reports; a failed delivery ends the session.
    fn step(&mut self) {
        if self.session.is_none() {
            let mut twin = self.twin.clone();
            match self.engine().start_session(&mut twin, &|| false) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    self.engine().end_session(Some(&e));
                    return;
                }
            }
        }
        let mut s = self.session.take().expect("a session");
        let e = self.engine.as_mut().expect("booted");
        let result = e.pump(&mut s).and_then(|_| {
            let reports = s.poll(Duration::ZERO);
            e.on_reports(reports)
        });
        match result {
            Ok(()) => self.session = Some(s),
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                e.end_session(Some(&err));
            }
        }
        self.check_persisted();
    }

    fn tick(&mut self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
        let e = self.engine.as_mut().expect("booted");
        e.housekeeping(self.session.as_mut().map(|s| s as &mut dyn CloudSession));
        self.check_persisted();
    }

    fn restart_session(&mut self) {
        if self.session.take().is_some() {
            self.engine().end_session(Some(&Error::RestartRequested));
        }
    }

    /// kill -9: what the engine had not persisted is gone, and so are the producer's queue
    /// and the reports it had not handed over (the records may be in the cloud already).
    fn crash(&mut self) {
        self.engine = None;
        self.session = None;
        self.boot();
    }

    fn replay(&mut self, partition: u32) {
        let id = self.next_job;
        self.next_job += 1;
        let now = self.clock.now();
        let wall = self.clock.wall_ms();
        let job = Job::plan(
            &*self.log,
            id,
            TELEMETRY,
            TELEMETRY,
            Some(partition),
            ReplayStart::Offset(0),
            now,
            wall,
        )
        .expect("a job");
        let end = self.log.partition(TELEMETRY, partition).unwrap().next_offset;
        self.jobs.push((id, partition, 0, end));
        self.engine().add_job(job);
    }

    /// Heals the cloud and runs until everything is forwarded and every job is done.
    fn settle(&mut self) {
        self.twin.faults(|f| *f = crate::cloud::twin::Faults::default());
        for _ in 0..2_000 {
            self.step();
            self.tick(50);
            let st = self.engine().snapshot();
            let forwarded = st.sources.iter().all(|s| s.checkpoint >= s.next_offset);
            let jobs = st.replays.iter().all(|j| j.done);
            if self.session.is_some() && forwarded && jobs && self.engine().in_flight() == 0 {
                return;
            }
        }
        panic!("did not settle: {:#?}", self.engine().snapshot());
    }

    /// The model's promises, checked against the twin cloud.
    fn check(&mut self) {
        let st = self.engine().snapshot();
        let cloud = self.twin.records(TELEMETRY);
        // Edge identity -> copies (not replays); replay job -> offsets it delivered.
        let mut copies: BTreeMap<(u32, u64), Vec<&TwinRecord>> = BTreeMap::new();
        let mut replayed: BTreeMap<u64, Vec<(u32, u64)>> = BTreeMap::new();
        for part in &cloud {
            // Per-device order among the non-replay records of each cloud partition.
            let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for r in part {
                let (gw, topic, p, o) =
                    headers::parse_edge(r.header(headers::EDGE).expect("an edge header")).expect("parses");
                assert_eq!((gw, topic), (GW, TELEMETRY));
                let (boot, seq) =
                    headers::parse_reading(r.header(headers::READING).expect("a reading header"))
                        .expect("parses");
                assert_eq!(boot, 1);
                let key = r.key.clone().expect("a key");
                let device: u32 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
                assert_eq!(r.value, format!("{device}:{seq}").into_bytes(), "value kept");
                match r.header(headers::REPLAY) {
                    Some(j) => replayed
                        .entry(std::str::from_utf8(j).unwrap().parse().unwrap())
                        .or_default()
                        .push((p, o)),
                    None => {
                        if let Some(&prev) = last.get(&key) {
                            assert!(seq > prev, "device {device}: seq {seq} after {prev} in the cloud");
                        }
                        last.insert(key, seq);
                        copies.entry((p, o)).or_default().push(r);
                    }
                }
            }
        }
        for p in 0..PARTITIONS {
            let next = self.log.partition(TELEMETRY, p).unwrap().next_offset;
            let src = st
                .sources
                .iter()
                .find(|s| s.topic == TELEMETRY && s.partition == p)
                .unwrap();
            let mut missing = 0;
            for o in 0..next {
                match copies.get(&(p, o)).map_or(0, Vec::len) {
                    0 => missing += 1,
                    1 => {}
                    n => panic!("telemetry/{p}/{o} is in the cloud {n} times"),
                }
            }
            assert_eq!(
                missing, src.dropped,
                "partition {p}: records not in the cloud = records counted as dropped"
            );
            assert_eq!(src.checkpoint, next, "partition {p} checkpoint");
        }
        // Every replay job delivered every offset of its range still in the log (marked).
        for &(id, p, from, end) in &self.jobs {
            let got = replayed.get(&id).cloned().unwrap_or_default();
            let first = self.log.partition(TELEMETRY, p).unwrap().first_offset;
            for o in from.max(first)..end {
                assert!(got.contains(&(p, o)), "job {id}: telemetry/{p}/{o} not replayed");
            }
            assert!(
                got.iter().all(|&(gp, o)| gp == p && o < end),
                "job {id}: only its range"
            );
        }
    }
}

fn cfg(quota: Option<u64>) -> BridgeConfig {
    BridgeConfig {
        bootstrap: "twin".into(),
        max_in_flight: 40,
        drain_in_flight: 24,
        live_first_threshold: 30,
        heartbeat_interval_ms: 300,
        backlog_quota_bytes: quota,
        ..BridgeConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append { device: u32, n: u64 },
    Step,
    Tick(u64),
    Down(bool),
    Fail(u64),
    Reports(usize),
    Deliveries(usize),
    Queue(usize),
    RestartSession,
    Crash,
    Replay(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..DEVICES, 1..40u64).prop_map(|(device, n)| Op::Append { device, n }),
        10 => Just(Op::Step),
        3 => (0..400u64).prop_map(Op::Tick),
        2 => any::<bool>().prop_map(Op::Down),
        1 => (1..4u64).prop_map(Op::Fail),
        1 => (0..20usize).prop_map(Op::Reports),
        1 => (1..30usize).prop_map(Op::Deliveries),
        1 => (1..60usize).prop_map(Op::Queue),
        1 => Just(Op::RestartSession),
        1 => Just(Op::Crash),
        1 => (0..PARTITIONS).prop_map(Op::Replay),
    ]
}

fn run(ops: &[Op], quota: Option<u64>, seed: u64) {
    let mut w = World::new(cfg(quota), seed);
    for op in ops {
        match *op {
            Op::Append { device, n } => w.append(device, n),
            Op::Step => w.step(),
            Op::Tick(ms) => w.tick(ms),
            Op::Down(d) => w.twin.faults(|f| f.down = d),
            Op::Fail(n) => w.twin.faults(|f| f.fail_next = n),
            Op::Reports(n) => w.twin.faults(|f| f.reports_per_poll = n),
            Op::Deliveries(n) => w.twin.faults(|f| f.deliver_per_poll = n),
            Op::Queue(n) => w.twin.faults(|f| f.queue = n),
            Op::RestartSession => w.restart_session(),
            Op::Crash => w.crash(),
            Op::Replay(p) => w.replay(p),
        }
    }
    w.settle();
    w.check();
    // A last crash and restart changes nothing: the reconcile finds everything.
    let before = w.twin.records(TELEMETRY);
    w.crash();
    w.settle();
    assert_eq!(
        w.twin.records(TELEMETRY),
        before,
        "a restart after settling resends nothing"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Every edge record reaches the cloud exactly once (or is counted as dropped for the
    /// quota), per-device order holds, replays are marked and complete, persisted checkpoints
    /// never go backwards — whatever the outages, failures, lost reports and crashes.
    #[test]
    fn the_cloud_gets_every_record_once_in_device_order(
        ops in proptest::collection::vec(op(), 1..120),
        quota in proptest::option::weighted(0.25, 200u64..3_000),
        seed in any::<u64>(),
    ) {
        run(&ops, quota, seed);
    }
}

/// A record delivered whose report was lost with a crash is found by the reconcile, not sent
/// again (the duplication the reconcile exists for).
#[test]
fn a_lost_report_is_reconciled_not_resent() {
    let mut w = World::new(cfg(None), 7);
    w.append(0, 10);
    w.twin.faults(|f| f.reports_per_poll = 0);
    for _ in 0..5 {
        w.step();
    }
    assert_eq!(
        w.twin.records(TELEMETRY).iter().map(Vec::len).sum::<usize>(),
        10,
        "delivered, unreported"
    );
    assert_eq!(w.engine().snapshot().sources[0].checkpoint, 0);
    w.crash();
    w.settle();
    w.check();
    let st = w.engine().snapshot();
    assert_eq!(
        st.sources.iter().map(|s| s.sent).sum::<u64>(),
        0,
        "nothing sent again"
    );
}

/// Live first: with a backlog, a device that was quiet during the outage gets its new record
/// sent before the backlog of another device has drained.
#[test]
fn live_data_of_a_caught_up_device_goes_ahead_of_a_backlog() {
    let mut w = World::new(cfg(None), 3);
    // Device 0's backlog, while the cloud is down; devices 0 and 3 share partition 0.
    w.twin.faults(|f| f.down = true);
    w.append(0, 200);
    w.step();
    w.twin.faults(|f| f.down = false);
    w.twin.faults(|f| f.deliver_per_poll = 5);
    w.step(); // session starts: the 200 records are the backlog
    w.append(3, 1);
    for _ in 0..4 {
        w.step();
    }
    let cloud = w.twin.records(TELEMETRY);
    let p0: Vec<&TwinRecord> = cloud.iter().flatten().collect();
    let live = p0.iter().position(|r| r.key.as_deref() == Some(b"d3"));
    let backlog = p0.iter().filter(|r| r.key.as_deref() == Some(b"d0")).count();
    assert!(live.is_some(), "the live record arrived");
    assert!(backlog < 200, "before the backlog drained ({backlog} of 200)");
    w.settle();
    w.check();
}

/// A partition whose reads fail (a damaged chunk at the edge) is held back; the session and
/// the other partitions go on, and it is forwarded once it reads again (after quarantine).
#[test]
fn a_partition_that_cannot_be_read_holds_back_only_itself() {
    let mut w = World::new(cfg(None), 11);
    for d in 0..DEVICES {
        w.append(d, 30);
    }
    w.log.fail_reads(TELEMETRY, 1, true);
    for _ in 0..40 {
        w.step();
        w.tick(50);
    }
    let st = w.engine().snapshot();
    assert_eq!(
        st.sessions, 1,
        "one session throughout: a read error does not end it"
    );
    for s in st.sources.iter().filter(|s| s.topic == TELEMETRY) {
        if s.partition == 1 {
            assert_eq!(s.checkpoint, 0);
            let e = s.read_error.as_deref().unwrap_or_default();
            assert!(e.contains("checksum"), "the status says why: {s:?}");
        } else {
            assert_eq!(s.checkpoint, s.next_offset, "the others are forwarded: {s:?}");
            assert!(s.read_error.is_none());
        }
    }
    assert!(st
        .render_prometheus()
        .contains("bridge_read_failing{topic=\"telemetry\",partition=\"1\"} 1"));
    w.log.fail_reads(TELEMETRY, 1, false);
    w.settle();
    w.check();
    assert!(w
        .engine()
        .snapshot()
        .sources
        .iter()
        .all(|s| s.read_error.is_none()));
}

/// Over the quota while the cloud is away, the oldest records go and are counted exactly.
#[test]
fn quota_drops_are_counted_exactly() {
    let mut w = World::new(cfg(Some(2_000)), 5);
    w.twin.faults(|f| f.down = true);
    for _ in 0..20 {
        w.append(1, 20);
        w.tick(250);
    }
    let dropped: u64 = w.engine().snapshot().sources.iter().map(|s| s.dropped).sum();
    let first = w.log.partition(TELEMETRY, 1).unwrap().first_offset;
    assert!(first > 0, "the quota removed records");
    w.settle();
    w.check();
    let after: u64 = w.engine().snapshot().sources.iter().map(|s| s.dropped).sum();
    assert!(after >= dropped && after > 0);
}

/// The twin keeps the cloud MUST rule the engine relies on: a failed record fails the
/// session's later records of its partition too.
#[test]
fn the_twin_fails_the_rest_of_a_partition_after_a_failure() {
    let mut twin = Twin::new(1);
    twin.create("t", 1);
    let mut s = twin.session().unwrap();
    twin.faults(|f| f.fail_next = 1);
    for i in 0..3u64 {
        let v = i.to_string();
        let r = OutRecord {
            topic: "t",
            partition: Some(0),
            key: None,
            value: v.as_bytes(),
            timestamp_ms: None,
            headers: &[],
            edge: None,
            reading: None,
            replay: None,
        };
        assert_eq!(s.send(&r, Tag::Heartbeat), Sent::Ok);
    }
    let reports = s.flush(Duration::ZERO);
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|r| r.result.is_err()));
    assert!(twin.records("t")[0].is_empty());
}

#[test]
fn tags_survive_packing() {
    for t in [
        Tag::Record { src: 0, offset: 0 },
        Tag::Record {
            src: (1 << SRC_BITS) - 1,
            offset: (1 << crate::cloud::OFFSET_BITS) - 1,
        },
        Tag::Record {
            src: 7,
            offset: 123_456_789,
        },
        Tag::Replay { slot: 0, offset: 1 },
        Tag::Replay {
            slot: (1 << SRC_BITS) - 1,
            offset: (1 << crate::cloud::OFFSET_BITS) - 1,
        },
        Tag::Heartbeat,
    ] {
        assert_eq!(Tag::unpack(t.pack()), t);
    }
}
