//! The forwarding engine: every rule of the bridge, no thread, no socket, no sleep. The shell
//! ([`crate::Bridge`]) calls it from one thread; tests call it with the in-memory cloud twin,
//! the in-memory edge log and a manual clock.
//!
//! It reads records through [`EdgeLog`] and sends them through a [`CloudSession`] as it
//! goes, instead of returning them as actions: records are borrowed from the log's pages and
//! copied once, into the producer (the drain runs at over a million records a second; a copy
//! per record into an action list would be a second one). Everything else comes in as calls
//! (a session starts or ends, reports arrive, a replay is asked for, time passes) and goes out
//! through the two traits (send, persist the state, truncate for the quota).
//!
//! # A session
//! 1. **Reconcile** (`reconcile.rs`). For every cloud partition of the mapped topics, read from
//!    the scan offset saved with the checkpoints to the high watermark, and collect the
//!    `(edge topic, edge partition, edge offset)` headers of this gateway's records. Offsets at
//!    or above a checkpoint found there are marked acknowledged, so a crash never duplicates.
//! 2. **Forward** ([`Engine::pump`]). Per edge partition a *drain cursor* reads from the
//!    checkpoint in offset order and hands records to the idempotent producer, at most
//!    `max_in_flight` at a time. Delivery reports ([`Engine::on_reports`]) advance each
//!    partition's [`Tracker`]; its checkpoint, the drop counters and the scan offsets are
//!    persisted a few times a second ([`Engine::housekeeping`]).
//! 3. A fatal producer error or a failed delivery ends the session; the next one reconciles
//!    again and resends from the checkpoint.
//!
//! # Live first, per-device order kept
//! When a partition is more than `live_first_threshold` records behind (after an outage, or a
//! restart with a backlog), it enters *live-first* mode (`live.rs`). The records from the drain
//! cursor to the end of the log at that moment are the backlog; a scan notes, per key
//! (device), the last backlog offset. A *tail cursor* then forwards every newly ingested
//! record at once — unless its device still has unsent records in the backlog, in which case
//! the record waits for the drain cursor (and extends that device's backlog). A device's
//! records therefore reach the cloud in edge-offset order (the same key maps to the same cloud
//! partition and the idempotent producer keeps send order), while devices that are caught up
//! see live latency. The drain uses what the window and the bandwidth cap leave (live data may
//! use the whole window, the drain 90 % of it; live data is always charged to the cap first).

mod housekeeping;
mod live;
mod reconcile;
mod replay;
mod send;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use reconcile::{Found, Setup};
pub use replay::{Job, ReplayStart};

use crate::checkpoint::Tracker;
use crate::clock::Clock;
use crate::cloud::{Cloud, CloudSession, Failure, ProducerStats, Report, Tag, SRC_BITS};
use crate::config::BridgeConfig;
use crate::source::{EdgeLog, EdgePartition};
use crate::state::{key, SourceState, State};
use crate::status::{SourceStatus, Status};
use crate::{Error, Result};

/// Live-first state of a partition (see the module docs).
#[derive(Debug)]
struct Live {
    /// Next offset the tail cursor reads.
    tail: u64,
    /// End of the backlog when live-first began.
    region_end: u64,
    /// Next offset the backlog scan reads.
    scan: u64,
    scanned: bool,
    /// Device key → last offset of that device not yet sent by the drain.
    backlog: HashMap<Vec<u8>, u64>,
}

/// Where a partition's records go.
#[derive(Debug, Clone)]
struct Route {
    cloud_topic: String,
    /// The cloud partition of the edge partition's number, when the cloud topic has the edge
    /// topic's partition count (the partition murmur2 would pick for the record's key, as the
    /// edge partitioned it the same way); `None`: the producer's murmur2 partitioner picks.
    partition: Option<i32>,
    /// `<gateway>/<topic>/<partition>/`, the start of every `edge` header value.
    prefix: Vec<u8>,
    /// Its values are readings (the `telemetry` topic): written in the value format.
    reading: bool,
}

