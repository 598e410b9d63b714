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
    /// HTTP listen address (health) [default: 127.0.0.1:8080].
    #[arg(long, env = "CLOUD_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// host:port that Metadata gives clients (Kafka's advertised.listeners) [default: the Kafka listen address].
    #[arg(long, env = "CLOUD_ADVERTISE")]
    advertise: Option<String>,
}

/// Parses `args` (the first is the program name) and runs the command.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let Cmd::Run(a) = Cli::parse_from(args).cmd;
    foundation::logging::init("CLOUD_LOG", "info");
    match run(a) {
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
    cfg.validate()?;
    let storage = Arc::new(RedbStorage::open(&cfg.data_dir.join("broker.redb"))?);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let broker = Broker::start(cfg.clone(), storage)?;
        let listener = crate::server::bind(cfg.kafka_listen).await?;
        let http = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("http listen address {}: {e}", cfg.http_listen))?;
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
        let health = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        info!(node_id = cfg.node_id, kafka = %cfg.kafka_listen, http = %cfg.http_listen, "cloud broker running");
        tokio::select! {
            r = crate::server::serve(broker, listener) => r?,
            r = axum::serve(http, health) => r?,
            _ = foundation::shutdown::signal_received() => info!("shutting down"),
        }
        anyhow::Ok(())
    })
}
