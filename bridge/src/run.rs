//! The forwarding loop: one thread, one librdkafka producer per session.
//!
//! # A session
//! 1. **Reconcile.** A consumer reads, for every cloud partition of the mapped topics, from the
//!    scan offset saved with the checkpoints to the high watermark, and collects the
//!    `(edge topic, edge partition, edge offset)` headers of this gateway's records. Offsets at
//!    or above a checkpoint found there are marked acknowledged, so a crash never duplicates.
//! 2. **Forward.** Per edge partition a *drain cursor* reads from the checkpoint in offset
//!    order and hands records to the idempotent producer (acks=all, infinite message timeout:
//!    librdkafka retries through outages without reordering), at most `max_in_flight` at a
//!    time. Delivery reports advance each partition's [`Tracker`]; its checkpoint, the drop
//!    counters and the scan offsets are persisted a few times a second.
//! 3. A fatal producer error or a failed delivery ends the session; the next one reconciles
//!    again and resends from the checkpoint, after a capped exponential backoff.
//!
//! # Live first, per-device order kept
//! When a partition is more than `live_first_threshold` records behind (after an outage, or a
//! restart with a backlog), it enters *live-first* mode. The records from the drain cursor
//! to the end of the log at that moment are the backlog; a scan notes, per key (device), the
//! last backlog offset. A *tail cursor* then forwards every newly ingested record at once —
//! unless its device still has unsent records in the backlog, in which case the record waits
//! for the drain cursor (and extends that device's backlog). A device's records therefore
//! reach the cloud in edge-offset order (the same key maps to the same cloud partition and
//! the idempotent producer keeps send order), while devices that are caught up — new devices,
//! devices that were quiet during the outage, and every device once its own backlog is sent —
//! see live latency. The drain uses what the window and the bandwidth cap leave (live data
//! may use the whole window, the drain 90 % of it; live data is always charged to the cap
//! first). A device whose backlog is being drained waits for it: per-device order is the
//! stronger promise.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::checkpoint::Tracker;
use crate::config::BridgeConfig;
use crate::source::{EdgeLog, EdgePartition, EdgeRecordRef};
use crate::state::{key, ReplayState, SourceState, State};
use crate::status::{ReplayStatus, SourceStatus, Status};

/// Header names the bridge adds to every forwarded record.
pub mod headers {
    /// The record's identity at the edge: `<gateway id>/<edge topic>/<edge partition>/<edge
    /// offset>` (one header rather than four: every header costs an allocation in the
    /// producer and ~20 bytes on the wire, per record).
    pub const EDGE: &str = "edge";
    /// A device reading's `<boot id>/<seq>`.
    pub const READING: &str = "reading";
    /// Present on records re-sent by a replay job; the value is the job id.
    pub const REPLAY: &str = "replay";

    /// Splits an [`EDGE`] value into (gateway, topic, partition, offset). Topic names cannot
    /// contain `/`, so a gateway id may.
    pub fn parse_edge(v: &[u8]) -> Option<(&str, &str, u32, u64)> {
        let v = std::str::from_utf8(v).ok()?;
        let mut it = v.rsplitn(4, '/');
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next()?;
        let gateway = it.next()?;
        Some((gateway, topic, partition, offset))
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The linked librdkafka's version, e.g. `2.12.1`.
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStart {
    /// From this edge offset (or the first one still stored).
    Offset(u64),
    /// From the first record at most this many milliseconds old.
    SinceMs(u64),
}

/// What a delivery report is about; travels through librdkafka packed in a `usize`
/// (no allocation per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Record {
        src: usize,
        offset: u64,
    },
    /// `slot`: the replay range's slot (see `Engine::replay_slots`).
    Replay {
        slot: usize,
        offset: u64,
    },
    Heartbeat,
}

const OFFSET_BITS: u32 = 48;
const SRC_BITS: u32 = 14;

impl Tag {
    fn pack(self) -> usize {
        let v: u64 = match self {
            Tag::Record { src, offset } => {
                ((src as u64) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
            }
            Tag::Replay { slot, offset } => {
                (1 << 62) | ((slot as u64) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
            }
            Tag::Heartbeat => 2 << 62,
        };
        v as usize
    }

    fn unpack(v: usize) -> Tag {
        let v = v as u64;
        match v >> 62 {
            0 => Tag::Record {
                src: (v >> OFFSET_BITS) as usize,
                offset: v & ((1 << OFFSET_BITS) - 1),
            },
            1 => Tag::Replay {
                slot: ((v >> OFFSET_BITS) & ((1 << SRC_BITS) - 1)) as usize,
                offset: v & ((1 << OFFSET_BITS) - 1),
            },
            _ => Tag::Heartbeat,
        }
    }
}

/// Decimal digits of `n` in `buf` (header values without an allocation).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[derive(Debug)]
struct Report {
    tag: Tag,
    /// Cloud partition and offset.
    result: Result<(i32, i64), KafkaError>,
}

/// What librdkafka's statistics say about one producer (counters start at 0 per producer).
#[derive(Debug, Default, Clone, Copy)]
struct ProducerStats {
    retries: u64,
    disconnects: u64,
    queued: u64,
}

/// Collects delivery reports (the loop drains them after each `poll`) and statistics.
#[derive(Debug, Default)]
struct Ctx {
    reports: Mutex<Vec<Report>>,
    stats: Mutex<ProducerStats>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        debug!(%error, reason, "librdkafka");
    }

    /// Only the few fields the metrics need, read from librdkafka's statistics JSON.
    fn stats_raw(&self, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            debug!("librdkafka statistics: not JSON");
            return;
        };
        let sum = |field: &str| -> u64 {
            v["brokers"]
                .as_object()
                .map_or(0, |b| b.values().filter_map(|b| b[field].as_u64()).sum())
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = ProducerStats {
            retries: sum("txretries"),
            disconnects: sum("disconnects"),
            queued: v["msg_cnt"].as_u64().unwrap_or(0),
        };
    }
}

/// librdkafka's own error callbacks, at debug level: the bridge reports outages itself
/// (status, metrics, one warning per failed session), not once per broker connection attempt.
#[derive(Debug, Default)]
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        debug!(%error, reason, "librdkafka");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let result = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Report {
                tag: Tag::unpack(tag),
                result,
            });
    }
}

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
    /// edge partitioned it the same way); `None`: librdkafka's murmur2 partitioner picks.
    partition: Option<i32>,
    /// `<gateway>/<topic>/<partition>/`, the start of every `edge` header value.
    prefix: Vec<u8>,
}

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
}

/// One partition's part of a replay job. Its own [`Tracker`] knows what the cloud has
/// acknowledged, so a job survives the end of a session (outage, restart of the producer):
/// it resumes from its checkpoint instead of failing.
#[derive(Debug)]
struct ReplayRange {
    partition: u32,
    /// Next offset to read.
    cursor: u64,
    end: u64,
    /// Offsets below this may have been sent; saved before sending beyond it, so after a
    /// crash `reserved - checkpoint` bounds what the cloud may hold twice.
    reserved: u64,
    tracker: Tracker,
    /// Its slot in `Engine::replay_slots` once the job runs.
    slot: Option<usize>,
}