/// How long a partition whose read failed waits before it is read again.
const READ_RETRY: Duration = Duration::from_secs(5);

/// A partition held back after a failed read of the edge log.
#[derive(Debug)]
struct Held {
    until: Instant,
    error: String,
}

/// One forwarded edge partition.
#[derive(Debug)]
struct Source {
    topic: String,
    partition: u32,
    route: Route,
    compacted: bool,
    tracker: Tracker,
    drain: u64,
    live: Option<Live>,
    info: EdgePartition,
    oldest_age_ms: u64,
    dropped: u64,
    rejected: u64,
    sent: u64,
    acked: u64,
    /// Reading it failed (damaged data): held back until then, the others go on.
    held: Option<Held>,
}

impl Source {
    /// Records removed from the edge log before the cloud had them: those counted before
    /// this tracker began, and those its checkpoint has passed since (gaps in a compacted
    /// topic are by design, not drops).
    fn dropped(&self) -> u64 {
        if self.compacted {
            self.dropped
        } else {
            self.dropped + self.tracker.dropped()
        }
    }
}

/// The bridge's rules (see the module docs).
#[derive(Debug)]
pub struct Engine {
    cfg: BridgeConfig,
    log: Arc<dyn EdgeLog>,
    clock: Arc<dyn Clock>,
    gateway_id: String,
    versions: Vec<(String, String)>,
    started: Instant,
    sources: Vec<Source>,
    state: State,
    /// Epoch → acknowledged high watermark per cloud `topic/partition` when it began.
    epochs: BTreeMap<u64, BTreeMap<String, i64>>,
    epoch: u64,
    acked_hw: BTreeMap<String, i64>,
    hw_changed: bool,
    last_epoch: Instant,
    /// Records handed to the producer, not yet reported (all kinds).
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
    jobs: Vec<Job>,
    /// Jobs waiting for replay slots.
    queued: Vec<Job>,
    /// Replay ranges by the slot their delivery reports carry: (job id, range index).
    replay_slots: Vec<Option<(u64, usize)>>,
    next_slot: usize,
    hb_in_flight: bool,
    next_hb: Instant,
    /// Producer statistics of ended sessions, and the current session's latest.
    stats_base: ProducerStats,
    stats_last: ProducerStats,
    /// Records the disk quota removed since its last log line, and when that was: one line
    /// every few seconds while a long outage overflows, not one per housekeeping.
    quota_removed: u64,
    quota_logged: Option<Instant>,
    dirty: bool,
    counters: Status,
    session_up: bool,
    /// Reused for building header values.
    scratch: Vec<u8>,
    /// Readings in the configured value format.
    encoder: crate::format::Encoder,
    /// A rewritten reading's bytes.
    value_buf: Vec<u8>,
    /// The partition the drain serves first next time.
    drain_first: usize,
    /// Acknowledged records and heartbeats, for the backoff reset.
    progress: u64,
    /// The highest job id in the saved state (also of jobs dropped at start: ids are never
    /// reused).
    saved_max_job: u64,
}

