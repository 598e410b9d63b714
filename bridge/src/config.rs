//! The `[bridge]` section of the agent's configuration.
//!
//! ```toml
//! [bridge]
//! bootstrap = "cloud.example.com:9092"   # Kafka bootstrap servers, comma-separated
//! batch_size = 10000                     # librdkafka batch.num.messages
//! linger_ms = 5                          # librdkafka linger.ms
//! compression = "lz4"                    # none | lz4 | zstd
//! max_bytes_per_sec = 1000000            # optional bandwidth cap (keys + values + headers)
//! backlog_quota_bytes = 10737418240      # optional disk quota for unforwarded data; drops oldest
//! max_in_flight = 100000                 # records handed to librdkafka and not yet acknowledged
//! drain_in_flight = 20000                # of those, at most this many from a backlog or replay
//! heartbeat_interval_ms = 5000           # gateway heartbeat on the heartbeat topic
//! heartbeat_topic = "gateways"
//! live_first_threshold = 10000           # records behind before live data goes first
//! value_format = "postcard"              # readings in the cloud: postcard | json | registry
//! schema_registry_url = "http://cloud.example.com:8080"   # for "registry" (the cloud broker's);
//!                                   # http://user:TOKEN@host:port where it needs a login
//!
//! [bridge.topics]                        # edge topic -> cloud topic ("" = not forwarded)
//! telemetry = "plant-1.telemetry"
//!
//! [bridge.librdkafka]                    # passed through verbatim: TLS, SASL, timeouts...
//! "security.protocol" = "sasl_ssl"
//! "sasl.mechanism" = "PLAIN"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Edge topics forwarded by default, each to the cloud topic of the same name.
pub const DEFAULT_TOPICS: [&str; 3] = vocab::topics::EDGE_TOPICS;

/// Producer-side compression of record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4 (fast; the default).
    Lz4,
    /// Zstandard (smaller, more CPU).
    Zstd,
}

impl Compression {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How readings (the `telemetry` topic's values) are written in the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// As stored at the edge: the device wire format (postcard), ~20 bytes a reading.
    #[default]
    Postcard,
    /// JSON ([`vocab::json::ReadingJson`]), readable by anything.
    Json,
    /// Confluent's wire format: a zero byte, the id of the reading's JSON Schema (registered
    /// as `<cloud telemetry topic>-value` at `schema_registry_url`), the JSON. Read by the
    /// Confluent clients' deserializers with no code of ours.
    Registry,
}

/// Bridge settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Edge topic → cloud topic; topics not listed keep their name, `""` disables one.
    pub topics: BTreeMap<String, String>,
    /// Cloud topic of the gateway heartbeat.
    pub heartbeat_topic: String,
    /// Most records per produce batch (librdkafka `batch.num.messages`).
    pub batch_size: usize,
    /// How long librdkafka waits to fill a batch, ms (`linger.ms`).
    pub linger_ms: u64,
    /// Batch compression.
    pub compression: Compression,
    /// Bandwidth cap in bytes/s (keys, values, headers); live data goes first within it.
    pub max_bytes_per_sec: Option<u64>,
    /// Disk quota for data not yet forwarded, bytes; over it the oldest is dropped and counted.
    pub backlog_quota_bytes: Option<u64>,
    /// Records sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Of those, at most this many from a backlog or a replay (live data keeps the rest, and
    /// does not queue behind more than this inside the producer).
    pub drain_in_flight: usize,
    /// Heartbeat period, ms.
    pub heartbeat_interval_ms: u64,
    /// A partition this many records behind forwards live data ahead of its backlog.
    pub live_first_threshold: u64,
    /// librdkafka settings passed through verbatim (TLS, SASL, ...); they win over ours.
    pub librdkafka: BTreeMap<String, String>,
    /// How readings are written in the cloud.
    pub value_format: ValueFormat,
    /// The schema registry, `http://[user:password@]host:port[/base]` (for `value_format =
    /// "registry"`): the cloud broker's HTTP listener serves one. `user:password` is sent as
    /// HTTP Basic: for the cloud broker with `http_auth`, any user name and its HTTP token.
    pub schema_registry_url: Option<String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            bootstrap: "127.0.0.1:9092".into(),
            topics: BTreeMap::new(),
            heartbeat_topic: vocab::topics::GATEWAYS.into(),
            batch_size: 10_000,
            linger_ms: 5,
            compression: Compression::Lz4,
            max_bytes_per_sec: None,
            backlog_quota_bytes: None,
            max_in_flight: 100_000,
            drain_in_flight: 20_000,
            heartbeat_interval_ms: 5_000,
            live_first_threshold: 10_000,
            librdkafka: BTreeMap::new(),
            value_format: ValueFormat::Postcard,
            schema_registry_url: None,
        }
    }
}