#[derive(Debug)]
struct Job {
    id: u64,
    topic: String,
    cloud_topic: String,
    ranges: Vec<ReplayRange>,
    total: u64,
    sent: u64,
    acked: u64,
    failed: u64,
    /// Records gone from the edge log before the replay reached them.
    gone: u64,
    /// Records in flight when a session ended, sent again.
    resent: u64,
    started: Instant,
}

impl Job {
    fn to_state(&self) -> ReplayState {
        ReplayState {
            id: self.id,
            topic: self.topic.clone(),
            cloud_topic: self.cloud_topic.clone(),
            ranges: self
                .ranges
                .iter()
                .map(|r| (r.partition, r.tracker.checkpoint(), r.reserved, r.end))
                .collect(),
            total: self.total,
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
            gone: self.gone,
            resent: self.resent,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// A job saved before a restart: it goes on from its checkpoints; what it had sent beyond
    /// them is sent again.
    fn resume(st: &ReplayState) -> Job {
        let again: u64 = st
            .ranges
            .iter()
            .map(|&(_, c, cur, _)| cur.saturating_sub(c))
            .sum();
        Job {
            id: st.id,
            topic: st.topic.clone(),
            cloud_topic: st.cloud_topic.clone(),
            ranges: st
                .ranges
                .iter()
                .map(|&(partition, checkpoint, _, end)| ReplayRange {
                    partition,
                    cursor: checkpoint,
                    end,
                    reserved: checkpoint,
                    tracker: Tracker::resume(checkpoint),
                    slot: None,
                })
                .collect(),
            total: st.total,
            sent: st.sent,
            acked: st.acked,
            failed: st.failed,
            gone: st.gone,
            resent: st.resent + again,
            started: Instant::now()
                .checked_sub(Duration::from_millis(st.elapsed_ms))
                .unwrap_or_else(Instant::now),
        }
    }

    fn done(&self) -> bool {
        self.ranges.iter().all(|r| r.tracker.checkpoint() >= r.end)
    }

    fn status(&self) -> ReplayStatus {
        ReplayStatus {
            id: self.id,
            topic: self.topic.clone(),
            total: self.total.saturating_sub(self.gone),
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
            resent: self.resent,
            done: self.done(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The running bridge, owned by the agent.
#[derive(Debug)]
pub struct Bridge {
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    inbox: Arc<Mutex<Vec<Job>>>,
    next_job: AtomicU64,
    log: Arc<dyn EdgeLog>,
    mapping: Vec<(String, String)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    /// Starts the bridge thread. `versions` go into the heartbeat (e.g. the agent's version).
    pub fn start(
        cfg: BridgeConfig,
        log: Arc<dyn EdgeLog>,
        gateway_id: &str,
        versions: Vec<(String, String)>,
    ) -> anyhow::Result<Bridge> {
        cfg.validate()?;
        let state = match log.load_state()? {
            Some(b) => State::decode(&b).context("the bridge state in the edge log is damaged")?,
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
                        prefix: format!("{gateway_id}/{edge}/{p}/").into_bytes(),
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
                });
            }
        }
        anyhow::ensure!(
            sources.len() < 1 << SRC_BITS,
            "the bridge forwards at most {} partitions",
            (1 << SRC_BITS) - 1
        );
        let status = Arc::new(Mutex::new(Status {
            gateway_id: gateway_id.into(),
            bootstrap: cfg.bootstrap.clone(),
            ..Status::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        // Replay jobs saved before a restart go on where their checkpoints are, to the cloud
        // topic the edge topic maps to now; a job of a topic no longer forwarded (or of
        // partitions it no longer has) ends here.
        let next_job = state.replays.iter().map(|j| j.id + 1).max().unwrap_or(1);
        let mut resumed = Vec::new();
        for saved in &state.replays {
            let mut j = Job::resume(saved);
            let cloud = mapping.iter().find(|(e, _)| *e == j.topic).map(|(_, c)| c);
            let partitions = topics.iter().find(|t| t.name == j.topic).map(|t| t.partitions);
            match (cloud, partitions) {
                (Some(cloud), Some(n)) if j.ranges.iter().all(|r| r.partition < n) => {
                    j.cloud_topic = cloud.clone();
                    if !j.done() {
                        info!(job = j.id, topic = %j.topic, "resuming a replay saved before the restart");
                    }
                    resumed.push(j);
                }
                _ => warn!(
                    job = j.id,
                    topic = %j.topic,
                    "a saved replay's topic is no longer forwarded (or has fewer partitions); dropping the job"
                ),
            }
        }
        let inbox = Arc::new(Mutex::new(resumed));
        let engine = Engine {
            tokens: cfg.max_bytes_per_sec.map_or(0.0, |c| c as f64),
            cfg,
            log: log.clone(),
            gateway_id: gateway_id.into(),
            versions,
            started: Instant::now(),
            sources,
            state,
            epochs: BTreeMap::new(),
            epoch: 0,
            acked_hw: BTreeMap::new(),
            hw_changed: false,
            last_epoch: Instant::now(),
            in_flight: 0,
            refilled: Instant::now(),
            jobs: Vec::new(),
            replay_slots: Vec::new(),
            next_slot: 0,
            inbox: inbox.clone(),
            hb_in_flight: false,
            next_hb: Instant::now(),
            status: status.clone(),
            stop: stop.clone(),
            restart: restart.clone(),
            stats_base: ProducerStats::default(),
            stats_last: ProducerStats::default(),
            dirty: true,
            counters: Status::default(),
            session_up: false,
            append_seen: 0,
            scratch: Vec::new(),
            drain_first: 0,
        };
        let thread = std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || engine.run())?;
        Ok(Bridge {
            status,
            stop,
            restart,
            inbox,
            next_job: AtomicU64::new(next_job),
            log,
            mapping,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bridge's status, true when read: checkpoints and counters as of the bridge's last
    /// snapshot (a few times a second; a checkpoint can only be behind, never ahead), and the
    /// backlog measured against the edge log's end now, so "backlog 0" never hides a record
    /// appended since the snapshot.
    pub fn status(&self) -> Status {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = now_ms();
        for s in &mut st.sources {
            let Ok(info) = self.log.partition(&s.topic, s.partition) else {
                continue; // the snapshot's figures stand
            };
            let (records, bytes) = unforwarded(s.checkpoint, &info);
            if records > 0 && s.oldest_age_ms == 0 {
                // Not in the snapshot's backlog: its age is read now.
                if let Ok(r) = self.log.read(&s.topic, s.partition, s.checkpoint, 1, usize::MAX) {
                    s.oldest_age_ms = r.first().map_or(0, |r| (now - r.timestamp_ms).max(0) as u64);
                }
            }
            if records == 0 {
                s.oldest_age_ms = 0;
            }
            s.next_offset = info.next_offset;
            s.backlog_records = records;
            s.backlog_bytes = bytes;
        }
        st
    }

    /// Queues a replay of `topic` (one partition or all) from `start` to the current end of
    /// the log; records carry a `replay` header. Returns the job's first status.
    pub fn replay(
        &self,
        topic: &str,
        partition: Option<u32>,
        start: ReplayStart,
    ) -> anyhow::Result<ReplayStatus> {
        let (_, cloud_topic) = self
            .mapping
            .iter()
            .find(|(e, _)| e == topic)
            .ok_or_else(|| anyhow::anyhow!("topic {topic:?} is not forwarded to the cloud"))?;
        let t = self
            .log
            .topics()?
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| anyhow::anyhow!("unknown topic {topic:?}"))?;
        let parts: Vec<u32> = match partition {
            Some(p) if p < t.partitions => vec![p],
            Some(p) => anyhow::bail!("topic {topic:?} has partitions 0..{}, not {p}", t.partitions),
            None => (0..t.partitions).collect(),
        };
        let mut ranges = Vec::new();
        let mut total = 0;
        for p in parts {
            let info = self.log.partition(topic, p)?;
            let from = match start {
                ReplayStart::Offset(o) => o.max(info.first_offset),
                ReplayStart::SinceMs(ms) => {
                    offset_at(&*self.log, topic, p, info, now_ms().saturating_sub(ms as i64))?
                }
            };
            let end = info.next_offset;
            total += end.saturating_sub(from);
            ranges.push(ReplayRange {
                partition: p,
                cursor: from,
                end,
                reserved: from,
                tracker: Tracker::resume(from),
                slot: None,
            });
        }
        let job = Job {
            id: self.next_job.fetch_add(1, Ordering::Relaxed),
            topic: topic.into(),
            cloud_topic: cloud_topic.clone(),
            ranges,
            total,
            sent: 0,
            acked: 0,
            failed: 0,
            gone: 0,
            resent: 0,
            started: Instant::now(),
        };
        let status = job.status();
        info!(job = job.id, topic, total, "replay queued");
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).push(job);
        Ok(status)
    }

    /// A replay job's status.
    pub fn replay_status(&self, id: u64) -> Option<ReplayStatus> {
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = inbox.iter().find(|j| j.id == id) {
            return Some(j.status());
        }
        self.status().replays.into_iter().find(|r| r.id == id)
    }

    /// Ends the current session and starts a new one, as after an outage: a new producer
    /// (re-resolving the bootstrap servers), reconciliation with the cloud, and what was in
    /// flight sent again from the checkpoints. For operators after a change on the cloud side.
    pub fn restart_session(&self) {
        self.restart.store(true, Ordering::SeqCst);
    }

    /// Stops: waits up to a few seconds for what is in flight, persists the checkpoints.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Records of a partition not yet acknowledged by the cloud, and their bytes still on disk
/// (estimated from the partition's average record size).
fn unforwarded(checkpoint: u64, info: &EdgePartition) -> (u64, u64) {
    let from = checkpoint.max(info.first_offset);
    let records = info.next_offset.saturating_sub(from);
    let bytes = if info.records == 0 {
        0
    } else {
        (info.bytes as u128 * records.min(info.records) as u128 / info.records as u128) as u64
    };
    (records, bytes)
}

/// The first offset of a partition whose record is at most `ts` old (binary search; edge
/// timestamps are ingest times and rise with offsets).
fn offset_at(log: &dyn EdgeLog, topic: &str, p: u32, info: EdgePartition, ts: i64) -> anyhow::Result<u64> {
    let (mut lo, mut hi) = (info.first_offset, info.next_offset);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match log.read(topic, p, mid, 1, usize::MAX)?.first() {
            Some(r) if r.timestamp_ms < ts => lo = r.offset + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

struct Engine {
    cfg: BridgeConfig,
    log: Arc<dyn EdgeLog>,
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
    /// Records handed to librdkafka, not yet reported (all kinds).
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
    jobs: Vec<Job>,
    /// Replay ranges by the slot their delivery reports carry: (job id, range index).
    replay_slots: Vec<Option<(u64, usize)>>,
    next_slot: usize,
    inbox: Arc<Mutex<Vec<Job>>>,
    hb_in_flight: bool,
    next_hb: Instant,
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    /// An operator asked for a new session.
    restart: Arc<AtomicBool>,
    /// Producer statistics of ended sessions, and the current session's latest.
    stats_base: ProducerStats,
    stats_last: ProducerStats,
    dirty: bool,
    counters: Status,
    session_up: bool,
    /// The edge log's append counter as last seen.
    append_seen: u64,
    /// Reused for building header values.
    scratch: Vec<u8>,
    /// The partition the drain serves first next time.
    drain_first: usize,
}

type KafkaProducer = BaseProducer<Ctx>;

/// Replay offsets reserved (saved as possibly sent) at a time: one small durable write per
/// this many records.
const REPLAY_RESERVE: u64 = 10_000;

/// Ends a session on an operator's request ([`Bridge::restart_session`]); not an error.
#[derive(Debug)]
struct RestartRequested;

impl std::fmt::Display for RestartRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a new session was requested")
    }
}

impl std::error::Error for RestartRequested {}

enum Sent {
    Ok,
    Full,
}

impl Engine {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(mut self) {
        // Forwarding yields the CPU to ingest: on a busy gateway a drain must never slow the
        // Acks devices wait for. librdkafka's threads, created from this one, inherit it.
        // SAFETY: plain syscalls on the calling thread's id.
        let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if niced != 0 {
            debug!("could not lower the bridge thread's priority");
        }
        // What the log holds at start is the backlog; what devices publish from now on is live.
        self.housekeeping(None);
        self.enter_live_first();
        let mut backoff = Duration::from_millis(500);
        while !self.stopping() {
            let acked_before = self.counters.heartbeats + self.sources.iter().map(|s| s.acked).sum::<u64>();
            match self.session() {
                Ok(()) => break,
                Err(e) if e.is::<RestartRequested>() => {
                    self.session_up = false;
                    info!("bridge session ended on request; starting a new one");
                }
                Err(e) => {
                    self.session_up = false;
                    self.counters.errors += 1;
                    let acked_after =
                        self.counters.heartbeats + self.sources.iter().map(|s| s.acked).sum::<u64>();
                    if acked_after > acked_before {
                        backoff = Duration::from_millis(500);
                    }
                    warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "bridge session ended");
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stopping() {
                        self.housekeeping(None);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.persist();
        self.publish_status();
        info!("bridge stopped");
    }

    /// Settings every client shares, then `extra`, then the pass-through (which wins).
    fn config_with(&self, extra: &[(&str, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.bootstrap)
            .set("client.id", format!("edge-bridge-{}", self.gateway_id))
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "10000")
            .set("socket.keepalive.enable", "true")
            .set("log_level", "3");
        for (k, v) in extra {
            c.set(*k, v);
        }
        for (k, v) in &self.cfg.librdkafka {
            c.set(k, v);
        }
        c
    }

    fn client_config(&self) -> ClientConfig {
        self.config_with(&[])
    }

    fn producer(&self) -> anyhow::Result<KafkaProducer> {
        let c = self.config_with(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            // Retry through any outage: idempotence keeps the order, the window bounds memory.
            ("message.timeout.ms", "0".into()),
            ("partitioner", "murmur2_random".into()),
            // Retries and errors for the metrics (parsed on the bridge thread every 5 s).
            ("statistics.interval.ms", "5000".into()),
            ("compression.type", self.cfg.compression.as_str().into()),
            ("linger.ms", self.cfg.linger_ms.to_string()),
            ("batch.num.messages", self.cfg.batch_size.to_string()),
            (
                "queue.buffering.max.messages",
                (self.cfg.max_in_flight + 1_000).min(2_000_000).to_string(),
            ),
        ]);
        c.create_with_context(Ctx::default())
            .context("creating the Kafka producer")
    }

    fn session(&mut self) -> anyhow::Result<()> {
        self.counters.sessions += 1;
        // Whatever happened before, trust only the checkpoints and the cloud.
        self.persist();
        for s in &mut self.sources {
            s.tracker = Tracker::resume(s.tracker.checkpoint());
            s.drain = s.tracker.checkpoint();
            // A backlog keeps its live-first state across sessions (the records in it and
            // their devices do not change); the tail cursor starts over at its end.
            if let Some(live) = &mut s.live {
                live.tail = live.region_end;
            }
        }
        self.in_flight = 0;
        self.hb_in_flight = false;
        for j in &mut self.jobs {
            // Replay records in flight when a session ended may or may not have arrived: the
            // job sends them again from its checkpoint (replays are at-least-once).
            let mut again = 0;
            for r in &mut j.ranges {
                again += r.tracker.forget_in_flight();
                r.cursor = r.tracker.checkpoint();
            }
            if again > 0 {
                warn!(
                    job = j.id,
                    records = again,
                    "replay records in flight when the session ended; sending them again"
                );
                j.resent += again;
            }
        }
        self.stats_base.retries += self.stats_last.retries;
        self.stats_base.disconnects += self.stats_last.disconnects;
        self.stats_last = ProducerStats::default();
        self.housekeeping(None);
        self.enter_live_first();
        self.ensure_cloud_topics()?;
        self.reconcile()?;
        let producer = self.producer()?;
        self.session_up = true;
        self.persist();
        info!(bootstrap = %self.cfg.bootstrap, "bridge session started");
        let mut last_house = Instant::now();
        loop {
            if self.stopping() {
                let _ = producer.flush(Duration::from_secs(5));
                self.reports(&producer)?;
                return Ok(());
            }
            self.refill();
            let mut sent = 0;
            sent += self.live(&producer)?;
            sent += self.drain(&producer)?;
            sent += self.replays(&producer)?;
            if sent > 0 {
                producer.poll(Duration::ZERO);
            } else if self.in_flight > 0 {
                producer.poll(Duration::from_millis(2));
            } else {
                producer.poll(Duration::ZERO);
                self.append_seen = self
                    .log
                    .wait_for_append(self.append_seen, Duration::from_millis(50));
            }
            self.reports(&producer)?;
            if let Some((code, reason)) = producer.client().fatal_error() {
                anyhow::bail!("fatal producer error {code:?}: {reason}");
            }
            if self.restart.swap(false, Ordering::SeqCst) {
                return Err(RestartRequested.into());
            }
            if last_house.elapsed() >= Duration::from_millis(200) {
                last_house = Instant::now();
                self.housekeeping(Some(&producer));
            }
        }
    }

    /// Creates missing cloud topics with the edge topic's partition count and routes each edge
    /// partition to the cloud partition of the same number where the counts agree (the one
    /// murmur2 would pick for the key: the edge partitions with it too; no hashing per record).
    fn ensure_cloud_topics(&mut self) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = self
            .client_config()
            .create()
            .context("creating the Kafka admin client")?;
        let mut wanted: BTreeMap<String, u32> = BTreeMap::new();
        for s in &self.sources {
            let n = wanted.entry(s.route.cloud_topic.clone()).or_insert(0);
            *n = (*n).max(s.partition + 1);
        }
        wanted.insert(self.cfg.heartbeat_topic.clone(), 1);
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .context("cloud metadata")?;
        let mut missing = Vec::new();
        // Cloud topics with the edge's partition count: edge partition p goes to cloud p.
        let mut same_count = Vec::new();
        for (topic, parts) in &wanted {
            match md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
            {
                Some(t) if t.partitions().len() as u32 == *parts => same_count.push(topic.clone()),
                Some(t) if topic != &self.cfg.heartbeat_topic => {
                    warn!(
                        topic = %topic,
                        cloud_partitions = t.partitions().len(),
                        edge_partitions = parts,
                        "cloud topic's partition count differs from the edge's: a device still maps to one cloud partition, just not the same number"
                    )
                }
                Some(_) => {}
                None => missing.push(NewTopic::new(topic, *parts as i32, TopicReplication::Fixed(-1))),
            }
        }
        if !missing.is_empty() {
            self.create_topics(&admin, &missing, &mut same_count)?;
        }
        for s in &mut self.sources {
            s.route.partition = same_count
                .contains(&s.route.cloud_topic)
                .then_some(s.partition as i32);
        }
        Ok(())
    }

    /// Creates `missing`; those made (or made meanwhile by someone else) join `same_count`.
    fn create_topics(
        &self,
        admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
        missing: &[rdkafka::admin::NewTopic<'_>],
        same_count: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        use rdkafka::admin::AdminOptions;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = futures::executor::block_on(admin.create_topics(missing, &opts))
            .context("creating cloud topics")?;
        for r in results {
            match r {
                Ok(t) => {
                    info!(topic = %t, "created cloud topic");
                    same_count.push(t);
                }
                // Made meanwhile, maybe with another count: the next session looks again.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // A cluster that forbids it may still auto-create or have the topic made by hand.
                Err((t, e)) => warn!(topic = %t, error = %e, "could not create cloud topic"),
            }
        }
        Ok(())
    }

    /// Reads the cloud tail for this gateway's records beyond the checkpoints.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let consumer: BaseConsumer<Quiet> = self
            .client_config()
            .set("group.id", format!("edge-bridge-reconcile-{}", self.gateway_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(Quiet)
            .context("creating the reconcile consumer")?;
        let timeout = Duration::from_secs(10);
        let mut cloud_topics: Vec<&str> = self
            .sources
            .iter()
            .map(|s| s.route.cloud_topic.as_str())
            .collect();
        cloud_topics.sort_unstable();
        cloud_topics.dedup();
        let mut tpl = TopicPartitionList::new();
        let mut targets: HashMap<String, i64> = HashMap::new();
        let (mut first, mut high) = (BTreeMap::new(), BTreeMap::new());
        for ct in cloud_topics {
            let md = consumer
                .fetch_metadata(Some(ct), timeout)
                .with_context(|| format!("cloud metadata of {ct}"))?;
            let Some(t) = md.topics().first() else { continue };
            if t.error().is_some() {
                continue; // not there yet: nothing of ours in it
            }
            for p in t.partitions() {
                let (lo, hi) = consumer
                    .fetch_watermarks(ct, p.id(), timeout)
                    .with_context(|| format!("cloud watermarks of {ct}/{}", p.id()))?;
                let k = key(ct, p.id());
                let start = self.state.scan_from.get(&k).copied().unwrap_or(lo).clamp(lo, hi);
                first.insert(k.clone(), start);
                high.insert(k.clone(), hi);
                if start < hi {
                    tpl.add_partition_offset(ct, p.id(), Offset::Offset(start))?;
                    targets.insert(k, hi);
                }
            }
        }
        let mut present: Vec<Vec<u64>> = vec![Vec::new(); self.sources.len()];
        let (mut scanned, mut found) = (0u64, 0u64);
        if !targets.is_empty() {
            consumer.assign(&tpl)?;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !targets.is_empty() {
                anyhow::ensure!(!self.stopping(), "stopping");
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "reconcile did not reach the cloud's end in 300 s"
                );
                let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = m.context("reading the cloud tail")?;
                scanned += 1;
                let k = key(m.topic(), m.partition());
                if targets.get(&k).is_some_and(|&hw| m.offset() + 1 >= hw) {
                    targets.remove(&k);
                }
                if let Some((src, offset)) = self.ours(&m) {
                    present[src].push(offset);
                    found += 1;
                }
            }
        }
        drop(consumer);
        for (s, p) in self.sources.iter_mut().zip(present) {
            s.tracker.reconcile(p, 0);
            s.drain = s.tracker.checkpoint();
        }
        self.epochs.clear();
        self.epochs.insert(0, first);
        self.epochs.insert(1, high.clone());
        self.epoch = 1;
        self.acked_hw = high;
        self.last_epoch = Instant::now();
        info!(scanned, already_in_cloud = found, "reconciled with the cloud");
        Ok(())
    }

    /// `(source index, edge offset)` of a cloud record this gateway forwarded (not a replay).
    fn ours<M: Message>(&self, m: &M) -> Option<(usize, u64)> {
        let h = m.headers()?;
        let (mut edge, mut replay) = (None, false);
        for Header { key, value } in h.iter() {
            match key {
                headers::EDGE => edge = value.and_then(headers::parse_edge),
                headers::REPLAY => replay = true,
                _ => {}
            }
        }
        let (gw, topic, part, off) = edge?;
        if replay || gw != self.gateway_id {
            return None;
        }
        let src = self
            .sources
            .iter()
            .position(|s| s.topic == topic && s.partition == part)?;
        Some((src, off))
    }

    fn refill(&mut self) {
        if let Some(cap) = self.cfg.max_bytes_per_sec {
            let cap = cap as f64;
            let dt = self.refilled.elapsed().as_secs_f64();
            self.refilled = Instant::now();
            self.tokens = (self.tokens + dt * cap).min(cap);
        }
    }

    fn capped(&self) -> bool {
        self.cfg.max_bytes_per_sec.is_some() && self.tokens <= 0.0
    }

    fn send(
        &mut self,
        producer: &KafkaProducer,
        route: &Route,
        tag: Tag,
        r: &EdgeRecordRef<'_>,
        replay: Option<u64>,
    ) -> anyhow::Result<Sent> {
        anyhow::ensure!(
            r.offset < 1 << OFFSET_BITS,
            "edge offset {} beyond 2^48",
            r.offset
        );
        let mut h = OwnedHeaders::new_with_capacity(r.headers.len() + 3);
        let mut bytes = r.value.len() + r.key.map_or(0, <[u8]>::len);
        for (k, v) in r.headers {
            bytes += k.len() + v.len();
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut b = [0u8; 20];
        let mut edge_value = std::mem::take(&mut self.scratch);
        edge_value.clear();
        edge_value.extend_from_slice(&route.prefix);
        edge_value.extend_from_slice(decimal(r.offset, &mut b));
        bytes += headers::EDGE.len() + edge_value.len();
        h = h.insert(Header {
            key: headers::EDGE,
            value: Some(edge_value.as_slice()),
        });
        if let Some((boot, seq)) = r.reading {
            let mut v = [0u8; 41];
            let boot = decimal(u64::from(boot), &mut b);
            let n = boot.len();
            v[..n].copy_from_slice(boot);
            v[n] = b'/';
            let seq = decimal(seq, &mut b);
            v[n + 1..n + 1 + seq.len()].copy_from_slice(seq);
            let v = &v[..n + 1 + seq.len()];
            bytes += headers::READING.len() + v.len();
            h = h.insert(Header {
                key: headers::READING,
                value: Some(v),
            });
        }
        if let Some(j) = replay {
            let v = decimal(j, &mut b);
            bytes += headers::REPLAY.len() + v.len();
            h = h.insert(Header {
                key: headers::REPLAY,
                value: Some(v),
            });
        }
        self.scratch = edge_value;
        let mut rec = BaseRecord::with_opaque_to(&route.cloud_topic, tag.pack())
            .payload(r.value)
            .timestamp(r.timestamp_ms)
            .headers(h);
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        if let Some(p) = route.partition {
            rec = rec.partition(p);
        }
        match producer.send(rec) {
            Ok(()) => {
                self.in_flight += 1;
                self.counters.sent_bytes += bytes as u64;
                if self.cfg.max_bytes_per_sec.is_some() {
                    self.tokens -= bytes as f64;
                }
                Ok(Sent::Ok)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(Sent::Full),
            Err((e, _)) => {
                if let Tag::Record { src, offset } = tag {
                    // Refused locally for good (e.g. larger than message.max.bytes).
                    let s = &mut self.sources[src];
                    error!(topic = %s.topic, partition = s.partition, offset, error = %e, "record refused by the producer; counted as rejected");
                    s.rejected += 1;
                    s.tracker.sent(offset, self.epoch);
                    s.tracker.acked(offset);
                    self.dirty = true;
                    Ok(Sent::Ok)
                } else {
                    Err(anyhow::anyhow!("producing: {e}"))
                }
            }
        }
    }

    /// Tail cursors of partitions in live-first mode.
    fn live(&mut self, producer: &KafkaProducer) -> anyhow::Result<usize> {
        let mut sent = 0;
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            let Some(live) = &mut s.live else { continue };
            if s.drain >= live.tail {
                info!(topic = %s.topic, partition = s.partition, "backlog drained; live-first mode off");
                s.live = None;
                continue;
            }
            if !live.scanned {
                // Keys only, a bounded slice per turn so the loop stays responsive.
                let from = live.scan.max(s.drain);
                let to = live.region_end.min(from.saturating_add(1_000_000));
                let backlog = &mut live.backlog;
                self.log.scan_keys(&s.topic, s.partition, from, to, &mut |o, k| {
                    let k = k.unwrap_or_default();
                    match backlog.get_mut(k) {
                        Some(last) => *last = o,
                        None => {
                            backlog.insert(k.to_vec(), o);
                        }
                    }
                })?;
                live.scan = to;
                live.scanned = to >= live.region_end;
                continue;
            }
            if self.in_flight >= self.cfg.max_in_flight {
                continue;
            }
            let room = self.cfg.max_in_flight - self.in_flight;
            let (topic, route, p) = (s.topic.clone(), s.route.clone(), s.partition);
            let recs = self.log.read(&topic, p, live.tail, room.min(2_000), 4 << 20)?;
            for r in recs {
                let s = &mut self.sources[i];
                let Some(live) = &mut s.live else { break };
                if r.offset < live.tail {
                    continue;
                }
                let k = r.key.clone().unwrap_or_default();
                if live.backlog.get(&k).is_some_and(|&o| o >= s.drain) {
                    live.backlog.insert(k, r.offset);
                } else if s.tracker.needs_send(r.offset) {
                    let tag = Tag::Record {
                        src: i,
                        offset: r.offset,
                    };
                    if let Sent::Full = r.with_ref(|r| self.send(producer, &route, tag, r, None))? {
                        break;
                    }
                    let s = &mut self.sources[i];
                    s.tracker.sent(r.offset, self.epoch);
                    s.sent += 1;
                    sent += 1;
                }
                if let Some(live) = &mut self.sources[i].live {
                    live.tail = r.offset + 1;
                }
            }
        }
        Ok(sent)
    }

    /// Drain cursors, round robin, within the drain window and the bandwidth cap.
    fn drain(&mut self, producer: &KafkaProducer) -> anyhow::Result<usize> {
        let limit = self.drain_limit();
        // Refill in large steps: a read starting inside a chunk decodes the chunk's records
        // before it again, so many small reads cost more than a few big ones.
        let step = (limit / 4).max(1);
        let mut sent = 0;
        let n = self.sources.len();
        // Round robin across calls, so no partition's backlog waits for the others'.
        self.drain_first = (self.drain_first + 1) % n.max(1);
        let first = self.drain_first;
        for i in (0..n).map(|k| (first + k) % n) {
            if self.in_flight + step > limit || self.capped() {
                break;
            }
            let room = limit - self.in_flight;
            let s = &self.sources[i];
            let (topic, route, p, from) = (s.topic.clone(), s.route.clone(), s.partition, s.drain);
            // Records are borrowed from the log's pages and copied once, into the producer.
            let log = self.log.clone();
            let mut first = None;
            let mut failed = None;
            log.read_with(&topic, p, from, room.min(5_000), &mut |r| {
                if first.is_none() {
                    first = Some(r.offset);
                    if r.offset > from {
                        self.skip(i, from, r.offset);
                    }
                }
                if self.sources[i].tracker.needs_send(r.offset) {
                    if self.capped() {
                        return false;
                    }
                    let tag = Tag::Record {
                        src: i,
                        offset: r.offset,
                    };
                    match self.send(producer, &route, tag, r, None) {
                        Ok(Sent::Ok) => {}
                        Ok(Sent::Full) => return false,
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                    let s = &mut self.sources[i];
                    s.tracker.sent(r.offset, self.epoch);
                    s.sent += 1;
                    sent += 1;
                }
                self.sources[i].drain = r.offset + 1;
                true
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            // Nothing at or after `from`: if records were expected, they are gone.
            if first.is_none() && from < self.sources[i].info.next_offset {
                let info = self.log.partition(&topic, p)?;
                let gap_end = info.first_offset.min(info.next_offset);
                if gap_end > from {
                    self.skip(i, from, gap_end);
                }
            }
        }
        Ok(sent)
    }

    /// Offsets `from..to` are gone from the edge log before the drain reached them.
    fn skip(&mut self, i: usize, from: u64, to: u64) {
        let s = &mut self.sources[i];
        let unsent = s.tracker.skip(from, to);
        s.drain = to;
        if unsent > 0 && !s.compacted {
            s.dropped += unsent;
            error!(
                topic = %s.topic,
                partition = s.partition,
                from,
                to,
                records = unsent,
                dropped_total = s.dropped,
                "records removed from the edge log before they reached the cloud (disk quota or retention)"
            );
        }
        self.dirty = true;
    }

    /// In flight at most for backlog and replays: the drain window, and never more than 90 %
    /// of the whole window (the rest is for live data). A short producer queue keeps live
    /// records from waiting behind queued backlog inside librdkafka.
    fn drain_limit(&self) -> usize {
        self.cfg
            .drain_in_flight
            .min(self.cfg.max_in_flight * 9 / 10)
            .max(1)
    }

    /// Frees the replay slots of finished jobs.
    fn free_slots(&mut self) {
        for j in self.jobs.iter_mut().filter(|j| j.done()) {
            for r in &mut j.ranges {
                if let Some(slot) = r.slot.take() {
                    self.replay_slots[slot] = None;
                }
            }
        }
    }

    /// Admits queued replay jobs while range slots are free.
    fn admit_jobs(&mut self) {
        self.free_slots();
        let inbox = self.inbox.clone();
        let mut queued = inbox.lock().unwrap_or_else(|e| e.into_inner());
        if queued.is_empty() {
            return;
        }
        while let Some(mut job) = (!queued.is_empty()).then(|| queued.remove(0)) {
            // Slots are taken round robin, so a freed one is reused as late as possible.
            let n = 1usize << SRC_BITS;
            let free: Vec<usize> = (0..n)
                .map(|k| (self.next_slot + k) % n)
                .filter(|&i| self.replay_slots.get(i).is_none_or(Option::is_none))
                .take(job.ranges.len())
                .collect();
            if let Some(&last) = free.last() {
                self.next_slot = (last + 1) % n;
            }
            if free.len() < job.ranges.len() {
                queued.insert(0, job); // waits for running jobs to finish
                break;
            }
            for (k, (r, slot)) in job.ranges.iter_mut().zip(free).enumerate() {
                if self.replay_slots.len() <= slot {
                    self.replay_slots.resize(slot + 1, None);
                }
                self.replay_slots[slot] = Some((job.id, k));
                r.slot = Some(slot);
            }
            self.jobs.push(job);
            self.dirty = true;
        }
        self.publish_status(); // before the inbox unlocks: the job is always visible
    }

    fn replays(&mut self, producer: &KafkaProducer) -> anyhow::Result<usize> {
        self.admit_jobs();
        let limit = self.drain_limit();
        let mut sent = 0;
        for j in 0..self.jobs.len() {
            for r in 0..self.jobs[j].ranges.len() {
                let rg = &self.jobs[j].ranges[r];
                let (p, cursor, end) = (rg.partition, rg.cursor, rg.end);
                let Some(slot) = rg.slot else { continue };
                if cursor >= end || self.in_flight >= limit || self.capped() {
                    continue;
                }
                let room = (limit - self.in_flight).min(5_000);
                let (id, topic, cloud) = (
                    self.jobs[j].id,
                    self.jobs[j].topic.clone(),
                    self.jobs[j].cloud_topic.clone(),
                );
                let route = match self.sources.iter().find(|s| s.topic == topic && s.partition == p) {
                    Some(s) => s.route.clone(),
                    None => Route {
                        cloud_topic: cloud.clone(),
                        partition: None,
                        prefix: format!("{}/{topic}/{p}/", self.gateway_id).into_bytes(),
                    },
                };
                let recs = self.log.read(&topic, p, cursor, room, 4 << 20)?;
                let exhausted = recs.last().is_none_or(|rec| rec.offset + 1 >= end);
                // Offsets the read stepped over are gone from the log (quota, retention).
                let mut expect = cursor;
                for rec in recs.iter().take_while(|rec| rec.offset < end) {
                    let job = &mut self.jobs[j];
                    if rec.offset > expect {
                        job.gone += job.ranges[r].tracker.skip(expect, rec.offset);
                    }
                    if job.ranges[r].tracker.needs_send(rec.offset) {
                        if rec.offset >= job.ranges[r].reserved {
                            // Save the new bound before anything beyond the old one leaves.
                            job.ranges[r].reserved = (rec.offset + REPLAY_RESERVE).min(end);
                            self.persist();
                        }
                        let tag = Tag::Replay {
                            slot,
                            offset: rec.offset,
                        };
                        if let Sent::Full = rec.with_ref(|x| self.send(producer, &route, tag, x, Some(id)))? {
                            break;
                        }
                        let job = &mut self.jobs[j];
                        job.ranges[r].tracker.sent(rec.offset, 0);
                        job.sent += 1;
                        sent += 1;
                    }
                    expect = rec.offset + 1;
                    self.jobs[j].ranges[r].cursor = expect;
                }
                let job = &mut self.jobs[j];
                if exhausted && job.ranges[r].cursor == expect && expect < end {
                    // Nothing more below `end` in the log.
                    job.gone += job.ranges[r].tracker.skip(expect, end);
                    job.ranges[r].cursor = end;
                }
            }
        }
        Ok(sent)
    }

    fn reports(&mut self, producer: &KafkaProducer) -> anyhow::Result<()> {
        let reports = std::mem::take(
            &mut *producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut failure = None;
        let mut acked_any = false;
        // The `topic/partition` key of the last report, so a run of reports from one cloud
        // partition formats it once.
        let mut last_hw: Option<((usize, i32), String)> = None;
        for rep in reports {
            self.in_flight = self.in_flight.saturating_sub(1);
            match (rep.tag, rep.result) {
                (Tag::Record { src, offset }, Ok((p, o))) => {
                    let s = &mut self.sources[src];
                    s.tracker.acked(offset);
                    s.acked += 1;
                    acked_any = true;
                    let k = (src, p);
                    if last_hw.as_ref().is_none_or(|(lk, _)| *lk != k) {
                        last_hw = Some((k, key(&s.route.cloud_topic, p)));
                    }
                    let hw = match last_hw.as_ref() {
                        Some((_, name)) => self.acked_hw.get_mut(name),
                        None => None,
                    };
                    match hw {
                        Some(hw) if o < *hw => {}
                        Some(hw) => {
                            *hw = o + 1;
                            self.hw_changed = true;
                        }
                        None => {
                            if let Some((_, name)) = &last_hw {
                                self.acked_hw.insert(name.clone(), o + 1);
                                self.hw_changed = true;
                            }
                        }
                    }
                }
                (Tag::Record { src, offset }, Err(e)) => {
                    let s = &mut self.sources[src];
                    if permanent(&e) {
                        error!(topic = %s.topic, partition = s.partition, offset, error = %e, "the cloud refused a record for good; counted as rejected");
                        s.rejected += 1;
                        s.tracker.acked(offset);
                        self.dirty = true;
                    } else {
                        s.tracker.failed(offset);
                        self.counters.errors += 1;
                        failure.get_or_insert(e);
                    }
                }
                (Tag::Replay { slot, offset }, res) => {
                    let Some(&Some((job, k))) = self.replay_slots.get(slot) else {
                        continue;
                    };
                    let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) else {
                        continue;
                    };
                    let r = &mut j.ranges[k];
                    match res {
                        Ok(_) => {
                            r.tracker.acked(offset);
                            j.acked += 1;
                            self.dirty = true;
                        }
                        Err(e) if permanent(&e) => {
                            r.tracker.acked(offset);
                            j.failed += 1;
                        }
                        Err(_) => {
                            // Sent again from here (what is in flight or acknowledged is not).
                            r.tracker.failed(offset);
                            r.cursor = r.cursor.min(offset);
                        }
                    }
                }
                (Tag::Heartbeat, res) => {
                    self.hb_in_flight = false;
                    match res {
                        Ok(_) => self.counters.heartbeats += 1,
                        Err(e) => debug!(error = %e, "heartbeat not delivered"),
                    }
                }
            }
        }
        if acked_any {
            self.counters.last_ack_ms = now_ms();
            self.dirty = true;
        }
        if self.hw_changed && self.last_epoch.elapsed() >= Duration::from_millis(100) {
            self.epoch += 1;
            self.epochs.insert(self.epoch, self.acked_hw.clone());
            self.hw_changed = false;
            self.last_epoch = Instant::now();
        }
        if let Some(e) = failure {
            anyhow::bail!("delivery failed: {e}; resending from the checkpoint after reconciling");
        }
        Ok(())
    }

    /// Stats, quota, persistence, status and heartbeat; runs with or without a session.
    fn housekeeping(&mut self, producer: Option<&KafkaProducer>) {
        let now = now_ms();
        if let Some(p) = producer {
            self.stats_last = *p.context().stats.lock().unwrap_or_else(|e| e.into_inner());
        }
        let (base, last) = (self.stats_base, self.stats_last);
        self.counters.producer_retries = base.retries + last.retries;
        self.counters.producer_disconnects = base.disconnects + last.disconnects;
        self.counters.producer_queued = if producer.is_some() { last.queued } else { 0 };
        let check_age = self.next_hb <= Instant::now() || producer.is_none();
        for s in &mut self.sources {
            match self.log.partition(&s.topic, s.partition) {
                Ok(info) => s.info = info,
                Err(e) => {
                    warn!(topic = %s.topic, partition = s.partition, error = %e, "reading partition stats")
                }
            }
            let cp = s.tracker.checkpoint();
            if check_age {
                s.oldest_age_ms = match self.log.read(&s.topic, s.partition, cp, 1, usize::MAX) {
                    Ok(r) => r.first().map_or(0, |r| (now - r.timestamp_ms).max(0) as u64),
                    Err(_) => s.oldest_age_ms,
                };
            }
        }
        if producer.is_some() {
            self.enter_live_first();
        }
        self.enforce_quota();
        if self.dirty {
            self.persist();
        }
        if let Some(p) = producer {
            if !self.hb_in_flight && self.next_hb <= Instant::now() {
                self.heartbeat(p);
            }
        }
        self.publish_status();
    }

    /// Partitions further behind than the threshold start forwarding live data first; the
    /// backlog is what the log holds now. Called at every session start, before anything is
    /// sent (so what devices publish from then on is live), and as backlogs build up.
    fn enter_live_first(&mut self) {
        for s in &mut self.sources {
            if s.live.is_none() && s.info.next_offset.saturating_sub(s.drain) > self.cfg.live_first_threshold
            {
                info!(topic = %s.topic, partition = s.partition, backlog = s.info.next_offset - s.drain, "backlog: live-first mode on");
                s.live = Some(Live {
                    tail: s.info.next_offset,
                    region_end: s.info.next_offset,
                    scan: s.drain,
                    scanned: false,
                    backlog: HashMap::new(),
                });
            }
        }
    }

    fn unforwarded(s: &Source) -> (u64, u64) {
        unforwarded(s.tracker.checkpoint(), &s.info)
    }

    fn enforce_quota(&mut self) {
        let Some(quota) = self.cfg.backlog_quota_bytes else {
            return;
        };
        for _ in 0..8 {
            let per: Vec<u64> = self
                .sources
                .iter()
                .map(|s| if s.compacted { 0 } else { Self::unforwarded(s).1 })
                .collect();
            let total: u64 = per.iter().sum();
            if total <= quota {
                return;
            }
            let Some((i, _)) = per.iter().enumerate().max_by_key(|(_, b)| **b) else {
                return;
            };
            let s = &self.sources[i];
            let avg = (s.info.bytes / s.info.records.max(1)).max(1);
            let n = (total - quota).div_ceil(avg);
            let below = s.tracker.checkpoint().max(s.info.first_offset) + n;
            match self.log.truncate(&s.topic, s.partition, below) {
                Ok(0) => return, // only a chunk straddling the limit is left
                Ok(removed) => {
                    warn!(topic = %s.topic, partition = s.partition, removed, quota, "backlog over the disk quota: oldest records removed");
                }
                Err(e) => {
                    warn!(error = %e, "enforcing the backlog quota");
                    return;
                }
            }
            let s = &mut self.sources[i];
            if let Ok(info) = self.log.partition(&s.topic, s.partition) {
                s.info = info;
            }
        }
    }

    fn persist(&mut self) {
        for s in &self.sources {
            self.state.sources.insert(
                key(&s.topic, s.partition),
                SourceState {
                    checkpoint: s.tracker.checkpoint(),
                    dropped: s.dropped,
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
        // Running jobs and those still waiting to run (e.g. restored while the cloud is away).
        let queued: Vec<ReplayState> = self
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(Job::to_state)
            .collect();
        self.state.replays = self.jobs.iter().map(Job::to_state).chain(queued).collect();
        match self.log.save_state(&self.state.encode()) {
            Ok(()) => self.dirty = false,
            Err(e) => warn!(error = %e, "saving the bridge checkpoints"),
        }
    }

    fn heartbeat(&mut self, producer: &KafkaProducer) {
        self.next_hb = Instant::now() + Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let status = self.snapshot();
        let body = serde_json::json!({
            "gateway_id": self.gateway_id,
            "timestamp_ms": now_ms(),
            "uptime_s": self.started.elapsed().as_secs(),
            "versions": self.versions.iter().cloned().collect::<BTreeMap<_, _>>(),
            "last_ack_ms": status.last_ack_ms,
            "partitions": status.sources.iter().map(|s| serde_json::json!({
                "topic": s.topic,
                "partition": s.partition,
                "checkpoint": s.checkpoint,
                "backlog_records": s.backlog_records,
                "backlog_bytes": s.backlog_bytes,
                "oldest_age_ms": s.oldest_age_ms,
                "dropped": s.dropped,
                "rejected": s.rejected,
            })).collect::<Vec<_>>(),
        });
        let payload = body.to_string();
        let rec = BaseRecord::with_opaque_to(&self.cfg.heartbeat_topic, Tag::Heartbeat.pack())
            .key(self.gateway_id.as_str())
            .payload(payload.as_str());
        if producer.send(rec).is_ok() {
            self.in_flight += 1;
            self.hb_in_flight = true;
        }
    }

    fn snapshot(&self) -> Status {
        let mut st = Status {
            gateway_id: self.gateway_id.clone(),
            bootstrap: self.cfg.bootstrap.clone(),
            connected: self.session_up
                && (self.in_flight == 0 || now_ms() - self.counters.last_ack_ms < 10_000),
            ..self.counters.clone()
        };
        st.sources = self
            .sources
            .iter()
            .map(|s| {
                let (records, bytes) = Self::unforwarded(s);
                SourceStatus {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    cloud_topic: s.route.cloud_topic.clone(),
                    checkpoint: s.tracker.checkpoint(),
                    next_offset: s.info.next_offset,
                    backlog_records: records,
                    backlog_bytes: bytes,
                    oldest_age_ms: if records == 0 { 0 } else { s.oldest_age_ms },
                    dropped: s.dropped,
                    rejected: s.rejected,
                    sent: s.sent,
                    acked: s.acked,
                    live_first: s.live.is_some(),
                }
            })
            .collect();
        st.replays = self.jobs.iter().map(Job::status).collect();
        st.scan_from = self.state.scan_from.clone();
        st
    }

    fn publish_status(&mut self) {
        self.free_slots();
        let st = self.snapshot();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = st;
        // Finished jobs stay visible for a while, then go.
        self.jobs
            .retain(|j| !(j.status().done && j.started.elapsed() > Duration::from_secs(3600)));
    }
}

/// Errors no retry can fix: the record is counted as rejected.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_survive_packing() {
        for t in [
            Tag::Record { src: 0, offset: 0 },
            Tag::Record {
                src: (1 << SRC_BITS) - 1,
                offset: (1 << OFFSET_BITS) - 1,
            },
            Tag::Record {
                src: 7,
                offset: 123_456_789,
            },
            Tag::Replay { slot: 0, offset: 1 },
            Tag::Replay {
                slot: (1 << SRC_BITS) - 1,
                offset: (1 << OFFSET_BITS) - 1,
            },
            Tag::Heartbeat,
        ] {
            assert_eq!(Tag::unpack(t.pack()), t);
        }
    }

    #[test]
    fn edge_headers_parse_back() {
        assert_eq!(
            headers::parse_edge(b"gw-1/telemetry/3/12345"),
            Some(("gw-1", "telemetry", 3, 12345))
        );
        assert_eq!(
            headers::parse_edge(b"site/a/gw/dead-letter/0/0"),
            Some(("site/a/gw", "dead-letter", 0, 0))
        );
        for bad in [&b""[..], b"gw/t/x/1", b"gw/t/1/-1", b"t/1/2", b"\xff/t/1/2"] {
            assert_eq!(headers::parse_edge(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Header bytes come from the cloud, written by anyone: parsing never panics, and
        /// whatever the bridge writes parses back to itself.
        #[test]
        fn edge_header_parsing_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                        gw in "[a-z0-9/_-]{1,20}", topic in "[a-z._-]{1,20}", p in 0u32..1024, o in 0u64..u64::MAX) {
            let _ = headers::parse_edge(&bytes);
            let v = format!("{gw}/{topic}/{p}/{o}");
            proptest::prop_assert_eq!(headers::parse_edge(v.as_bytes()), Some((gw.as_str(), topic.as_str(), p, o)));
        }
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut b), n.to_string().as_bytes());
        }
    }
}
