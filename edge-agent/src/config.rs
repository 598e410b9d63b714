//! The agent's configuration: embedded defaults < `edge.toml` < `EDGE_*` environment < flags.
//!
//! ```toml
//! data_dir = "./data/edge"          # redb log, gateway id
//! gateway_id = "gw-1"               # optional: generated once and kept in the data dir
//! disk_reserve_mb = 16              # below this much free disk, new readings are not stored
//!                                   # (devices keep them); retention and the quota still run
//!
//! [mqtt]
//! listen = "127.0.0.1:1883"
//! max_connections = 10000
//! max_payload_bytes = 65536         # larger publishes are refused by the broker
//! auth = "none"                    # or "password": devices by id and password (edge-agent devices add)
//! credentials_file = "./data/edge/credentials.toml"  # default: credentials.toml in data_dir
//! frame_timeout_s = 30             # a packet begun must arrive whole within this
//! max_devices = 10000              # auth = "none": distinct device ids taken after the start
//!
//! [mqtt.tls]                        # devices over TLS (needs auth = "password")
//! listen = "0.0.0.0:8883"
//! cert = "certs/agent.pem"          # edge-agent certs makes a development CA and these
//! key = "certs/agent.key"
//! client_ca = "certs/ca.pem"        # a device certificate's CN is its id (no password needed)
//! require_client_cert = false       # true: devices without a certificate are refused
//!
//! [admin]
//! listen = "127.0.0.1:8081"         # /health /metrics /api/log /api/devices
//! auth = "none"                     # or "writes" / "all": which requests need the admin token
//! token_file = "./data/edge/admin-token"   # default: admin-token in data_dir (made if missing)
//!
//! [ingest]
//! max_batch_publishes = 65536       # group commit: at most this many publishes ...
//! max_batch_bytes = 16777216        # ... or bytes of payload ...
//! linger_ms = 2                     # ... gathered for at most this long after the first
//!
//! [bridge]                          # forward the log to a Kafka-compatible cloud (optional;
//! bootstrap = "cloud:9092"          # `run --cloud HOST:PORT` enables it with defaults). All
//!                                   # keys: see the bridge crate's `config` module / README.
//!
//! [topics.telemetry]                # also: topics.device-status, topics.dead-letter
//! partitions = 6
//! retention_ms = 604800000          # 7 days; omit for no age limit
//! retention_bytes = 1073741824      # per partition; omit for no size limit
//! ```
//! Unknown keys are an error, so a typo does not silently fall back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::log::TopicSpec;

/// The edge log's topics (shared with the bridge and the cloud through `vocab`): telemetry
/// (one record per reading, keyed by device id), device status (births and last wills, keyed
/// by device id, compacted), dead letters (payloads that failed validation, with the reason in
/// a header).
pub use vocab::topics::{DEAD_LETTER, DEVICE_STATUS, TELEMETRY};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the log and the gateway id live.
    pub data_dir: PathBuf,
    /// Gateway id; generated and persisted when absent.
    pub gateway_id: Option<String>,
    /// MQTT listener.
    pub mqtt: MqttConfig,
    /// Admin HTTP listener.
    pub admin: AdminConfig,
    /// Group commit bounds.
    pub ingest: IngestConfig,
    /// Per-topic settings, by topic name.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Forwarding to the cloud; off when absent.
    pub bridge: Option<bridge::BridgeConfig>,
    /// Free disk (MiB) kept for the writes that free space: below it, appends are refused
    /// (acking stops, devices keep their readings, `/health` is degraded) while retention, the
    /// bridge's quota and quarantines go on; free pages inside the log count. 0: none.
    pub disk_reserve_mb: u64,
}

/// MQTT listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Most concurrent MQTT connections.
    pub max_connections: usize,
    /// Largest publish payload accepted, bytes.
    pub max_payload_bytes: usize,
    /// How devices authenticate: `none` (anyone may connect) or `password` (client id and
    /// username are the device id, the password is checked against the credentials file).
    pub auth: MqttAuth,
    /// The credentials file [default: `credentials.toml` in the data directory].
    pub credentials_file: Option<PathBuf>,
    /// A packet once begun (the CONNECT: from the connection's start) must arrive whole within
    /// this, seconds, or the connection is closed.
    pub frame_timeout_s: u64,
    /// With `auth = "none"`: the most distinct device ids (client ids and the ids in topics)
    /// taken after the agent starts; a connection naming a new one past this is refused. This
    /// bounds what the broker and the ingest keep per device, as the credentials file does
    /// with passwords.
    pub max_devices: usize,
    /// A TLS listener for devices (through the front; needs `auth = "password"`).
    pub tls: Option<MqttTls>,
}

/// `[mqtt.tls]`: devices over TLS. A device that presents a certificate from `client_ca` is
/// the certificate subject's CN (its client id must be that, and it needs no password); one
/// without logs in with its password, unless `require_client_cert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// Listen address (MQTT over TLS: 8883 by convention).
    pub listen: SocketAddr,
    /// The agent's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA device certificates are checked against (none: no client certificates).
    pub client_ca: Option<PathBuf>,
    /// Refuse a device without a certificate in the TLS handshake.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// `[mqtt] auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttAuth {
    /// Any client may connect.
    #[default]
    None,
    /// Devices added with `edge-agent devices add`, by id and password.
    Password,
}

/// Admin HTTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Which requests need the admin token: `none`, `writes` (every request but GET and HEAD:
    /// quarantine, bridge restart, replay) or `all` (every one but `GET /health`).
    pub auth: foundation::token::Protect,
    /// The token's file, made (random, owner-only) at the first start that needs it
    /// [default: `admin-token` in the data directory]. The CLI presents it.
    pub token_file: Option<PathBuf>,
}

