//! The edge log as the bridge sees it ([`bridge::EdgeLog`] over a [`LogStore`]).
//!
//! Telemetry records carry the reading's boot id and sequence number to the bridge, which
//! sends them as a `reading: <boot>/<seq>` header (decimal), so a cloud consumer can check a
//! device's sequence without decoding values.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bridge::{EdgeLog, EdgePartition, EdgeRecord, EdgeRecordRef, EdgeTopic};
use firmware::wire::ReadingRecord;

use crate::config::TELEMETRY;
use crate::log::LogStore;

/// Meta key of the bridge's state.
const STATE_KEY: &str = "bridge.state";

/// Adapter from the agent's log store to the bridge.
#[derive(Debug)]
pub struct Forwarded {
    /// The log.
    pub store: Arc<dyn LogStore>,
    /// Bumped by the ingest loop after every commit.
    pub appended: Arc<AppendSignal>,
}

/// A counter of commits the bridge can wait on.
#[derive(Debug, Default)]
pub struct AppendSignal {
    n: Mutex<u64>,
    cv: Condvar,
}

impl AppendSignal {
    /// Records a commit and wakes the waiters.
    pub fn bump(&self) {
        *self.n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// Waits until the counter differs from `seen` or `timeout` passes; returns it.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let g = self.n.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |n| *n == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

impl EdgeLog for Forwarded {
    fn topics(&self) -> bridge::Result<Vec<EdgeTopic>> {
        Ok(self
            .store
            .topics()?
            .into_iter()
            .map(|t| EdgeTopic {
                name: t.name,
                partitions: t.partitions,
                compacted: t.compact,
            })
            .collect())
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> bridge::Result<Vec<EdgeRecord>> {
        let telemetry = topic == TELEMETRY;
        Ok(self
            .store
            .read(topic, partition, from, max_records, max_bytes)?
            .into_iter()
            .map(|r| EdgeRecord {
                reading: telemetry
                    .then(|| firmware::wire::decode::<ReadingRecord>(&r.value).ok())
                    .flatten()
                    .map(|rec| (rec.boot_id, rec.seq)),
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers,
            })
            .collect())
    }

    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&EdgeRecordRef<'_>) -> bool,
    ) -> bridge::Result<usize> {
        let telemetry = topic == TELEMETRY;
        Ok(self
            .store
            .read_with(topic, partition, from, max_records, &mut |r| {
                f(&EdgeRecordRef {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                    reading: telemetry
                        .then(|| firmware::wire::decode::<ReadingRecord>(r.value).ok())
                        .flatten()
                        .map(|rec| (rec.boot_id, rec.seq)),
                })
            })?)
    }

    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> bridge::Result<u64> {
        Ok(self.store.scan_keys(topic, partition, from, to, f)?)
    }

    fn wait_for_append(&self, seen: u64, timeout: Duration) -> u64 {
        self.appended.wait(seen, timeout)
    }

    fn partition(&self, topic: &str, partition: u32) -> bridge::Result<EdgePartition> {
        let s = self.store.partition_stats(topic, partition)?;
        Ok(EdgePartition {
            first_offset: s.first_offset,
            next_offset: s.next_offset,
            records: s.records,
            bytes: s.bytes,
        })
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> bridge::Result<u64> {
        Ok(self.store.truncate(topic, partition, below)?.records)
    }

    fn load_state(&self) -> bridge::Result<Option<Vec<u8>>> {
        Ok(self.store.meta(STATE_KEY)?)
    }

    fn save_state(&self, state: &[u8]) -> bridge::Result<()> {
        Ok(self.store.set_meta(STATE_KEY, state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::log::mem::MemLog;
    use bridge::state::{ReplayState, State};
    use bridge::{Bridge, BridgeConfig, ReplayStart};

    fn saved(id: u64, topic: &str, partition: u32) -> ReplayState {
        ReplayState {
            id,
            topic: topic.into(),
            cloud_topic: "renamed-since".into(),
            ranges: vec![(partition, 2, 4, 5)],
            total: 5,
            ..ReplayState::default()
        }
    }

    /// Replay jobs saved in the bridge state come back after a restart, except those whose
    /// topic is no longer forwarded or whose partition no longer exists (they would fail every
    /// session); new jobs are numbered after the saved ones.
    #[test]
    fn saved_replays_resume_unless_their_topic_is_gone() {
        let store: Arc<dyn LogStore> = Arc::new(MemLog::new());
        for spec in Config::default().topic_specs() {
            store.ensure_topic(&spec).unwrap();
        }
        let log = Forwarded {
            store,
            appended: Arc::default(),
        };
        let st = State {
            replays: vec![
                saved(3, TELEMETRY, 0),
                saved(7, "no-such-topic", 0),
                saved(8, TELEMETRY, 999),
            ],
            ..State::default()
        };
        log.save_state(&st.encode()).unwrap();
        let cfg = BridgeConfig {
            bootstrap: "127.0.0.1:1".into(),
            ..BridgeConfig::default()
        };
        let b = Bridge::start(cfg, Arc::new(log), "gw", Vec::new()).unwrap();
        let job = b.replay_status(3).expect("the saved job is back");
        assert!(!job.done);
        assert_eq!((job.total, job.resent), (5, 2), "offsets 2..4 may have been sent");
        assert!(b.replay_status(7).is_none());
        assert!(b.replay_status(8).is_none());
        let new = b.replay(TELEMETRY, Some(0), ReplayStart::Offset(0)).unwrap();
        assert_eq!(new.id, 9);
        b.shutdown();
    }

    /// The bridge's backlog is true when read: a record appended a moment ago counts at
    /// once, not after the bridge's next snapshot. (A stale backlog of 0 once let the demo
    /// report "caught up" with a record not yet in the cloud.)
    #[test]
    fn backlog_counts_a_record_appended_just_now() {
        use crate::log::suite::{one, rec};
        let store: Arc<dyn LogStore> = Arc::new(MemLog::new());
        for spec in Config::default().topic_specs() {
            store.ensure_topic(&spec).unwrap();
        }
        let log = Forwarded {
            store: store.clone(),
            appended: Arc::default(),
        };
        let cfg = BridgeConfig {
            bootstrap: "127.0.0.1:1".into(), // nothing is ever acknowledged
            ..BridgeConfig::default()
        };
        let b = Bridge::start(cfg, Arc::new(log), "gw", Vec::new()).unwrap();
        let backlog = |b: &Bridge| -> (u64, u64) {
            let st = b.status();
            let t = st.sources.iter().filter(|s| s.topic == TELEMETRY);
            t.fold((0, 0), |(r, n), s| (r + s.backlog_records, n + s.next_offset))
        };
        hil_tests::wait::until(Duration::from_secs(10), "the bridge's first status", || {
            (!b.status().sources.is_empty()).then_some(())
        })
        .unwrap();
        for i in 1..=50u64 {
            store
                .append(&one(
                    TELEMETRY,
                    (i % 2) as u32,
                    vec![rec(i as i64, Some("d"), "v")],
                ))
                .unwrap();
            assert_eq!(backlog(&b), (i, i), "after {i} appends");
        }
        let st = b.status();
        assert!(st.sources.iter().all(|s| s.checkpoint == 0));
        for s in st
            .sources
            .iter()
            .filter(|s| s.topic == TELEMETRY && s.partition < 2)
        {
            assert!(s.backlog_records == 25 && s.oldest_age_ms > 0, "{s:?}");
        }
        b.shutdown();
    }
}