impl Engine {
    /// An engine over `log`, resuming from the state saved in it. Saved replay jobs go on
    /// where their checkpoints are, to the cloud topic the edge topic maps to now; a job of a
    /// topic no longer forwarded (or of partitions it no longer has) ends here.
    pub fn new(
        cfg: BridgeConfig,
        log: Arc<dyn EdgeLog>,
        clock: Arc<dyn Clock>,
        gateway_id: &str,
        versions: Vec<(String, String)>,
    ) -> Result<Engine> {
        cfg.validate()?;
        let encoder = crate::format::Encoder::new(&cfg);
        let state = match log.load_state()? {
            Some(b) => State::decode(&b)?,
            None => State::default(),
        };
        let topics = log.topics()?;
        let mapping = cfg.mapping();
        let mut sources = Vec::new();
        for (edge, cloud) in &mapping {
            let Some(t) = topics.iter().find(|t| &t.name == edge) else {
                continue;
            };
            for p in 0..t.partitions {
                let saved = state.sources.get(&key(edge, p)).copied().unwrap_or_default();
                sources.push(Source {
                    topic: edge.clone(),
                    partition: p,
                    route: Route {
                        cloud_topic: cloud.clone(),
                        partition: None,
                        prefix: crate::headers::edge_prefix(gateway_id, edge, p).into_bytes(),
                        reading: edge == vocab::topics::TELEMETRY,
                    },
                    compacted: t.compacted,
                    tracker: Tracker::resume(saved.checkpoint),
                    drain: saved.checkpoint,
                    live: None,
                    info: EdgePartition::default(),
                    oldest_age_ms: 0,
                    dropped: saved.dropped,
                    rejected: saved.rejected,
                    sent: 0,
                    acked: 0,
                    held: None,
                });
            }
        }
        if sources.len() >= 1 << SRC_BITS {
            return Err(Error::Config(format!(
                "the bridge forwards at most {} partitions",
                (1 << SRC_BITS) - 1
            )));
        }
        let now = clock.now();
        let mut queued = Vec::new();
        for saved in &state.replays {
            let mut j = Job::resume(saved, now);
            let cloud = mapping.iter().find(|(e, _)| *e == j.topic).map(|(_, c)| c);
            let partitions = topics.iter().find(|t| t.name == j.topic).map(|t| t.partitions);
            match (cloud, partitions) {
                (Some(cloud), Some(n)) if j.ranges.iter().all(|r| r.partition < n) => {
                    j.cloud_topic = cloud.clone();
                    if !j.done() {
                        info!(job = j.id, topic = %j.topic, "resuming a replay saved before the restart");
                    }
                    queued.push(j);
                }
                _ => warn!(
                    job = j.id,
                    topic = %j.topic,
                    "a saved replay's topic is no longer forwarded (or has fewer partitions); dropping the job"
                ),
            }
        }
        let saved_max_job = state.replays.iter().map(|j| j.id).max().unwrap_or(0);
        let mut e = Engine {
            tokens: cfg.max_bytes_per_sec.map_or(0.0, |c| c as f64),
            cfg,
            log,
            gateway_id: gateway_id.into(),
            versions,
            started: now,
            sources,
            state,
            epochs: BTreeMap::new(),
            epoch: 0,
            acked_hw: BTreeMap::new(),
            hw_changed: false,
            last_epoch: now,
            in_flight: 0,
            refilled: now,
            jobs: Vec::new(),
            queued,
            replay_slots: Vec::new(),
            next_slot: 0,
            hb_in_flight: false,
            next_hb: now,
            stats_base: ProducerStats::default(),
            stats_last: ProducerStats::default(),
            quota_removed: 0,
            quota_logged: None,
            dirty: true,
            counters: Status {
                gateway_id: gateway_id.into(),
                ..Status::default()
            },
            session_up: false,
            scratch: Vec::new(),
            encoder,
            value_buf: Vec::new(),
            drain_first: 0,
            progress: 0,
            saved_max_job,
            clock,
        };
        e.counters.bootstrap = e.cfg.bootstrap.clone();
        // What the log holds at start is the backlog; what devices publish from now on is live.
        e.housekeeping(None);
        e.enter_live_first();
        Ok(e)
    }

    /// Whether partition `i` is held back after a failed read (and it is not time to retry).
    fn held(&self, i: usize) -> bool {
        self.sources[i]
            .held
            .as_ref()
            .is_some_and(|h| self.clock.now() < h.until)
    }

