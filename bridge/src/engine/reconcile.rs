//! At a session's start: the cloud topics, and what the cloud already holds beyond the
//! checkpoints (so a crash never duplicates).
//!
//! The cloud's answers can take long (a cut link makes every request wait out its timeout,
//! and a scan reads what the cloud holds), so the work is split: the engine writes down what
//! it needs to know ([`Setup`], plain data), [`Setup::discover`] asks the cloud without
//! touching the engine (the shell runs it on a helper thread while the engine keeps the disk
//! quota and the status figures going), and [`Engine::open_session`] applies the answers.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::Engine;
use crate::cloud::{Cloud, Created};
use crate::headers;
use crate::state::key;
use crate::Result;

/// What a session's start asks the cloud, taken from the engine.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Cloud topic → the partition count it should have (the edge topic's; 1 for heartbeats).
    wanted: BTreeMap<String, u32>,
    heartbeat_topic: String,
    /// `topic/partition` → where the last reconcile's scan ended.
    scan_from: BTreeMap<String, i64>,
    gateway_id: String,
    /// Per engine source: (edge topic, edge partition, cloud topic).
    sources: Vec<(String, u32, String)>,
}

/// What the cloud answered.
#[derive(Debug)]
pub struct Found {
    /// Cloud topics with the edge's partition count (edge partition p goes to cloud p).
    same_count: Vec<String>,
    /// Per cloud partition: where the scan began, and the high watermark.
    first: BTreeMap<String, i64>,
    high: BTreeMap<String, i64>,
    /// Per source: edge offsets of this gateway's records found in the cloud.
    present: Vec<Vec<u64>>,
}

impl Engine {
    /// What the session's start must ask the cloud.
    pub(super) fn setup(&self) -> Setup {
        let mut wanted: BTreeMap<String, u32> = BTreeMap::new();
        for s in &self.sources {
            let n = wanted.entry(s.route.cloud_topic.clone()).or_insert(0);
            *n = (*n).max(s.partition + 1);
        }
        wanted.insert(self.cfg.heartbeat_topic.clone(), 1);
        Setup {
            wanted,
            heartbeat_topic: self.cfg.heartbeat_topic.clone(),
            scan_from: self.state.scan_from.clone(),
            gateway_id: self.gateway_id.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| (s.topic.clone(), s.partition, s.route.cloud_topic.clone()))
                .collect(),
        }
    }

    /// Applies what [`Setup::discover`] found: routes, and the records already in the cloud
    /// marked acknowledged.
    pub(super) fn apply(&mut self, found: Found) {
        for s in &mut self.sources {
            s.route.partition = found
                .same_count
                .contains(&s.route.cloud_topic)
                .then_some(s.partition as i32);
        }
        for (s, p) in self.sources.iter_mut().zip(found.present) {
            s.tracker.reconcile(p, 0);
            s.drain = s.tracker.checkpoint();
        }
        self.epochs.clear();
        self.epochs.insert(0, found.first);
        self.epochs.insert(1, found.high.clone());
        self.epoch = 1;
        self.acked_hw = found.high;
        self.last_epoch = self.clock.now();
    }
}

impl Setup {
    /// Makes the missing cloud topics, then reads the cloud tail for this gateway's records
    /// beyond the checkpoints. Touches only the cloud; `stopping` ends the scan early.
    pub fn discover<C: Cloud>(&self, cloud: &mut C, stopping: &dyn Fn() -> bool) -> Result<Found> {
        let same_count = self.ensure_cloud_topics(cloud)?;
        let (first, high, present) = self.reconcile(cloud, stopping)?;
        Ok(Found {
            same_count,
            first,
            high,
            present,
        })
    }

    /// Creates missing cloud topics with the edge topic's partition count; returns those
    /// that have it (the partition murmur2 would pick for a record's key is then the edge
    /// partition's number: the edge partitions with it too; no hashing per record).
    fn ensure_cloud_topics<C: Cloud>(&self, cloud: &mut C) -> Result<Vec<String>> {
        let names: Vec<String> = self.wanted.keys().cloned().collect();
        let counts = cloud.partition_counts(&names)?;
        let mut same_count = Vec::new();
        for (topic, parts) in &self.wanted {
            match counts.get(topic) {
                Some(n) if n == parts => same_count.push(topic.clone()),
                Some(n) if topic != &self.heartbeat_topic => warn!(
                    topic = %topic,
                    cloud_partitions = n,
                    edge_partitions = parts,
                    "cloud topic's partition count differs from the edge's: a device still maps to one cloud partition, just not the same number"
                ),
                Some(_) => {}
                None => match cloud.create_topic(topic, *parts)? {
                    Created::Yes => {
                        info!(topic = %topic, "created cloud topic");
                        same_count.push(topic.clone());
                    }
                    // Made meanwhile, maybe with another count: the next session looks again.
                    Created::Exists => {}
                    // A cluster that forbids it may still auto-create or have the topic made by hand.
                    Created::Refused(e) => warn!(topic = %topic, error = %e, "could not create cloud topic"),
                },
            }
        }
        Ok(same_count)
    }

    /// Reads the cloud tail for this gateway's records beyond the checkpoints.
    #[allow(clippy::type_complexity)]
    fn reconcile<C: Cloud>(
        &self,
        cloud: &mut C,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(BTreeMap<String, i64>, BTreeMap<String, i64>, Vec<Vec<u64>>)> {
        let mut cloud_topics: Vec<String> = self.sources.iter().map(|s| s.2.clone()).collect();
        cloud_topics.sort_unstable();
        cloud_topics.dedup();
        let counts = cloud.partition_counts(&cloud_topics)?;
        let (mut first, mut high) = (BTreeMap::new(), BTreeMap::new());
        let mut ranges = Vec::new();
        for (ct, n) in &counts {
            for p in 0..*n as i32 {
                let (lo, hi) = cloud.watermarks(ct, p)?;
                let k = key(ct, p);
                let start = self.scan_from.get(&k).copied().unwrap_or(lo).clamp(lo, hi);
                first.insert(k.clone(), start);
                high.insert(k, hi);
                if start < hi {
                    ranges.push((ct.clone(), p, start, hi));
                }
            }
        }
        let mut present: Vec<Vec<u64>> = vec![Vec::new(); self.sources.len()];
        let (mut scanned, mut found) = (0u64, 0u64);
        cloud.scan(&ranges, stopping, &mut |m| {
            scanned += 1;
            if m.replay {
                return;
            }
            let Some((gw, topic, part, off)) = m.edge.and_then(headers::parse_edge) else {
                return;
            };
            if gw != self.gateway_id {
                return;
            }
            if let Some(src) = self.sources.iter().position(|(t, p, _)| t == topic && *p == part) {
                present[src].push(off);
                found += 1;
            }
        })?;
        info!(scanned, already_in_cloud = found, "reconciled with the cloud");
        Ok((first, high, present))
    }
}
