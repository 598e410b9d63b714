//! The `cloud-broker` command line (the binary is a one-line wrapper; the `demo` binary runs
//! it as a subcommand of itself). The binary must install [`crate::alloc::LazyHuge`] as its
//! global allocator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Broker;
use crate::config::Config;
use crate::storage::redb_store::RedbStorage;
use clap::{Args, Parser, Subcommand};
use tracing::info;

mod cluster;
mod monitor;
mod security;

/// A Kafka-wire-protocol broker: kcat, librdkafka, kafka-python and confluent-kafka work
/// against it unmodified.
#[derive(Debug, Parser)]
#[command(name = "cloud-broker", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a broker node until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Look at a running cluster through its nodes' HTTP listeners.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Check a stopped broker's data directory (a single node's can be repaired too).
    #[command(subcommand)]
    Storage(StorageCmd),
    /// Kafka principals (`[security]`): SCRAM credentials, never passwords, and what each may
    /// produce, consume, and administer.
    #[command(subcommand)]
    Users(security::UsersCmd),
    /// Make development certificates: a CA, the broker's server certificate, client and
    /// cluster-node certificates (production users bring their own PKI).
    Certs(security::CertsArgs),
    /// Run the device monitor (dashboard, `/api/devices`, `/api/gateways`, `/metrics`) on its
    /// own, against any Kafka-compatible cluster, until SIGINT/SIGTERM.
    Monitor(MonitorArgs),
    /// The devices a monitor knows (a broker's or `cloud-broker monitor`'s HTTP listener):
    /// status, readings, readings missing and dropped; with an ID, that device and its gaps.
    Devices {
        /// One device: its boots and every run of readings never received.
        id: Option<String>,
        /// The monitor's HTTP address.
        #[arg(long, env = "CLOUD_HTTP", default_value = "127.0.0.1:8080")]
        http: String,
        /// Only devices whose id or gateway contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Only `online` or `offline` devices.
        #[arg(long)]
        status: Option<String>,
        /// Only devices with readings missing.
        #[arg(long)]
        lossy: bool,
        /// Sort by a column (id, gateway, online, readings, missing, dropped_overflow, rate,
        /// last_seen_ms, ...); `-` first for descending.
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Rows skipped.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The gateways a monitor knows: online, backlog at the edge, drops, send rate.
    Gateways {
        /// The monitor's HTTP address.
        #[arg(long, env = "CLOUD_HTTP", default_value = "127.0.0.1:8080")]
        http: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a topic's records as JSON lines (readings, device status and heartbeats decoded),
    /// until SIGINT/SIGTERM or --count records.
    Consume {
        /// A broker (any Kafka-compatible cluster).
        #[arg(long, env = "CLOUD_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// From the first record kept, not only new ones.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// `json`: one object per record (topic, partition, offset, timestamp_ms, key,
        /// headers, value decoded); `raw`: the values as they are, one per line.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

#[derive(Debug, Args)]
struct MonitorArgs {
    /// The cluster to read (`bootstrap.servers`).
    #[arg(long, env = "CLOUD_BOOTSTRAP", required = true)]
    bootstrap: String,
    /// HTTP listen address (`/`, `/api/devices`, `/api/gateways`, `/api/monitor`, `/metrics`,
    /// `/health`, and the schema registry's `/subjects`, `/schemas`, `/config`).
    #[arg(long, env = "CLOUD_HTTP_LISTEN", default_value = "127.0.0.1:8081")]
    http_listen: std::net::SocketAddr,
    /// A configuration file: its `[monitor]` section applies.
    #[arg(long, env = "CLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// The consumer group [default: the config's, else `iot-monitor`].
    #[arg(long)]
    group_id: Option<String>,
    /// A librdkafka property for the connection (security.protocol, sasl.*, ssl.*): KEY=VALUE,
    /// repeat per property. Any of them makes the monitor read through librdkafka (its own
    /// client speaks plaintext).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum StorageCmd {
    /// Check every stored row and batch (checksums, decoding, each partition's offsets
    /// against its batches) and redb's pages; list what is damaged and which offsets it held.
    /// Exits with status 1 if anything is. The broker must be stopped. On a cluster node's
    /// directory: every Raft log entry, state value, offset-index row and snapshot batch (a
    /// damaged node is replaced, not repaired).
    Verify {
        /// Configuration file (TOML), for its data directory.
        #[arg(long, env = "CLOUD_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory [default: ./data/cloud].
        #[arg(long, env = "CLOUD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Also move each damaged item to the store's quarantine table (its bytes kept) and
        /// rebuild the partition offsets that counted it: consumers read past the hole,
        /// offsets are never reused. What a damaged batch held is lost on this node.
        #[arg(long)]
        quarantine: bool,
        /// Open a store that holds less than it acknowledged (it rolled back: the broker
        /// refuses to start on it and says so): each such partition goes on after the offsets
        /// it had handed out, and the lost ranges are recorded.
        #[arg(long)]
        accept_rollback: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Nodes, controller, and per partition: leader, term, replicas, in-sync replicas, each
    /// follower's lag (log entries behind its leader) and the high watermark. Give every
    /// node's HTTP address: each partition is shown as its leader sees it.
    Status {
        /// A node's HTTP listen address (host:port); repeat for every node.
        #[arg(long = "node", value_name = "HOST:PORT", required = true)]
        nodes: Vec<String>,
        /// Print the merged JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The nodes' HTTP token file (with `http_auth = "all"`).
        #[arg(long, env = "CLOUD_HTTP_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Replace a dead node for good with a new one: start the new node first with `run --join`
    /// (same cluster name, any peers to reach the cluster by), then name both here. The new
    /// node takes the old one's place in every partition and offsets log; each group's
    /// leader adds it, lets it catch up, and swaps it in. Waits until every group has moved.
    Replace {
        /// A node's HTTP listen address (host:port); repeat for every node (the old one need
        /// not answer). The first that answers records the replacement.
        #[arg(long = "node", value_name = "HOST:PORT", required = true)]
        nodes: Vec<String>,
        /// The id of the node replaced (it must be stopped: it is retired for good).
        old: u64,
        /// The new node: ID=HOST:PORT of its Raft listener.
        #[arg(value_name = "NEW=HOST:PORT")]
        new: String,
        /// How long to wait for every group to move, in seconds.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        /// The nodes' HTTP token file (with `http_auth = "writes"` or `"all"`).
        #[arg(long, env = "CLOUD_HTTP_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, env = "CLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// Node id [default: 1].
    #[arg(long, env = "CLOUD_NODE_ID")]
    node_id: Option<i32>,
    /// Data directory [default: ./data/cloud].
    #[arg(long, env = "CLOUD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Kafka listen address [default: 127.0.0.1:9092].
    #[arg(long, env = "CLOUD_KAFKA_LISTEN")]
    kafka_listen: Option<std::net::SocketAddr>,
    /// HTTP listen address (`/health`, `/metrics`, `/api/cluster`, `/api/cluster/digests`,
    /// `/api/cluster/replace`, the monitor's `/api/devices`, `/api/gateways`, `/api/monitor`,
    /// the schema registry's `/subjects`, `/schemas`, `/config`) [default: 127.0.0.1:8080].
    #[arg(long, env = "CLOUD_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// host:port that Metadata gives clients (Kafka's advertised.listeners) [default: the Kafka listen address].
    #[arg(long, env = "CLOUD_ADVERTISE")]
    advertise: Option<String>,
    /// Raft listen address: run as a node of a replicated cluster (with --peer).
    #[arg(long, env = "CLOUD_RAFT_LISTEN")]
    raft_listen: Option<std::net::SocketAddr>,
    /// Another node of the cluster: ID=HOST:PORT, how this node reaches its Raft listener (repeat per node).
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    peers: Vec<String>,
    /// The cluster's name; nodes of another name are refused [default: iot-appliance].
    #[arg(long, env = "CLOUD_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Join a running cluster in a replaced node's place: initialize nothing, wait to be
    /// added (`cluster replace`). Give --peer for the members to reach.
    #[arg(long)]
    join: bool,
}

/// `POST /api/cluster/replace?old=ID&new=ID&raft=HOST:PORT`.
#[derive(Debug, serde::Deserialize)]
struct ReplaceQuery {
    old: u64,
    new: u64,
    raft: String,
}

/// Parses `ID=HOST:PORT`.
fn parse_peer(s: &str) -> anyhow::Result<(u64, String)> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--peer {s:?}: expected ID=HOST:PORT"))?;
    let id = id
        .parse()
        .map_err(|_| anyhow::anyhow!("--peer {s:?}: the node id must be a number"))?;
    Ok((id, addr.to_string()))
}

/// Parses `args` (the first is the program name) and runs the command.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let result = match Cli::parse_from(args).cmd {
        Cmd::Run(a) => {
            foundation::logging::init("CLOUD_LOG", "info");
            run(a)
        }
        Cmd::Cluster(ClusterCmd::Status {
            nodes,
            json,
            token_file,
        }) => cluster::status(&nodes, json, token_file.as_deref()),
        Cmd::Cluster(ClusterCmd::Replace {
            nodes,
            old,
            new,
            wait_secs,
            token_file,
        }) => cluster::replace(
            &nodes,
            old,
            &new,
            Duration::from_secs(wait_secs),
            token_file.as_deref(),
        ),
        Cmd::Storage(StorageCmd::Verify {
            config,
            data_dir,
            quarantine,
            accept_rollback,
            json,
        }) => {
            foundation::logging::init("CLOUD_LOG", "warn");
            storage_verify(config, data_dir, quarantine, accept_rollback, json)
        }
        Cmd::Users(c) => security::users(c),
        Cmd::Certs(a) => security::certs(a),
        Cmd::Monitor(a) => {
            foundation::logging::init("CLOUD_LOG", "info");
            monitor::run_monitor(a)
        }
        Cmd::Devices {
            id,
            http,
            filter,
            status,
            lossy,
            sort,
            limit,
            offset,
            json,
        } => {
            let mut q = format!("?limit={limit}&offset={offset}&lossy={lossy}");
            for (k, v) in [("filter", filter), ("status", status), ("sort", sort)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", query_encode(&v)));
                }
            }
            monitor::devices(&http, id.as_deref(), &q, json)
        }
        Cmd::Gateways { http, json } => monitor::gateways(&http, json),
        Cmd::Consume {
            bootstrap,
            topic,
            from_beginning,
            count,
            format,
        } => monitor::consume(&bootstrap, &topic, from_beginning, count, &format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Percent-encodes a query-string value or a path segment (device ids are `[A-Za-z0-9_.-]`;
/// anything else is encoded, and refused by the server as unknown).
fn query_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `cloud-broker storage verify`.
fn storage_verify(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    quarantine: bool,
    accept_rollback: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut cfg = match &config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    let path = cfg.data_dir.join("broker.redb");
    let node = cfg.data_dir.join("node.redb");
    if node.exists() {
        anyhow::ensure!(
            !quarantine && !accept_rollback,
            "{} holds a cluster node's data: a node is not repaired in place; its peers hold the \
             data, so a node whose data is damaged or rolled back is replaced (`cloud-broker \
             cluster replace`) and the new one catches up from them",
            cfg.data_dir.display()
        );
        return node_verify(&node, json);
    }
    anyhow::ensure!(
        path.exists(),
        "no broker data at {} (wrong --data-dir?)",
        path.display()
    );
    let report = {
        let store = RedbStorage::open_with(&path, accept_rollback)
            .map_err(|e| anyhow::anyhow!("opening {} (is the broker stopped?): {e}", path.display()))?;
        let r = if quarantine {
            store.quarantine()?
        } else {
            store.verify()?
        };
        crate::storage::Storage::close(&store);
        r
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["clean"] = report.is_clean().into();
        println!("{v}");
    } else {
        println!(
            "checked {} topics, {} partitions, {} batches ({} bytes), {} producer states, {} group offsets, {} metadata values",
            report.topics, report.partitions, report.batches, report.bytes, report.producers, report.offsets, report.meta
        );
        if report.damaged.is_empty() {
            println!("no damaged rows or batches");
        }
        for d in &report.damaged {
            let tag = if quarantine { "QUARANTINED" } else { "DAMAGED" };
            println!("{tag} {}: {} ({})", d.key, d.what, d.error);
        }
        println!(
            "redb page check: {}",
            report.page_damage.as_deref().unwrap_or("ok")
        );
        if !report.quarantined.is_empty() {
            println!("{} items are in the quarantine table", report.quarantined.len());
        }
        if !report.damaged.is_empty() && !quarantine {
            println!("run `cloud-broker storage verify --quarantine` to put them aside and go on");
        }
    }
    if !report.damaged.is_empty() && !quarantine {
        std::process::exit(1);
    }
    Ok(())
}

/// `cloud-broker storage verify` on a cluster node's data directory.
fn node_verify(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let store = crate::raft::store::NodeStore::open(path)
        .map_err(|e| anyhow::anyhow!("opening {} (is the node stopped?): {e}", path.display()))?;
    let r = store.verify();
    store.close();
    drop(store);
    let r = r?;
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["clean"] = r.is_clean().into();
        println!("{v}");
    } else {
        println!(
            "checked {} Raft groups: {} log entries, {} state values, {} offset-index rows, {} snapshot batches",
            r.groups, r.entries, r.states, r.index_rows, r.sealed_batches
        );
        if r.damaged.is_empty() {
            println!("no damaged entries or values");
        }
        for d in &r.damaged {
            println!("DAMAGED {}: {} ({})", d.key, d.what, d.error);
        }
        println!("redb page check: {}", r.page_damage.as_deref().unwrap_or("ok"));
    }
    if !r.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.kafka_listen {
        cfg.kafka_listen = v;
    }
    if let Some(v) = a.http_listen {
        cfg.http_listen = v;
    }
    if a.advertise.is_some() {
        cfg.advertise = a.advertise;
    }
    if a.raft_listen.is_some() || !a.peers.is_empty() || a.cluster_name.is_some() || a.join {
        let c = cfg.cluster.get_or_insert_with(|| crate::config::ClusterConfig {
            name: "iot-appliance".into(),
            raft_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9192)),
            peers: Default::default(),
            heartbeat_ms: crate::config::default_heartbeat_ms(),
            join: false,
            tls: None,
        });
        c.join |= a.join;
        if let Some(l) = a.raft_listen {
            c.raft_listen = l;
        }
        if let Some(n) = a.cluster_name {
            c.name = n;
        }
        for p in &a.peers {
            let (id, addr) = parse_peer(p)?;
            c.peers.insert(id, addr);
        }
    }
    cfg.validate()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // The listeners first: a node that cannot serve clients must not join a cluster (it
        // would register an address nobody answers on).
        let listener = crate::server::bind(cfg.kafka_listen).await?;
        let mut more_listeners = Vec::new();
        for l in &cfg.listeners {
            let kind = crate::security::Listener::from_config(l, cfg.tls.as_ref())?;
            let sock = crate::server::bind(l.listen).await?;
            info!(listener = %l.name, addr = %l.listen, protocol = l.protocol.name(), "kafka listener up");
            more_listeners.push((sock, kind));
        }
        let http = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("http listen address {}: {e}", cfg.http_listen))?;
        let broker = match &cfg.cluster {
            None => {
                anyhow::ensure!(
                    !cfg.data_dir.join("node.redb").exists(),
                    "{} holds a cluster node's data; start it as that node ([cluster], or \
                     --raft-listen and --peer), or give a single-node broker a directory of its own",
                    cfg.data_dir.display()
                );
                let storage = Arc::new(RedbStorage::open(&cfg.data_dir.join("broker.redb"))?);
                storage.set_reserve(cfg.disk_reserve_mb << 20);
                Broker::start(cfg.clone(), storage)?
            }
            Some(c) => {
                anyhow::ensure!(
                    !cfg.data_dir.join("broker.redb").exists(),
                    "{} holds a single-node broker's data; a cluster node starts on an empty \
                     directory (run this node without [cluster] to keep serving that data)",
                    cfg.data_dir.display()
                );
                let (host, port) = cfg.advertised();
                let node = crate::raft::node::Node::start(crate::raft::node::NodeConfig {
                    id: cfg.node_id as u64,
                    cluster: c.name.clone(),
                    raft_listen: c.raft_listen,
                    addr: crate::raft::NodeAddr {
                        raft: c.raft_listen.to_string(),
                        kafka: format!("{host}:{port}"),
                        listeners: cfg.listeners.iter().map(|l| (l.name.clone(), l.advertised())).collect(),
                    },
                    peers: c.peers.clone(),
                    data_dir: cfg.data_dir.clone(),
                    timing: crate::raft::Timing::from_heartbeat(c.heartbeat_ms),
                    maintenance: Duration::from_secs(30),
                    join: c.join,
                    tls: match &c.tls {
                        None => None,
                        Some(t) => Some(Arc::new(crate::raft::net::RaftTls::new(&t.cert, &t.key, &t.ca)?)),
                    },
                })
                .await?;
                info!(node = cfg.node_id, raft = %c.raft_listen, peers = c.peers.len(), "cluster node started");
                Broker::start_cluster(cfg.clone(), node, c.name.clone())?
            }
        };
        let ticker = broker.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(100));
            let mut last_retention = Instant::now();
            let mut last_txn_sweep = Instant::now();
            loop {
                iv.tick().await;
                ticker.groups.tick(Instant::now());
                if last_txn_sweep.elapsed() >= Duration::from_secs(1) {
                    last_txn_sweep = Instant::now();
                    if let Some(w) = ticker.writer() {
                        w.send(crate::state::Request::Txn(crate::state::TxnOp::Expire {
                            now_ms: foundation::time::now_ms(),
                        }));
                    }
                }
                if last_retention.elapsed() >= Duration::from_secs(30) {
                    last_retention = Instant::now();
                    if let Some(w) = ticker.writer() {
                        w.send(crate::state::Request::Retention { now_ms: foundation::time::now_ms() });
                        w.send(crate::state::Request::Compact);
                    }
                }
            }
        });
        let monitor: crate::monitor::Shared =
            Arc::new(std::sync::Mutex::new(crate::monitor::Monitor::new(cfg.monitor.clone())));
        let feed = if cfg.monitor.enabled {
            let (host, port) = cfg.advertised();
            let group = cfg
                .monitor
                .group_id
                .clone()
                .unwrap_or_else(|| format!("iot-monitor-{}", cfg.node_id));
            let bootstrap = cfg.monitor.bootstrap.clone().unwrap_or(format!("{host}:{port}"));
            let props = cfg.monitor.properties.clone().into_iter().collect();
            Some(monitor::start_feed(&monitor, bootstrap, group, props)?)
        } else {
            crate::monitor::lock(&monitor).feed = "disabled ([monitor] enabled = false)".into();
            None
        };
        let (registry, registry_store) = if cfg.schema_registry {
            let (host, port) = cfg.advertised();
            let bootstrap = cfg.monitor.bootstrap.clone().unwrap_or(format!("{host}:{port}"));
            let props: Vec<(String, String)> = cfg.monitor.properties.clone().into_iter().collect();
            monitor::schema_registry(&bootstrap, &props)?
        } else {
            (axum::Router::new(), None)
        };
        let monitor_metrics = monitor.clone();
        let http_gate = std::sync::Arc::new(foundation::token::Gate::open(
            cfg.http_auth,
            &cfg.http_token_file(),
            "cloud-broker",
        )?);
        let http_gate_metrics = http_gate.clone();
        let gate = crate::limits::Gate::new(cfg.limits.clone());
        let gate_metrics = gate.clone();
        let status = broker.clone();
        let digests = broker.clone();
        let replacer = broker.clone();
        let checker = broker.clone();
        let metrics = broker.clone();
        let health = axum::Router::new()
            .route(
                "/health",
                axum::routing::get(move || {
                    let b = checker.clone();
                    async move {
                        match b.health() {
                            Ok(()) => (axum::http::StatusCode::OK, "ok".to_string()),
                            Err(why) => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("degraded: {why}"),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let b = metrics.clone();
                    let m = monitor_metrics.clone();
                    let g = gate_metrics.clone();
                    let h = http_gate_metrics.clone();
                    async move {
                        let mut page = b.storage_metrics();
                        page.push_str(&format!(
                            "# HELP http_auth_refused_total HTTP requests refused for want of the HTTP token (http_auth)\n# TYPE http_auth_refused_total counter\nhttp_auth_refused_total {}\n",
                            h.refused()
                        ));
                        page.push_str(&crate::api::stats::broker_metrics(&b));
                        g.render(&mut page);
                        b.guard.render(&mut page);
                        page.push_str(&crate::monitor::lock(&m).metrics(foundation::time::now_ms()));
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            page,
                        )
                    }
                }),
            )
            .route(
                "/api/cluster",
                axum::routing::get(move || {
                    let b = status.clone();
                    async move {
                        let mut v = b.cluster_status();
                        crate::api::peers::add_disks(&mut v).await;
                        axum::Json(v)
                    }
                }),
            )
            .route(
                "/api/cluster/replace",
                axum::routing::post(move |q: axum::extract::Query<ReplaceQuery>| {
                    let b = replacer.clone();
                    async move {
                        match b.replace_node(q.old, q.new, &q.raft).await {
                            Ok(()) => (
                                axum::http::StatusCode::OK,
                                axum::Json(serde_json::json!({ "replaced": q.old, "by": q.new })),
                            ),
                            Err(e) => (
                                axum::http::StatusCode::CONFLICT,
                                axum::Json(serde_json::json!({ "error": e })),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/api/cluster/digests",
                axum::routing::get(move || {
                    let b = digests.clone();
                    // Reads every replica's log: off the runtime's worker threads.
                    async move {
                        let v = tokio::task::spawn_blocking(move || b.cluster_digests())
                            .await
                            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
                        axum::Json(v)
                    }
                }),
            )
            .merge(crate::monitor::http::routes(monitor))
            .merge(registry)
            .layer(axum::middleware::from_fn_with_state(http_gate, foundation::token::middleware));
        info!(node_id = cfg.node_id, kafka = %cfg.kafka_listen, http = %cfg.http_listen, "cloud broker running");
        let closer = broker.clone();
        for (sock, kind) in more_listeners {
            let (b, g) = (broker.clone(), gate.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::server::serve_on(b, sock, g, kind).await {
                    tracing::error!(error = %e, "a kafka listener ended");
                }
            });
        }
        let r = tokio::select! {
            r = crate::server::serve(broker, listener, gate) => r.map_err(anyhow::Error::from),
            r = axum::serve(http, health) => r.map_err(anyhow::Error::from),
            _ = foundation::shutdown::signal_received() => {
                info!("shutting down");
                Ok(())
            }
        };
        // The monitor and the registry read through this broker: they stop before it does
        // (the monitor leaves its group).
        let _ = tokio::task::spawn_blocking(move || drop((feed, registry_store))).await;
        closer.shutdown().await;
        info!("stopped; the data files are closed");
        r
    })
}
