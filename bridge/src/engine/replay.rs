//! Replay jobs: a range of the edge log sent again, marked with the job's id. Each partition
//! range keeps its own [`Tracker`], so a job survives the end of a session (it resumes from
//! its checkpoint) and, saved with the bridge state, a restart of the agent.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Engine, Route};
use crate::checkpoint::Tracker;
use crate::cloud::{CloudSession, Failure, Sent, Tag, SRC_BITS};
use crate::source::{EdgeLog, EdgePartition};
use crate::state::ReplayState;
use crate::status::ReplayStatus;
use crate::{Error, Result};

/// Replay offsets reserved (saved as possibly sent) at a time: one small durable write per
/// this many records.
const REPLAY_RESERVE: u64 = 10_000;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStart {
    /// From this edge offset (or the first one still stored).
    Offset(u64),
    /// From the first record at most this many milliseconds old.
    SinceMs(u64),
}

/// One partition's part of a replay job.
#[derive(Debug)]
pub(super) struct ReplayRange {
    pub(super) partition: u32,
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

impl ReplayRange {
    fn new(partition: u32, from: u64, end: u64) -> ReplayRange {
        ReplayRange {
            partition,
            cursor: from,
            end,
            reserved: from,
            tracker: Tracker::resume(from),
            slot: None,
        }
    }
}

/// A replay job.
#[derive(Debug)]
pub struct Job {
    pub(super) id: u64,
    pub(super) topic: String,
    pub(super) cloud_topic: String,
    pub(super) ranges: Vec<ReplayRange>,
    total: u64,
    sent: u64,
    acked: u64,
    failed: u64,
    /// Records gone from the edge log before the replay had them in the cloud, counted
    /// before the ranges' trackers began (see [`Job::gone`]).
    gone: u64,
    /// Records in flight when a session ended, sent again.
    resent: u64,
    pub(super) started: Instant,
}

impl Job {
    /// A job `id` replaying `topic` (one partition or all) from `start` to the log's end now,
    /// to `cloud_topic`.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        log: &dyn EdgeLog,
        id: u64,
        topic: &str,
        cloud_topic: &str,
        partition: Option<u32>,
        start: ReplayStart,
        now: Instant,
        now_ms: i64,
    ) -> Result<Job> {
        let t = log
            .topics()?
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| Error::Request(format!("unknown topic {topic:?}")))?;
        let parts: Vec<u32> = match partition {
            Some(p) if p < t.partitions => vec![p],
            Some(p) => {
                return Err(Error::Request(format!(
                    "topic {topic:?} has partitions 0..{}, not {p}",
                    t.partitions
                )))
            }
            None => (0..t.partitions).collect(),
        };
        let mut ranges = Vec::new();
        let mut total = 0;
        for p in parts {
            let info = log.partition(topic, p)?;
            let from = match start {
                ReplayStart::Offset(o) => o.max(info.first_offset),
                ReplayStart::SinceMs(ms) => offset_at(log, topic, p, info, now_ms.saturating_sub(ms as i64))?,
            };
            let end = info.next_offset;
            total += end.saturating_sub(from);
            ranges.push(ReplayRange::new(p, from, end));
        }
        info!(job = id, topic, total, "replay queued");
        Ok(Job {
            id,
            topic: topic.into(),
            cloud_topic: cloud_topic.into(),
            ranges,
            total,
            sent: 0,
            acked: 0,
            failed: 0,
            gone: 0,
            resent: 0,
            started: now,
        })
    }

    /// The job's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records gone from the edge log before the replay had them in the cloud.
    fn gone(&self) -> u64 {
        self.gone + self.ranges.iter().map(|r| r.tracker.dropped()).sum::<u64>()
    }

    pub(super) fn to_state(&self, now: Instant) -> ReplayState {
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
            gone: self.gone(),
            resent: self.resent,
            elapsed_ms: now.duration_since(self.started).as_millis() as u64,
        }
    }

    /// A job saved before a restart: it goes on from its checkpoints; what it had sent beyond
    /// them is sent again.
    pub(super) fn resume(st: &ReplayState, now: Instant) -> Job {
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
                .map(|&(partition, checkpoint, _, end)| ReplayRange::new(partition, checkpoint, end))
                .collect(),
            total: st.total,
            sent: st.sent,
            acked: st.acked,
            failed: st.failed,
            gone: st.gone,
            resent: st.resent + again,
            started: now
                .checked_sub(Duration::from_millis(st.elapsed_ms))
                .unwrap_or(now),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.ranges.iter().all(|r| r.tracker.checkpoint() >= r.end)
    }

    /// The job's status at `now`.
    pub fn status(&self, now: Instant) -> ReplayStatus {
        ReplayStatus {
            id: self.id,
            topic: self.topic.clone(),
            total: self.total.saturating_sub(self.gone()),
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
            resent: self.resent,
            done: self.done(),
            elapsed_s: now.duration_since(self.started).as_secs_f64(),
        }
    }

    /// Records in flight when a session ended may or may not have arrived: the job sends them
    /// again from its checkpoint (replays are at-least-once).
    pub(super) fn session_ended(&mut self) {
        let mut again = 0;
        for r in &mut self.ranges {
            again += r.tracker.forget_in_flight();
            r.cursor = r.tracker.checkpoint();
        }
        if again > 0 {
            warn!(
                job = self.id,
                records = again,
                "replay records in flight when the session ended; sending them again"
            );
            self.resent += again;
        }
    }
}

