//! At a session's start: the cloud topics, and what the cloud already holds beyond the
//! checkpoints (so a crash never duplicates).

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::Engine;
use crate::cloud::{Cloud, Created};
use crate::headers;
use crate::state::key;
use crate::Result;

impl Engine {
    /// Creates missing cloud topics with the edge topic's partition count and routes each edge
    /// partition to the cloud partition of the same number where the counts agree (the one
    /// murmur2 would pick for the key: the edge partitions with it too; no hashing per record).
    pub(super) fn ensure_cloud_topics<C: Cloud>(&mut self, cloud: &mut C) -> Result<()> {
        let mut wanted: BTreeMap<String, u32> = BTreeMap::new();
        for s in &self.sources {
            let n = wanted.entry(s.route.cloud_topic.clone()).or_insert(0);
            *n = (*n).max(s.partition + 1);
        }
        wanted.insert(self.cfg.heartbeat_topic.clone(), 1);
        let names: Vec<String> = wanted.keys().cloned().collect();
        let counts = cloud.partition_counts(&names)?;
        // Cloud topics with the edge's partition count: edge partition p goes to cloud p.
        let mut same_count = Vec::new();
        for (topic, parts) in &wanted {
            match counts.get(topic) {
                Some(n) if n == parts => same_count.push(topic.clone()),
                Some(n) if topic != &self.cfg.heartbeat_topic => warn!(
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
        for s in &mut self.sources {
            s.route.partition = same_count
                .contains(&s.route.cloud_topic)
                .then_some(s.partition as i32);
        }
        Ok(())
    }

    /// Reads the cloud tail for this gateway's records beyond the checkpoints.
    pub(super) fn reconcile<C: Cloud>(&mut self, cloud: &mut C, stopping: &dyn Fn() -> bool) -> Result<()> {
        let mut cloud_topics: Vec<String> =
            self.sources.iter().map(|s| s.route.cloud_topic.clone()).collect();
        cloud_topics.sort_unstable();
        cloud_topics.dedup();
        let counts = cloud.partition_counts(&cloud_topics)?;
        let (mut first, mut high) = (BTreeMap::new(), BTreeMap::new());
        let mut ranges = Vec::new();
        for (ct, n) in &counts {
            for p in 0..*n as i32 {
                let (lo, hi) = cloud.watermarks(ct, p)?;
                let k = key(ct, p);
                let start = self.state.scan_from.get(&k).copied().unwrap_or(lo).clamp(lo, hi);
                first.insert(k.clone(), start);
                high.insert(k, hi);
                if start < hi {
                    ranges.push((ct.clone(), p, start, hi));
                }
            }
        }
        let mut present: Vec<Vec<u64>> = vec![Vec::new(); self.sources.len()];
        let (mut scanned, mut found) = (0u64, 0u64);
        let gateway = self.gateway_id.clone();
        let sources: Vec<(&str, u32)> = self
            .sources
            .iter()
            .map(|s| (s.topic.as_str(), s.partition))
            .collect();
        cloud.scan(&ranges, stopping, &mut |m| {
            scanned += 1;
            if m.replay {
                return;
            }
            let Some((gw, topic, part, off)) = m.edge.and_then(headers::parse_edge) else {
                return;
            };
            if gw != gateway {
                return;
            }
            if let Some(src) = sources.iter().position(|&(t, p)| t == topic && p == part) {
                present[src].push(off);
                found += 1;
            }
        })?;
        for (s, p) in self.sources.iter_mut().zip(present) {
            s.tracker.reconcile(p, 0);
            s.drain = s.tracker.checkpoint();
        }
        self.epochs.clear();
        self.epochs.insert(0, first);
        self.epochs.insert(1, high.clone());
        self.epoch = 1;
        self.acked_hw = high;
        self.last_epoch = self.clock.now();
        info!(scanned, already_in_cloud = found, "reconciled with the cloud");
        Ok(())
    }
}
