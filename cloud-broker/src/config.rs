//! The broker's configuration: embedded defaults < `cloud.toml` < `CLOUD_*` environment < flags.
//!
//! ```toml
//! node_id = 1
//! data_dir = "./data/cloud"
//! kafka_listen = "127.0.0.1:9092"
//! http_listen = "127.0.0.1:8080"
//! http_auth = "none"                      # or "writes" / "all": which HTTP requests need the token
//! http_token_file = "./data/cloud/http-token"   # default: http-token in data_dir (made if missing)
//! advertise = "broker.example.com:9092"   # what Metadata tells clients; default: kafka_listen
//! auto_create_topics = true
//! default_partitions = 1
//! disk_reserve_mb = 64                    # produce refused below this much free disk (retention,
//!                                         # topic deletion and offsets still work); 0: none
//! schema_registry = true                  # /subjects, /schemas: Confluent's REST subset, kept
//!                                         # in the _schemas topic (made on first registration)
//!
//! # A replicated cluster: every node lists the others (without it, one node on its own).
//! [cluster]
//! name = "plant-7"                        # peers of another name are refused
//! raft_listen = "10.0.0.1:9192"           # node-to-node traffic, apart from Kafka clients
//! peers = { 2 = "10.0.0.2:9192", 3 = "10.0.0.3:9192" }
//! heartbeat_ms = 200                      # Raft timing (election timeout 3x-5x this)
//! join = false                            # true: a new node taking a dead one's place
//!                                         # (`cloud-broker cluster replace`)
//! [cluster.tls]                           # mutual TLS between nodes
//! cert = "certs/node-1.pem"               # `cloud-broker certs --node 1` (CN node-1)
//! key = "certs/node-1.key"
//! ca = "certs/ca.pem"
//!
//! # The device monitor (dashboard at `/`, `/api/devices`, `/api/gateways`): a Kafka consumer
//! # of this broker's own topics, in a group of its own.
//! [monitor]
//! enabled = true
//! group_id = "iot-monitor-1"              # default: iot-monitor-<node_id>
//! telemetry_topic = "telemetry"           # as the bridge's [bridge.topics] names them
//! status_topic = "device-status"
//! gateways_topic = "gateways"
//! device_timeout_s = 60                   # a device unheard of this long is offline
//! gateway_timeout_s = 30                  # a gateway without a heartbeat this long is offline
//! max_devices = 200000                    # records of more devices are counted, not kept
//! metrics_devices = 100                   # devices with their own /metrics series (worst first)
//! client = "native"                       # or "librdkafka"
//! bootstrap = "127.0.0.1:9093"            # default: this node's plaintext listener
//! [monitor.properties]                    # TLS and SASL for that connection (both clients)
//! "security.protocol" = "sasl_ssl"
//! "sasl.mechanism" = "SCRAM-SHA-256"
//! "sasl.username" = "monitor"
//! "sasl.password" = "..."
//! "ssl.ca.location" = "certs/ca.pem"
//!
//! # What one client can make the Kafka listener hold; each hit is counted on /metrics
//! # (kafka_connections_closed_total{limit}) and logged.
//! [limits]
//! max_connections = 10000
//! max_connections_per_ip = 1000
//! idle_timeout_s = 600                    # no request for this long: closed
//! frame_timeout_s = 30                    # a request begun must arrive whole within this
//! max_in_flight = 32                      # requests outstanding per connection
//! max_frame_bytes = 104857600             # the largest request
//! request_memory_mb = 512                 # request bytes held at once (frames > 16 KiB)
//!
//! # More Kafka listeners, their certificate, and logins and rights (see crate::security).
//! [[listeners]]
//! name = "external"
//! listen = "0.0.0.0:9093"
//! advertise = "broker.example.com:9093"
//! protocol = "sasl_ssl"                   # plaintext | ssl | sasl_plaintext | sasl_ssl
//! [tls]
//! cert = "certs/broker.pem"
//! key = "certs/broker.key"
//! client_ca = "certs/ca.pem"              # client certificates: required on ssl listeners
//! [security]                              # authorization on (the users file's rights)
//! users_file = "users.toml"               # default: <data_dir>/users.toml
//! mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id.
    pub node_id: i32,
    /// Where data lives.
    pub data_dir: PathBuf,
    /// Kafka listener.
    pub kafka_listen: SocketAddr,
    /// HTTP listener (health, metrics, cluster, dashboard, schema registry).
    pub http_listen: SocketAddr,
    /// Which HTTP requests need the token: `none`, `writes` (every request but GET and HEAD:
    /// replacing a node, registering or deleting a schema) or `all` (every one but
    /// `GET /health`).
    pub http_auth: foundation::token::Protect,
    /// The HTTP token's file, made (random, owner-only) at the first start that needs it
    /// [default: `http-token` in the data directory].
    pub http_token_file: Option<PathBuf>,
    /// `host:port` given to clients in Metadata (Kafka's `advertised.listeners`).
    pub advertise: Option<String>,
    /// Create unknown topics when a client asks for them in Metadata.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics (and of CreateTopics with -1).
    pub default_partitions: u32,
    /// Free disk (MiB) kept for the writes that free space: below it, produce is refused with
    /// `KAFKA_STORAGE_ERROR` and `/health` is degraded, while retention, topic deletion and
    /// offset commits go on; free pages inside the data file count. 0: no reserve.
    pub disk_reserve_mb: u64,
    /// Replication: absent for one node on its own.
    pub cluster: Option<ClusterConfig>,
    /// The device monitor.
    pub monitor: crate::monitor::Settings,
    /// Serve the schema registry (Confluent's REST subset) on the HTTP listener.
    pub schema_registry: bool,
    /// What one client can make the Kafka listener hold.
    pub limits: crate::limits::Limits,
    /// Kafka listeners besides `kafka_listen` (TLS, SASL).
    pub listeners: Vec<crate::security::ListenerConfig>,
    /// The certificate of the TLS listeners.
    pub tls: Option<crate::security::TlsConfig>,
    /// Logins and rights: absent, everyone may do everything.
    pub security: Option<crate::security::SecurityConfig>,
}

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: nodes of another name are refused as peers.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// The Raft listener.
    pub raft_listen: SocketAddr,
    /// The other nodes' Raft addresses by node id.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<u64, String>,
    /// Raft heartbeat interval (ms); the election timeout is 3–5 times it.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Join a running cluster in a replaced node's place (`cluster replace`): initialize
    /// nothing, wait to be added.
    #[serde(default)]
    pub join: bool,
    /// Mutual TLS between nodes.
    pub tls: Option<ClusterTls>,
}

