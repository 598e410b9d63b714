//! The gateway heartbeat the bridge sends to the [`GATEWAYS`](crate::topics::GATEWAYS) topic
//! (as JSON, key = gateway id), every few seconds while it runs.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The gateway.
    pub gateway_id: String,
    /// When it was sent, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Seconds since the edge agent started.
    pub uptime_s: u64,
    /// Component versions (`edge-agent`, `librdkafka`).
    pub versions: BTreeMap<String, String>,
    /// When the cloud last acknowledged a forwarded record, ms since the Unix epoch (0: never).
    pub last_ack_ms: i64,
    /// Each edge partition the bridge forwards.
    pub partitions: Vec<PartitionBacklog>,
}

/// Where one edge partition stands against the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionBacklog {
    /// Edge topic.
    pub topic: String,
    /// Edge partition.
    pub partition: u32,
    /// The next edge offset to forward (everything below is acknowledged by the cloud).
    pub checkpoint: u64,
    /// Records at the edge not yet acknowledged by the cloud.
    pub backlog_records: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Age of the oldest of them, ms (0: none).
    pub oldest_age_ms: u64,
    /// Records dropped for the partition's quota.
    pub dropped: u64,
    /// Records the cloud refused for good.
    pub rejected: u64,
}