    /// A read of partition `i` failed (damaged edge data, an I/O error): it is held back and
    /// retried after [`READ_RETRY`]; the session and the other partitions go on. A damaged
    /// chunk is never skipped here: the operator puts it aside (`edge-agent log verify
    /// --quarantine`), and the partition goes on past the hole.
    fn read_failed(&mut self, i: usize, e: &Error) {
        let until = self.clock.now() + READ_RETRY;
        let s = &mut self.sources[i];
        if s.held.is_none() {
            warn!(topic = %s.topic, partition = s.partition, error = %e, "reading the edge log failed: this partition is held back and read again every 5 s, the others go on");
        }
        s.held = Some(Held {
            until,
            error: e.to_string(),
        });
    }

    /// A read of partition `i` succeeded.
    fn read_ok(&mut self, i: usize) {
        let s = &mut self.sources[i];
        if s.held.take().is_some() {
            info!(topic = %s.topic, partition = s.partition, "the partition reads again");
        }
    }

    /// The edge log.
    pub fn log(&self) -> Arc<dyn EdgeLog> {
        self.log.clone()
    }

    /// The edge topics forwarded, with their cloud topics.
    pub fn mapping(&self) -> Vec<(String, String)> {
        self.cfg.mapping()
    }

    /// The highest replay job id ever used here (saved before a restart, or asked for since).
    pub fn max_job_id(&self) -> u64 {
        let live = self.jobs.iter().chain(&self.queued).map(|j| j.id);
        live.max().unwrap_or(0).max(self.saved_max_job)
    }

    /// Records handed to the producer and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Acknowledged records and heartbeats so far (the shell resets its backoff on progress).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Queues a replay job, saved at once (it outlives a crash from here on); it runs when
    /// replay slots are free.
    pub fn add_job(&mut self, job: Job) {
        self.queued.push(job);
        self.persist();
    }

    /// A queued or running job's status.
    pub fn job_status(&self, id: u64) -> Option<crate::status::ReplayStatus> {
        let now = self.clock.now();
        self.jobs
            .iter()
            .chain(&self.queued)
            .find(|j| j.id == id)
            .map(|j| j.status(now))
    }

    /// Starts a session all at once on this thread (see [`Engine::begin_session`]).
    pub fn start_session<C: Cloud>(
        &mut self,
        cloud: &mut C,
        stopping: &dyn Fn() -> bool,
    ) -> Result<C::Session> {
        let setup = self.begin_session();
        let found = setup.discover(cloud, stopping)?;
        self.open_session(found, cloud)
    }

    /// Begins a session: trusts only the checkpoints and the cloud (what was in flight is
    /// forgotten). Returns what to ask the cloud ([`Setup::discover`], which may take long and
    /// needs nothing of the engine: housekeeping may go on meanwhile); then
    /// [`Engine::open_session`].
    pub fn begin_session(&mut self) -> Setup {
        self.counters.sessions += 1;
        self.session_up = false;
        self.persist();
        // What the trackers knew beyond the checkpoints (in flight, or found in the cloud by
        // the last reconcile) is forgotten below, so the scan offsets just saved must stay
        // until this session's reconcile has found it again: without epochs, `persist`
        // leaves them alone. (A session that ended before its drain passed a reconciled
        // record once moved the scan offset past it, and the next session sent it again.)
        self.epochs.clear();
        for s in &mut self.sources {
            s.dropped = s.dropped();
            s.tracker = Tracker::resume(s.tracker.checkpoint());
            s.drain = s.tracker.checkpoint();
            // A backlog keeps its live-first region across sessions; the tail cursor starts
            // over at its end, and the devices with unsent records are found again from the
            // checkpoint (the drain cursor moved back to it: records that were in flight are
            // backlog again, and a device of theirs must not go live ahead of them).
            if let Some(live) = &mut s.live {
                live.tail = live.region_end;
                live.scan = s.drain;
                live.scanned = false;
                live.backlog.clear();
            }
        }
        self.in_flight = 0;
        self.hb_in_flight = false;
        for j in &mut self.jobs {
            j.session_ended();
        }
        self.stats_base.retries += self.stats_last.retries;
        self.stats_base.disconnects += self.stats_last.disconnects;
        self.stats_last = ProducerStats::default();
        self.housekeeping(None);
        self.enter_live_first();
        self.setup()
    }

