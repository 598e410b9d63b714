//! The bridge's durable state, one small JSON value in the edge log's metadata, written in
//! its own durable transaction a few times a second while records are acknowledged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Durable per-partition state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// Every edge offset below this is in the cloud (or was dropped and counted).
    pub checkpoint: u64,
    /// Records removed from the edge log before they were forwarded (quota, retention).
    pub dropped: u64,
    /// Records the cloud refused for good (e.g. larger than its message size limit).
    pub rejected: u64,
}

/// A replay job, so it outlives a restart of the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayState {
    /// Job id.
    pub id: u64,
    /// Edge topic.
    pub topic: String,
    /// Cloud topic.
    pub cloud_topic: String,
    /// Per partition: (partition, checkpoint, reserved, end). Offsets from the checkpoint on
    /// are sent (again) after a restart; those below `reserved` may have been sent before.
    pub ranges: Vec<(u32, u64, u64, u64)>,
    /// Counters of the job's status.
    pub total: u64,
    /// Records sent.
    pub sent: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records refused for good.
    pub failed: u64,
    /// Records gone from the log before the replay reached them.
    pub gone: u64,
    /// Records sent again after a new session or a restart.
    pub resent: u64,
    /// Milliseconds the job had run.
    pub elapsed_ms: u64,
}

/// Everything the bridge persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Per edge `topic/partition`.
    pub sources: BTreeMap<String, SourceState>,
    /// Per cloud `topic/partition`: where a reconciliation scan must start so that it sees
    /// every record of this gateway beyond the checkpoints.
    pub scan_from: BTreeMap<String, i64>,
    /// Replay jobs, running or finished within the last hour.
    #[serde(default)]
    pub replays: Vec<ReplayState>,
}

impl State {
    /// Decodes stored bytes; damaged state is an error (the caller refuses to guess).
    pub fn decode(bytes: &[u8]) -> crate::Result<State> {
        let s: State = serde_json::from_slice(bytes).map_err(|e| crate::Error::State(e.to_string()))?;
        if s.version != 1 {
            return Err(crate::Error::State(format!(
                "unknown bridge state version {}",
                s.version
            )));
        }
        Ok(s)
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&State {
            version: 1,
            ..self.clone()
        })
        .unwrap_or_default()
    }
}

/// `topic/partition`, the key of both maps.
pub fn key(topic: &str, partition: impl std::fmt::Display) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let mut s = State::default();
        s.sources.insert(
            key("telemetry", 3),
            SourceState {
                checkpoint: 7,
                dropped: 2,
                rejected: 0,
            },
        );
        s.scan_from.insert(key("telemetry", 1), 99);
        s.replays.push(ReplayState {
            id: 4,
            topic: "telemetry".into(),
            cloud_topic: "telemetry".into(),
            ranges: vec![(2, 10, 15, 20)],
            total: 10,
            ..ReplayState::default()
        });
        let d = State::decode(&s.encode()).unwrap();
        assert_eq!(d.sources, s.sources);
        assert_eq!(d.scan_from, s.scan_from);
        assert_eq!(d.replays, s.replays);
        // State written before replays were persisted still loads.
        let old = State::decode(br#"{"version":1,"sources":{},"scan_from":{}}"#).unwrap();
        assert!(old.replays.is_empty());
        assert!(State::decode(b"{nonsense").is_err());
        assert!(State::decode(br#"{"version":9,"sources":{},"scan_from":{}}"#).is_err());
    }
}