/// Group commit bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most MQTT publishes per commit.
    pub max_batch_publishes: usize,
    /// Most payload bytes per commit.
    pub max_batch_bytes: usize,
    /// Longest wait for more messages after the first of a commit, ms.
    pub linger_ms: u64,
}

/// Settings of one topic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Partition count (fixed at creation).
    pub partitions: Option<u32>,
    /// Age limit, ms.
    pub retention_ms: Option<u64>,
    /// Size limit per partition, bytes.
    pub retention_bytes: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data/edge"),
            gateway_id: None,
            mqtt: MqttConfig::default(),
            admin: AdminConfig::default(),
            ingest: IngestConfig::default(),
            topics: BTreeMap::new(),
            bridge: None,
            disk_reserve_mb: 16,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 10_000,
            max_payload_bytes: 64 * 1024,
            auth: MqttAuth::None,
            credentials_file: None,
            frame_timeout_s: 30,
            max_devices: 10_000,
            tls: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            auth: foundation::token::Protect::None,
            token_file: None,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_publishes: 65_536,
            max_batch_bytes: 16 << 20,
            linger_ms: 2,
        }
    }
}

impl Config {
    /// The admin token's file (`[admin] token_file`, else `admin-token` in the data directory).
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin-token"))
    }

    /// Reads a TOML file (errors name it).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let cfg: Config = foundation::config::from_file(path)?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values a parser cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ingest.max_batch_publishes > 0,
            "ingest.max_batch_publishes must be > 0"
        );
        anyhow::ensure!(
            self.ingest.max_batch_bytes > 0,
            "ingest.max_batch_bytes must be > 0"
        );
        anyhow::ensure!(
            self.mqtt.max_payload_bytes >= 64,
            "mqtt.max_payload_bytes must be >= 64"
        );
        anyhow::ensure!(self.mqtt.frame_timeout_s > 0, "mqtt.frame_timeout_s must be > 0");
        anyhow::ensure!(self.mqtt.max_connections > 0, "mqtt.max_connections must be > 0");
        anyhow::ensure!(self.mqtt.max_devices > 0, "mqtt.max_devices must be > 0");
        if let Some(t) = &self.mqtt.tls {
            anyhow::ensure!(
                self.mqtt.auth == MqttAuth::Password,
                "[mqtt.tls] needs auth = \"password\" (TLS devices go through the authorizing front)"
            );
            anyhow::ensure!(t.listen != self.mqtt.listen, "mqtt.tls.listen is mqtt.listen");
            anyhow::ensure!(
                !t.require_client_cert || t.client_ca.is_some(),
                "mqtt.tls.require_client_cert needs mqtt.tls.client_ca"
            );
        }
        for name in self.topics.keys() {
            anyhow::ensure!(
                [TELEMETRY, DEVICE_STATUS, DEAD_LETTER].contains(&name.as_str()),
                "unknown topic {name:?} (known: {TELEMETRY}, {DEVICE_STATUS}, {DEAD_LETTER})"
            );
        }
        for spec in self.topic_specs() {
            spec.validate()?;
        }
        if let Some(b) = &self.bridge {
            b.validate()?;
        }
        Ok(())
    }

    /// The three topics with their effective settings.
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        let week = 7 * 24 * 3600 * 1000;
        let defaults = [
            TopicSpec {
                retention_ms: Some(week),
                ..TopicSpec::new(TELEMETRY, 6)
            },
            TopicSpec {
                compact: true,
                ..TopicSpec::new(DEVICE_STATUS, 1)
            },
            TopicSpec {
                retention_ms: Some(week),
                ..TopicSpec::new(DEAD_LETTER, 1)
            },
        ];
        defaults
            .into_iter()
            .map(|mut spec| {
                if let Some(t) = self.topics.get(&spec.name) {
                    spec.partitions = t.partitions.unwrap_or(spec.partitions);
                    spec.retention_ms = t.retention_ms.or(spec.retention_ms);
                    spec.retention_bytes = t.retention_bytes.or(spec.retention_bytes);
                }
                spec
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
        let c = Config::from_toml("[topics.telemetry]\npartitions = 3\nretention_bytes = 1000\n").unwrap();
        let t = &c.topic_specs()[0];
        assert_eq!((t.partitions, t.retention_bytes), (3, Some(1000)));
        assert!(c.bridge.is_none());
        let c = Config::from_toml("[bridge]\nbootstrap = \"h:1\"\n[bridge.topics]\ntelemetry = \"t2\"\n")
            .unwrap();
        let b = c.bridge.unwrap();
        assert_eq!((b.bootstrap.as_str(), b.linger_ms), ("h:1", 5));
        assert_eq!(b.mapping()[0], ("telemetry".to_string(), "t2".to_string()));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Config::from_toml("[mqtt]\nlisten_addr = \"x\"\n").is_err());
        assert!(Config::from_toml("[topics.telemtry]\npartitions = 3\n").is_err());
        assert!(Config::from_toml("[topics.telemetry]\npartitions = 0\n").is_err());
        assert!(Config::from_toml("[mqtt]\nlisten = \"nonsense\"\n").is_err());
        assert!(Config::from_toml("[bridge]\nbootstrap = \"h:1\"\ncompression = \"gzip2\"\n").is_err());
        assert!(Config::from_toml("[bridge]\nbootstrap = \"h:1\"\nlinger = 5\n").is_err());
    }
}