/// `[cluster.tls]`: every Raft link is TLS; each node presents its certificate (CN
/// `node-<id>`, as `cloud-broker certs --node ID` makes it) and checks its peer's against `ca`;
/// a peer whose certificate names another node than it claims to be is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// This node's certificate (PEM; server and client use, the peers' names for it).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA.
    pub ca: PathBuf,
}

fn default_cluster_name() -> String {
    "iot-appliance".into()
}

/// A leader unheard of for 8 to 10 heartbeats (1.6–2 s) is replaced (see
/// [`crate::raft::Timing::from_heartbeat`]): what keeps a produce stall after a node's death
/// under 3 s. 300 partitions' heartbeats at this rate cost a node about a tenth of one core
/// (BENCHMARKS.md).
pub(crate) fn default_heartbeat_ms() -> u64 {
    200
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./data/cloud"),
            kafka_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_auth: foundation::token::Protect::None,
            http_token_file: None,
            advertise: None,
            auto_create_topics: true,
            default_partitions: 1,
            disk_reserve_mb: 64,
            cluster: None,
            monitor: crate::monitor::Settings::default(),
            schema_registry: true,
            limits: crate::limits::Limits::default(),
            listeners: Vec::new(),
            tls: None,
            security: None,
        }
    }
}

impl Config {
    /// The HTTP token's file (`http_token_file`, else `http-token` in the data directory).
    pub fn http_token_file(&self) -> PathBuf {
        self.http_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("http-token"))
    }

    /// Reads a TOML file (errors name it).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let c: Config = foundation::config::from_file(path)?;
        c.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let c: Config = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what parsing cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.node_id >= 0, "node_id must be >= 0");
        anyhow::ensure!(
            (1..=10_000).contains(&self.default_partitions),
            "default_partitions must be 1..=10000"
        );
        if let Some(c) = &self.cluster {
            anyhow::ensure!(
                (20..=10_000).contains(&c.heartbeat_ms),
                "cluster.heartbeat_ms must be 20..=10000"
            );
            anyhow::ensure!(
                !c.peers.contains_key(&(self.node_id as u64)),
                "cluster.peers names this node's own id {}",
                self.node_id
            );
            for (id, addr) in &c.peers {
                anyhow::ensure!(
                    addr.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                    "cluster.peers.{id} must be host:port, got {addr:?}"
                );
            }
        }
        self.monitor.validate()?;
        self.limits.validate()?;
        let mut names = std::collections::BTreeSet::from([crate::security::PRIMARY]);
        for l in &self.listeners {
            anyhow::ensure!(
                !l.name.is_empty()
                    && l.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)),
                "a listener's name is letters, digits, '-' and '_': {:?}",
                l.name
            );
            anyhow::ensure!(
                names.insert(&l.name),
                "two listeners named {:?} ({:?} is kafka_listen's)",
                l.name,
                crate::security::PRIMARY
            );
            anyhow::ensure!(
                l.listen != self.kafka_listen
                    && self.listeners.iter().filter(|o| o.listen == l.listen).count() == 1,
                "listener {}: {} is taken by another listener",
                l.name,
                l.listen
            );
            anyhow::ensure!(
                !l.protocol.tls() || self.tls.is_some(),
                "listener {} is {} but there is no [tls] section (cert, key)",
                l.name,
                l.protocol.name()
            );
            anyhow::ensure!(
                !l.protocol.sasl() || self.security.is_some(),
                "listener {} is {} but there is no [security] section (users_file)",
                l.name,
                l.protocol.name()
            );
            if let Some(a) = &l.advertise {
                anyhow::ensure!(
                    a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                    "listener {}: advertise must be host:port, got {a:?}",
                    l.name
                );
            }
        }
        if let Some(s) = &self.security {
            anyhow::ensure!(!s.mechanisms.is_empty(), "security.mechanisms is empty");
        }
        if let Some(a) = &self.advertise {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("advertise must be host:port"))?;
            anyhow::ensure!(
                !host.is_empty() && port.parse::<u16>().is_ok(),
                "advertise must be host:port, got {a:?}"
            );
        }
        Ok(())
    }

    /// The host and port advertised to clients of `listener` (None: no such listener).
    pub fn advertised_on(&self, listener: &str) -> Option<(String, i32)> {
        if listener == crate::security::PRIMARY {
            return Some(self.advertised());
        }
        let l = self.listeners.iter().find(|l| l.name == listener)?;
        let a = l.advertised();
        let (h, p) = a.rsplit_once(':')?;
        Some((h.to_string(), p.parse().ok()?))
    }

    /// The advertised host and port.
    pub fn advertised(&self) -> (String, i32) {
        match self.advertise.as_deref().and_then(|a| a.rsplit_once(':')) {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(9092)),
            None => (
                self.kafka_listen.ip().to_string(),
                i32::from(self.kafka_listen.port()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_section_parses_and_is_checked() {
        let c = Config::from_toml(
            "node_id = 1\n[cluster]\nname = \"plant\"\nraft_listen = \"127.0.0.1:9192\"\n\
             peers = { 2 = \"10.0.0.2:9192\", 3 = \"10.0.0.3:9192\" }\n",
        )
        .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(
            (cl.name.as_str(), cl.peers.len(), cl.heartbeat_ms),
            ("plant", 2, 200)
        );
        assert!(
            Config::from_toml("").unwrap().cluster.is_none(),
            "one node by default"
        );
        let own = Config::from_toml(
            "node_id = 2\n[cluster]\nraft_listen = \"127.0.0.1:1\"\npeers = { 2 = \"h:1\" }\n",
        );
        assert!(own.unwrap_err().to_string().contains("own id"));
        let bad = Config::from_toml("[cluster]\nraft_listen = \"127.0.0.1:1\"\npeers = { 2 = \"nohost\" }\n");
        assert!(bad.unwrap_err().to_string().contains("host:port"));
        assert!(Config::from_toml("[cluster]\nraft_listen = \"127.0.0.1:1\"\nsurprise = 1\n").is_err());
    }
}
