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
    /// HTTP listen address (`/health`, `/api/cluster`, `/api/cluster/digests`) [default: 127.0.0.1:8080].
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
        Cmd::Cluster(ClusterCmd::Status { nodes, json }) => cluster_status(&nodes, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    if a.raft_listen.is_some() || !a.peers.is_empty() || a.cluster_name.is_some() {
        let c = cfg.cluster.get_or_insert_with(|| crate::config::ClusterConfig {
            name: "iot-appliance".into(),
            raft_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9192)),
            peers: Default::default(),
            heartbeat_ms: crate::config::default_heartbeat_ms(),
        });
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
                    },
                    peers: c.peers.clone(),
                    data_dir: cfg.data_dir.clone(),
                    timing: crate::raft::Timing::from_heartbeat(c.heartbeat_ms),
                    maintenance: Duration::from_secs(30),
                })
                .await?;
                info!(node = cfg.node_id, raft = %c.raft_listen, peers = c.peers.len(), "cluster node started");
                Broker::start_cluster(cfg.clone(), node, c.name.clone())
            }
        };
        let ticker = broker.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(100));
            let mut last_retention = Instant::now();
            loop {
                iv.tick().await;
                ticker.groups.tick(Instant::now());
                if last_retention.elapsed() >= Duration::from_secs(30) {
                    last_retention = Instant::now();
                    if let Some(w) = ticker.writer() {
                        w.send(crate::state::Request::Retention { now_ms: foundation::time::now_ms() });
                        w.send(crate::state::Request::Compact);
                    }
                }
            }
        });
        let status = broker.clone();
        let digests = broker.clone();
        let health = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/api/cluster",
                axum::routing::get(move || {
                    let b = status.clone();
                    async move { axum::Json(b.cluster_status()) }
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
            );
        info!(node_id = cfg.node_id, kafka = %cfg.kafka_listen, http = %cfg.http_listen, "cloud broker running");
        tokio::select! {
            r = crate::server::serve(broker, listener) => r?,
            r = axum::serve(http, health) => r?,
            _ = foundation::shutdown::signal_received() => info!("shutting down"),
        }
        anyhow::Ok(())
    })
}

/// `cluster status`: asks every node for `/api/cluster`, takes each partition from the node
/// that leads it (else the first that answered), and prints the result.
fn cluster_status(nodes: &[String], json: bool) -> anyhow::Result<()> {
    let mut views = Vec::new();
    for n in nodes {
        match foundation::http::json(n, "GET", "/api/cluster") {
            Ok(v) if v["mode"] == "cluster" => views.push(v),
            Ok(v) => anyhow::bail!("{n} is not a cluster node (mode {})", v["mode"]),
            Err(e) => eprintln!("cloud-broker: {n}: {e} (left out)"),
        }
    }
    if views.is_empty() {
        anyhow::bail!("no node answered");
    }
    let merged = merge_status(&views);
    if json {
        println!("{}", serde_json::to_string_pretty(&merged)?);
        return Ok(());
    }
    print!("{}", render_status(&merged));
    Ok(())
}

/// One status from several nodes' `/api/cluster`: the first answer's nodes and controller,
/// and every partition as the node leading it reports it (with the answering node noted).
fn merge_status(views: &[serde_json::Value]) -> serde_json::Value {
    let mut partitions: std::collections::BTreeMap<(String, i64), serde_json::Value> = Default::default();
    for v in views {
        for p in v["partitions"].as_array().into_iter().flatten() {
            let key = (
                p["topic"].as_str().unwrap_or_default().to_string(),
                p["partition"].as_i64().unwrap_or(-1),
            );
            let leads = p["leader"] == v["node"];
            let mut p = p.clone();
            p["seen_by"] = v["node"].clone();
            match partitions.get(&key) {
                Some(have) if !leads || have["leader"] == have["seen_by"] => {}
                _ => {
                    partitions.insert(key, p);
                }
            }
        }
    }
    let controller = views
        .iter()
        .map(|v| v["controller"].clone())
        .find(|c| c.as_i64().is_some_and(|c| c > 0))
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "nodes": views.first().map(|v| v["nodes"].clone()).unwrap_or_default(),
        "answered": views.iter().map(|v| v["node"].clone()).collect::<Vec<_>>(),
        "controller": controller,
        "partitions": partitions.into_values().collect::<Vec<_>>(),
    })
}

/// The tables `cluster status` prints.
fn render_status(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let mut out = String::new();
    let answered = ids(&s["answered"]);
    let _ = writeln!(out, "controller: node {}   answered: {answered}", s["controller"]);
    let _ = writeln!(out, "\n{:<6} {:<22} {:<22}", "NODE", "KAFKA", "RAFT");
    for n in s["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<6} {:<22} {:<22}",
            n["id"],
            n["kafka"].as_str().unwrap_or("-"),
            n["raft"].as_str().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>9} {:>6} {:>5} {:<10} {:<10} {:<16} {:>14}",
        "TOPIC", "PARTITION", "LEADER", "TERM", "REPLICAS", "ISR", "LAG (entries)", "HIGH WATERMARK"
    );
    for p in s["partitions"].as_array().into_iter().flatten() {
        let leader = match p["leader"].as_i64() {
            Some(l) if l > 0 => l.to_string(),
            _ => "none".into(),
        };
        let lag = p["lag"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "-".into());
        let hw = p["high_watermark"].as_i64().map_or("-".into(), |h| h.to_string());
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>6} {:>5} {:<10} {:<10} {:<16} {:>14}",
            p["topic"].as_str().unwrap_or_default(),
            p["partition"],
            leader,
            p["term"],
            ids(&p["replicas"]),
            ids(&p["isr"]),
            lag,
            hw
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_takes_each_partition_from_its_leader() {
        let node = |id: i64, leader: i64, hw: i64| {
            serde_json::json!({
                "mode": "cluster", "node": id, "controller": 1,
                "nodes": [{"id": 1, "kafka": "a:1", "raft": "a:2"}],
                "partitions": [{"topic": "t", "partition": 0, "leader": leader, "term": 3,
                                "replicas": [1, 2], "isr": [1, 2], "lag": {}, "high_watermark": hw}],
            })
        };
        // Node 1 follows (stale watermark), node 2 leads: node 2's view wins, in either order.
        for views in [
            vec![node(1, 2, 5), node(2, 2, 9)],
            vec![node(2, 2, 9), node(1, 2, 5)],
        ] {
            let m = merge_status(&views);
            assert_eq!(m["partitions"][0]["high_watermark"], 9);
            assert_eq!(m["partitions"][0]["seen_by"], 2);
        }
        let text = render_status(&merge_status(&[node(1, -1, 5)]));
        assert!(
            text.contains("none"),
            "a partition without a leader says so: {text}"
        );
        assert!(text.contains("HIGH WATERMARK"));
    }
}