    /// Applies what the cloud answered ([`Setup::discover`]: routes, records already there
    /// marked acknowledged) and opens the session's producer.
    pub fn open_session<C: Cloud>(&mut self, found: Found, cloud: &mut C) -> Result<C::Session> {
        self.apply(found);
        let session = cloud.session()?;
        self.session_up = true;
        self.persist();
        info!(bootstrap = %self.cfg.bootstrap, "bridge session started");
        Ok(session)
    }

    /// The session ended (`error`: why, if it failed).
    pub fn end_session(&mut self, error: Option<&Error>) {
        self.session_up = false;
        if error.is_some_and(|e| !matches!(e, Error::RestartRequested | Error::Stopping)) {
            self.counters.errors += 1;
        }
    }

    /// Sends what the window, the bandwidth cap and the live-first rules allow: live tails,
    /// then the drain, then replays. Returns records sent.
    pub fn pump<S: CloudSession>(&mut self, session: &mut S) -> Result<usize> {
        self.refill();
        let mut sent = self.live(session)?;
        sent += self.drain(session)?;
        sent += self.replays(session)?;
        Ok(sent)
    }

    /// Takes delivery reports. A retriable failure ends the session (an error): the next one
    /// reconciles and resends from the checkpoint.
    pub fn on_reports(&mut self, reports: Vec<Report>) -> Result<()> {
        let mut failure = None;
        let mut acked_any = false;
        // The `topic/partition` key of the last report, so a run of reports from one cloud
        // partition formats it once.
        let mut last_hw: Option<((usize, i32), String)> = None;
        for rep in reports {
            self.in_flight = self.in_flight.saturating_sub(1);
            match (rep.tag, rep.result) {
                (Tag::Record { src, offset }, Ok((p, o))) => {
                    let Some(s) = self.sources.get_mut(src) else {
                        continue;
                    };
                    s.tracker.acked(offset);
                    s.acked += 1;
                    self.progress += 1;
                    acked_any = true;
                    let k = (src, p);
                    if last_hw.as_ref().is_none_or(|(lk, _)| *lk != k) {
                        last_hw = Some((k, key(&s.route.cloud_topic, p)));
                    }
                    if let Some((_, name)) = &last_hw {
                        match self.acked_hw.get_mut(name) {
                            Some(hw) if o < *hw => {}
                            Some(hw) => {
                                *hw = o + 1;
                                self.hw_changed = true;
                            }
                            None => {
                                self.acked_hw.insert(name.clone(), o + 1);
                                self.hw_changed = true;
                            }
                        }
                    }
                }
                (Tag::Record { src, offset }, Err(e)) => {
                    let Some(s) = self.sources.get_mut(src) else {
                        continue;
                    };
                    match e {
                        Failure::Permanent(e) => {
                            tracing::error!(topic = %s.topic, partition = s.partition, offset, error = %e, "the cloud refused a record for good; counted as rejected");
                            s.rejected += 1;
                            s.tracker.acked(offset);
                            self.dirty = true;
                        }
                        Failure::Retriable(e) => {
                            s.tracker.failed(offset);
                            self.counters.errors += 1;
                            failure.get_or_insert(e);
                        }
                    }
                }
                (Tag::Replay { slot, offset }, res) => {
                    if let Some(e) = self.replay_report(slot, offset, res) {
                        failure.get_or_insert(e);
                    }
                }
                (Tag::Heartbeat, res) => {
                    self.hb_in_flight = false;
                    match res {
                        Ok(_) => {
                            self.counters.heartbeats += 1;
                            self.progress += 1;
                        }
                        Err(e) => tracing::debug!(error = ?e, "heartbeat not delivered"),
                    }
                }
            }
        }
        let now = self.clock.now();
        if acked_any {
            self.counters.last_ack_ms = self.clock.wall_ms();
            self.dirty = true;
        }
        if self.hw_changed && now.duration_since(self.last_epoch) >= Duration::from_millis(100) {
            self.epoch += 1;
            self.epochs.insert(self.epoch, self.acked_hw.clone());
            self.hw_changed = false;
            self.last_epoch = now;
        }
        match failure {
            Some(e) => Err(Error::Cloud(format!(
                "delivery failed: {e}; resending from the checkpoint after reconciling"
            ))),
            None => Ok(()),
        }
    }