/// The first offset of a partition whose record is at most `ts` old (binary search; edge
/// timestamps are ingest times and rise with offsets).
fn offset_at(log: &dyn EdgeLog, topic: &str, p: u32, info: EdgePartition, ts: i64) -> Result<u64> {
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

impl Engine {
    /// Frees the replay slots of finished jobs.
    pub(super) fn free_slots(&mut self) {
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
        if self.queued.is_empty() {
            return;
        }
        self.free_slots();
        while !self.queued.is_empty() {
            let wanted = self.queued[0].ranges.len();
            // Slots are taken round robin, so a freed one is reused as late as possible.
            let n = 1usize << SRC_BITS;
            let free: Vec<usize> = (0..n)
                .map(|k| (self.next_slot + k) % n)
                .filter(|&i| self.replay_slots.get(i).is_none_or(Option::is_none))
                .take(wanted)
                .collect();
            if free.len() < wanted {
                break; // waits for running jobs to finish
            }
            if let Some(&last) = free.last() {
                self.next_slot = (last + 1) % n;
            }
            let mut job = self.queued.remove(0);
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
    }

    pub(super) fn replays<S: CloudSession>(&mut self, session: &mut S) -> Result<usize> {
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
                        prefix: crate::headers::edge_prefix(&self.gateway_id, &topic, p).into_bytes(),
                        reading: topic == vocab::topics::TELEMETRY,
                    },
                };
                let src = self
                    .sources
                    .iter()
                    .position(|s| s.topic == topic && s.partition == p);
                if src.is_some_and(|i| self.held(i)) {
                    continue;
                }
                let recs = match self.log.read(&topic, p, cursor, room, 4 << 20) {
                    Ok(r) => r,
                    // Held back like the partition's own forwarding; the job waits.
                    Err(e) => {
                        match src {
                            Some(i) => self.read_failed(i, &e),
                            None => {
                                warn!(job = id, topic = %topic, partition = p, error = %e, "replay read failed; retried")
                            }
                        }
                        continue;
                    }
                };
                let exhausted = recs.last().is_none_or(|rec| rec.offset + 1 >= end);
                // Offsets the read stepped over are gone from the log (quota, retention).
                let mut expect = cursor;
                let mut full = false;
                for rec in recs.iter().take_while(|rec| rec.offset < end) {
                    let job = &mut self.jobs[j];
                    if rec.offset > expect {
                        job.ranges[r].tracker.skip(expect, rec.offset);
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
                        match rec.with_ref(|x| self.send(session, &route, tag, x, Some(id)))? {
                            Sent::Full => {
                                full = true;
                                break;
                            }
                            Sent::Refused(_) => {}
                            Sent::Ok => {
                                let job = &mut self.jobs[j];
                                job.ranges[r].tracker.sent(rec.offset, 0);
                                job.sent += 1;
                                sent += 1;
                            }
                        }
                    }
                    expect = rec.offset + 1;
                    self.jobs[j].ranges[r].cursor = expect;
                }
                let job = &mut self.jobs[j];
                if exhausted && !full && job.ranges[r].cursor == expect && expect < end {
                    // Nothing more below `end` in the log. (Not so when the producer was
                    // full: the records from `expect` on are there, just not sent yet.)
                    job.ranges[r].tracker.skip(expect, end);
                    job.ranges[r].cursor = end;
                }
            }
        }
        Ok(sent)
    }

    /// A replay record's delivery report; a retriable failure is returned (it ends the
    /// session, as for any record: the producer's order in that partition is broken).
    pub(super) fn replay_report(
        &mut self,
        slot: usize,
        offset: u64,
        res: std::result::Result<(i32, i64), Failure>,
    ) -> Option<String> {
        let (job, k) = (*self.replay_slots.get(slot)?)?;
        let j = self.jobs.iter_mut().find(|j| j.id == job)?;
        let r = &mut j.ranges[k];
        match res {
            Ok(_) => {
                r.tracker.acked(offset);
                j.acked += 1;
                self.dirty = true;
            }
            Err(Failure::Permanent(_)) => {
                r.tracker.acked(offset);
                j.failed += 1;
            }
            Err(Failure::Retriable(e)) => {
                // Sent again from here (what is in flight or acknowledged is not).
                r.tracker.failed(offset);
                r.cursor = r.cursor.min(offset);
                return Some(e);
            }
        }
        None
    }
}
