//! Gateways as their heartbeats tell them, sans I/O: online or not, backlog, drops, send
//! rate. Heartbeats may arrive out of order (a replay of the `gateways` topic after a
//! restart): only a newer one replaces what is known.

use std::collections::BTreeMap;

use vocab::heartbeat::{Heartbeat, PartitionBacklog};

/// Most gateways kept.
pub const MAX_GATEWAYS: usize = 10_000;

/// What the registry knows of one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gateway {
    /// Its latest heartbeat.
    pub last: Option<Heartbeat>,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Records forwarded per second between its last two heartbeats (the edge checkpoints'
    /// progress).
    pub send_rate: f64,
}

impl Gateway {
    /// When it last sent a heartbeat (ms since the Unix epoch; 0: never).
    pub fn last_heartbeat_ms(&self) -> i64 {
        self.last.as_ref().map_or(0, |h| h.timestamp_ms)
    }

    /// Online: a heartbeat within `timeout_ms` of `now_ms`.
    pub fn online(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.last.is_some() && now_ms - self.last_heartbeat_ms() <= timeout_ms
    }

    fn partitions(&self) -> &[PartitionBacklog] {
        self.last.as_ref().map_or(&[], |h| &h.partitions)
    }

    /// Records at the edge not yet acknowledged by the cloud, over its partitions.
    pub fn backlog_records(&self) -> u64 {
        self.partitions().iter().map(|p| p.backlog_records).sum()
    }

    /// Their bytes.
    pub fn backlog_bytes(&self) -> u64 {
        self.partitions().iter().map(|p| p.backlog_bytes).sum()
    }

    /// Age of the oldest record not yet acknowledged, ms.
    pub fn oldest_age_ms(&self) -> u64 {
        self.partitions()
            .iter()
            .map(|p| p.oldest_age_ms)
            .max()
            .unwrap_or(0)
    }

    /// Records dropped for a partition's quota.
    pub fn dropped(&self) -> u64 {
        self.partitions().iter().map(|p| p.dropped).sum()
    }

    /// Records the cloud refused for good.
    pub fn rejected(&self) -> u64 {
        self.partitions().iter().map(|p| p.rejected).sum()
    }
}

/// Every gateway heard from, up to [`MAX_GATEWAYS`].
#[derive(Debug, Clone, Default)]
pub struct Gateways {
    /// Gateways by id.
    pub gateways: BTreeMap<String, Gateway>,
    /// Heartbeats of gateways past the bound.
    pub untracked: u64,
}

impl Gateways {
    /// A heartbeat. Its `timestamp_ms` is the gateway's clock: one in the future (by more than
    /// a skew the caller allows for) is clamped to `now_ms`.
    pub fn heartbeat(&mut self, mut hb: Heartbeat, now_ms: i64) {
        hb.timestamp_ms = hb.timestamp_ms.min(now_ms);
        if !self.gateways.contains_key(&hb.gateway_id) && self.gateways.len() >= MAX_GATEWAYS {
            self.untracked += 1;
            return;
        }
        let g = self.gateways.entry(hb.gateway_id.clone()).or_default();
        g.heartbeats += 1;
        let newer = g.last.as_ref().is_none_or(|l| hb.timestamp_ms > l.timestamp_ms);
        if !newer {
            return;
        }
        if let Some(prev) = &g.last {
            let sent = |h: &Heartbeat| h.partitions.iter().map(|p| p.checkpoint).sum::<u64>();
            let dt = hb.timestamp_ms - prev.timestamp_ms;
            // A restarted gateway's checkpoints do not go back; a shrunk sum (a partition
            // gone) gives no rate rather than a negative one.
            g.send_rate = sent(&hb).saturating_sub(sent(prev)) as f64 * 1000.0 / dt as f64;
        }
        g.last = Some(hb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(ts: i64, checkpoint: u64, backlog: u64) -> Heartbeat {
        Heartbeat {
            gateway_id: "gw".into(),
            timestamp_ms: ts,
            uptime_s: 1,
            versions: Default::default(),
            last_ack_ms: ts,
            partitions: vec![
                PartitionBacklog {
                    topic: "telemetry".into(),
                    partition: 0,
                    checkpoint,
                    backlog_records: backlog,
                    backlog_bytes: backlog * 40,
                    oldest_age_ms: 500,
                    dropped: 2,
                    rejected: 0,
                },
                PartitionBacklog {
                    topic: "telemetry".into(),
                    partition: 1,
                    checkpoint,
                    backlog_records: 1,
                    backlog_bytes: 40,
                    oldest_age_ms: 900,
                    dropped: 0,
                    rejected: 1,
                },
            ],
        }
    }

    #[test]
    fn the_latest_heartbeat_wins_and_gives_the_rate_and_backlog() {
        let mut g = Gateways::default();
        g.heartbeat(hb(10_000, 100, 5), 10_000);
        g.heartbeat(hb(15_000, 600, 7), 15_000);
        // A replayed older heartbeat is counted but changes nothing.
        g.heartbeat(hb(12_000, 300, 50), 16_000);
        let gw = &g.gateways["gw"];
        assert_eq!(gw.heartbeats, 3);
        assert_eq!(gw.send_rate, 200.0, "2 x 500 records in 5 s");
        assert_eq!((gw.backlog_records(), gw.backlog_bytes()), (8, 320));
        assert_eq!((gw.oldest_age_ms(), gw.dropped(), gw.rejected()), (900, 2, 1));
        assert!(gw.online(20_000, 5_000));
        assert!(!gw.online(20_001, 5_000));
        // A clock in the future is clamped.
        g.heartbeat(hb(99_000, 600, 0), 21_000);
        assert_eq!(g.gateways["gw"].last_heartbeat_ms(), 21_000);
    }
}