    /// The bridge's state now.
    pub fn snapshot(&self) -> Status {
        let now = self.clock.now();
        let mut st = Status {
            connected: self.session_up
                && (self.in_flight == 0 || self.clock.wall_ms() - self.counters.last_ack_ms < 10_000),
            ..self.counters.clone()
        };
        st.sources = self
            .sources
            .iter()
            .map(|s| {
                let (records, bytes) = unforwarded(s.tracker.checkpoint(), &s.info);
                SourceStatus {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    cloud_topic: s.route.cloud_topic.clone(),
                    checkpoint: s.tracker.checkpoint(),
                    next_offset: s.info.next_offset,
                    backlog_records: records,
                    backlog_bytes: bytes,
                    oldest_age_ms: if records == 0 { 0 } else { s.oldest_age_ms },
                    dropped: s.dropped(),
                    rejected: s.rejected,
                    sent: s.sent,
                    acked: s.acked,
                    live_first: s.live.is_some(),
                    read_error: s.held.as_ref().map(|h| h.error.clone()),
                }
            })
            .collect();
        st.replays = self
            .jobs
            .iter()
            .chain(&self.queued)
            .map(|j| j.status(now))
            .collect();
        st.scan_from = self.state.scan_from.clone();
        st
    }

    /// Saves the checkpoints, drop counts, scan offsets and replay jobs in the edge log.
    pub fn persist(&mut self) {
        for s in &self.sources {
            self.state.sources.insert(
                key(&s.topic, s.partition),
                SourceState {
                    checkpoint: s.tracker.checkpoint(),
                    dropped: s.dropped(),
                    rejected: s.rejected,
                },
            );
        }
        if !self.epochs.is_empty() {
            let min = self.sources.iter().filter_map(|s| s.tracker.min_epoch()).min();
            let snapshot = match min {
                Some(e) => self.epochs.range(..=e).next_back().map(|(_, v)| v.clone()),
                None => Some(self.acked_hw.clone()),
            };
            if let Some(snap) = snapshot {
                for (k, v) in snap {
                    self.state.scan_from.insert(k, v);
                }
            }
            if let Some(e) = min {
                // Older snapshots can never be needed again.
                self.epochs = self.epochs.split_off(&e);
            }
        }
        let now = self.clock.now();
        // Running jobs and those still waiting to run (e.g. restored while the cloud is away).
        self.state.replays = self
            .jobs
            .iter()
            .chain(&self.queued)
            .map(|j| j.to_state(now))
            .collect();
        match self.log.save_state(&self.state.encode()) {
            Ok(()) => self.dirty = false,
            Err(e) => warn!(error = %e, "saving the bridge checkpoints"),
        }
    }

    /// Stops: waits up to `timeout` for what is in flight, then persists.
    pub fn stop<S: CloudSession>(&mut self, session: &mut S, timeout: Duration) {
        let reports = session.flush(timeout);
        let _ = self.on_reports(reports);
        self.persist();
    }
}

/// Records of a partition not yet acknowledged by the cloud, and their bytes still on disk
/// (estimated from the partition's average record size).
pub(crate) fn unforwarded(checkpoint: u64, info: &EdgePartition) -> (u64, u64) {
    let from = checkpoint.max(info.first_offset);
    let records = info.next_offset.saturating_sub(from);
    let bytes = if info.records == 0 {
        0
    } else {
        (info.bytes as u128 * records.min(info.records) as u128 / info.records as u128) as u64
    };
    (records, bytes)
}

#[cfg(test)]
mod tests;
