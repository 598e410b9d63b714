//! The edge log as the bridge sees it ([`bridge::EdgeLog`] over a [`LogStore`]).
//!
//! Telemetry records carry the reading's boot id and sequence number to the bridge, which
//! sends them as `boot` and `seq` headers (decimal), so a cloud consumer can check a device's
//! sequence without decoding values.

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
    fn topics(&self) -> anyhow::Result<Vec<EdgeTopic>> {
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
    ) -> anyhow::Result<Vec<EdgeRecord>> {
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
    ) -> anyhow::Result<usize> {
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
    ) -> anyhow::Result<u64> {
        Ok(self.store.scan_keys(topic, partition, from, to, f)?)
    }

    fn wait_for_append(&self, seen: u64, timeout: Duration) -> u64 {
        self.appended.wait(seen, timeout)
    }

    fn partition(&self, topic: &str, partition: u32) -> anyhow::Result<EdgePartition> {
        let s = self.store.partition_stats(topic, partition)?;
        Ok(EdgePartition {
            first_offset: s.first_offset,
            next_offset: s.next_offset,
            records: s.records,
            bytes: s.bytes,
        })
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> anyhow::Result<u64> {
        Ok(self.store.truncate(topic, partition, below)?.records)
    }

    fn load_state(&self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.store.meta(STATE_KEY)?)
    }

    fn save_state(&self, state: &[u8]) -> anyhow::Result<()> {
        Ok(self.store.set_meta(STATE_KEY, state)?)
    }
}