impl BridgeConfig {
    /// The bridge with defaults, sending to `bootstrap` (`edge-agent run --cloud`).
    pub fn with_bootstrap(bootstrap: &str) -> Self {
        BridgeConfig {
            bootstrap: bootstrap.into(),
            ..BridgeConfig::default()
        }
    }

    /// Checks values a parser cannot.
    pub fn validate(&self) -> crate::Result<()> {
        macro_rules! ensure {
            ($c:expr, $($m:tt)+) => {
                if !$c {
                    return Err(crate::Error::Config(format!($($m)+)));
                }
            };
        }
        ensure!(!self.bootstrap.trim().is_empty(), "bridge.bootstrap is empty");
        ensure!(self.max_in_flight > 0, "bridge.max_in_flight must be > 0");
        ensure!(self.drain_in_flight > 0, "bridge.drain_in_flight must be > 0");
        ensure!(self.batch_size > 0, "bridge.batch_size must be > 0");
        ensure!(
            self.heartbeat_interval_ms >= 100,
            "bridge.heartbeat_interval_ms must be >= 100"
        );
        ensure!(
            self.max_bytes_per_sec != Some(0),
            "bridge.max_bytes_per_sec must be > 0 (omit it for no cap)"
        );
        if self.value_format == ValueFormat::Registry {
            let url = self.schema_registry_url.as_deref().unwrap_or("");
            ensure!(
                crate::format::registry_address(url).is_some(),
                "bridge.value_format = \"registry\" needs bridge.schema_registry_url = \"http://[user:password@]host:port\" (got {:?})",
                crate::format::redacted(url)
            );
        }
        for (edge, cloud) in &self.topics {
            ensure!(
                DEFAULT_TOPICS.contains(&edge.as_str()),
                "bridge.topics: unknown edge topic {edge:?} (known: {})",
                DEFAULT_TOPICS.join(", ")
            );
            ensure!(
                cloud.len() <= 249
                    && cloud
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
                "bridge.topics: bad cloud topic name {cloud:?}"
            );
        }
        Ok(())
    }

    /// The forwarded edge topics with their cloud topics.
    pub fn mapping(&self) -> Vec<(String, String)> {
        DEFAULT_TOPICS
            .iter()
            .map(|t| {
                let cloud = self.topics.get(*t).cloned().unwrap_or_else(|| t.to_string());
                (t.to_string(), cloud)
            })
            .filter(|(_, c)| !c.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_defaults_and_overrides() {
        let mut c = BridgeConfig::with_bootstrap("h:1");
        assert_eq!(c.mapping().len(), 3);
        c.topics.insert("telemetry".into(), "plant.t".into());
        c.topics.insert("dead-letter".into(), String::new());
        let m = c.mapping();
        assert_eq!(
            m,
            vec![
                ("telemetry".to_string(), "plant.t".to_string()),
                ("device-status".to_string(), "device-status".to_string())
            ]
        );
        c.validate().unwrap();
        c.topics.insert("telemtry".into(), "x".into());
        assert!(c.validate().is_err());
    }
}
