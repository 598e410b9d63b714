//! What runs a few times a second, with or without a session: partition figures, the disk
//! quota, persistence, the heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use super::{unforwarded, Engine};

/// At most one log line per this while the quota removes records.
const QUOTA_LOG_INTERVAL: Duration = Duration::from_secs(10);
use crate::cloud::{CloudSession, OutRecord, Sent, Tag};

impl Engine {
    /// Stats, quota, persistence and heartbeat.
    pub fn housekeeping(&mut self, session: Option<&mut dyn CloudSession>) {
        let now_ms = self.clock.wall_ms();
        let now = self.clock.now();
        if let Some(s) = &session {
            self.stats_last = s.stats();
        }
        let (base, last) = (self.stats_base, self.stats_last);
        self.counters.producer_retries = base.retries + last.retries;
        self.counters.producer_disconnects = base.disconnects + last.disconnects;
        self.counters.producer_queued = if session.is_some() { last.queued } else { 0 };
        let check_age = self.next_hb <= now || session.is_none();
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
                    Ok(r) => r.first().map_or(0, |r| (now_ms - r.timestamp_ms).max(0) as u64),
                    Err(_) => s.oldest_age_ms,
                };
            }
        }
        if session.is_some() {
            self.enter_live_first();
        }
        self.enforce_quota();
        if self.quota_removed > 0
            && self
                .quota_logged
                .is_none_or(|t| now.duration_since(t) >= QUOTA_LOG_INTERVAL)
        {
            warn!(
                removed = self.quota_removed,
                quota = self.cfg.backlog_quota_bytes.unwrap_or(0),
                "backlog over the disk quota: oldest unforwarded records removed (counted as dropped per partition)"
            );
            self.quota_removed = 0;
            self.quota_logged = Some(now);
        }
        if self.dirty {
            self.persist();
        }
        if let Some(s) = session {
            if !self.hb_in_flight && self.next_hb <= now {
                self.heartbeat(s);
            }
        }
        // Finished jobs stay visible for a while, then go.
        self.free_slots();
        self.jobs
            .retain(|j| !(j.done() && now.duration_since(j.started) > Duration::from_secs(3600)));
    }

    /// Removes the oldest unforwarded records while the backlog is over the disk quota: whole
    /// chunks, so a little more than the excess may go, never less (the quota is a bound).
    fn enforce_quota(&mut self) {
        let Some(quota) = self.cfg.backlog_quota_bytes else {
            return;
        };
        // The excess in records, from the largest partition's average record size; doubled
        // when only a chunk straddling the limit stood in the way.
        let mut widen = 1;
        for _ in 0..64 {
            let per: Vec<u64> = self
                .sources
                .iter()
                .map(|s| {
                    if s.compacted {
                        0
                    } else {
                        unforwarded(s.tracker.checkpoint(), &s.info).1
                    }
                })
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
            let n = (total - quota).div_ceil(avg).saturating_mul(widen);
            let below = (s.tracker.checkpoint().max(s.info.first_offset) + n).min(s.info.next_offset);
            match self.log.truncate(&s.topic, s.partition, below) {
                Ok(0) if below >= s.info.next_offset => return, // nothing left to remove
                Ok(0) => {
                    widen = widen.saturating_mul(2);
                    continue;
                }
                Ok(removed) => {
                    widen = 1;
                    self.quota_removed += removed;
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

    /// Publishes the gateway's heartbeat (a JSON value keyed by the gateway id).
    fn heartbeat(&mut self, session: &mut dyn CloudSession) {
        let now = self.clock.now();
        self.next_hb = now + Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let status = self.snapshot();
        let body = vocab::heartbeat::Heartbeat {
            gateway_id: self.gateway_id.clone(),
            timestamp_ms: self.clock.wall_ms(),
            uptime_s: now.duration_since(self.started).as_secs(),
            versions: self.versions.iter().cloned().collect::<BTreeMap<_, _>>(),
            last_ack_ms: status.last_ack_ms,
            partitions: status
                .sources
                .iter()
                .map(|s| vocab::heartbeat::PartitionBacklog {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    checkpoint: s.checkpoint,
                    backlog_records: s.backlog_records,
                    backlog_bytes: s.backlog_bytes,
                    oldest_age_ms: s.oldest_age_ms,
                    dropped: s.dropped,
                    rejected: s.rejected,
                })
                .collect(),
        };
        let payload = serde_json::to_string(&body).unwrap_or_default();
        let rec = OutRecord {
            topic: &self.cfg.heartbeat_topic,
            partition: None,
            key: Some(self.gateway_id.as_bytes()),
            value: payload.as_bytes(),
            timestamp_ms: None,
            headers: &[],
            edge: None,
            reading: None,
            replay: None,
        };
        if session.send(&rec, Tag::Heartbeat) == Sent::Ok {
            self.in_flight += 1;
            self.hb_in_flight = true;
        }
    }
}
