//! `edge-agent`: the gateway binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edge_agent::agent;
use edge_agent::config::Config;
use edge_agent::log::redb_store::RedbLog;
use edge_agent::log::{LogError, LogStore};

/// The gateway: devices publish readings over MQTT; every reading lands in a durable,
/// partitioned log on disk, and only then is the device told it may forget it.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent (MQTT broker, ingest, admin HTTP) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Inspect the log, of a stopped agent (its data dir) or a running one (its admin API).
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (log and gateway id) [default: ./data/edge].
    #[arg(long, env = "EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Admin HTTP address [default: 127.0.0.1:8081].
    #[arg(long, env = "EDGE_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// MQTT listen address [default: 127.0.0.1:1883].
    #[arg(long, env = "EDGE_MQTT_LISTEN")]
    mqtt_listen: Option<std::net::SocketAddr>,
    /// Gateway id [default: generated once, kept in the data dir].
    #[arg(long, env = "EDGE_GATEWAY_ID")]
    gateway_id: Option<String>,
    /// Partitions of the telemetry topic (fixed when the log is created) [default: 6].
    #[arg(long, env = "EDGE_TELEMETRY_PARTITIONS")]
    telemetry_partitions: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum LogCmd {
    /// Topics, partitions, offsets and sizes.
    Stats {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Records of one partition, decoded to readable JSON (one per line).
    Tail {
        #[command(flatten)]
        common: Common,
        /// Topic (telemetry, device-status, dead-letter).
        #[arg(long)]
        topic: String,
        /// Partition.
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// First offset (the first stored one at or after it).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print compact JSON (one object per line) instead of pretty JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = match &common.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = common.admin_listen {
        cfg.admin.listen = a;
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run(a) => {
            let mut cfg = load(&a.common)?;
            if let Some(m) = a.mqtt_listen {
                cfg.mqtt.listen = m;
            }
            if a.gateway_id.is_some() {
                cfg.gateway_id = a.gateway_id;
            }
            if let Some(p) = a.telemetry_partitions {
                cfg.topics.entry("telemetry".into()).or_default().partitions = Some(p);
            }
            cfg.validate()?;
            agent::run(cfg)
        }
        Cmd::Log {
            cmd: LogCmd::Stats { common, json },
        } => {
            let cfg = load(&common)?;
            let v = match open_local(&cfg)? {
                Some(store) => edge_agent::admin::log_json(&store)?,
                None => http_get_json(cfg.admin.listen, "/api/log")?,
            };
            if json {
                println!("{v}");
            } else {
                print_stats(&v);
            }
            Ok(())
        }
        Cmd::Log {
            cmd:
                LogCmd::Tail {
                    common,
                    topic,
                    partition,
                    from,
                    limit,
                    json,
                },
        } => {
            let cfg = load(&common)?;
            let rows: Vec<serde_json::Value> = match open_local(&cfg)? {
                Some(store) => store
                    .read(&topic, partition, from, limit, usize::MAX)?
                    .iter()
                    .map(|r| edge_agent::render::record(&topic, r))
                    .collect(),
                None => {
                    let path = format!(
                        "/api/log/records?topic={topic}&partition={partition}&from={from}&limit={limit}"
                    );
                    serde_json::from_value(http_get_json(cfg.admin.listen, &path)?)?
                }
            };
            for r in rows {
                if json {
                    println!("{r}");
                } else {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                }
            }
            Ok(())
        }
    }
}

/// The data dir's log if no running agent holds it; `None` if one does (use its admin API).
fn open_local(cfg: &Config) -> anyhow::Result<Option<RedbLog>> {
    let path = agent::log_path(&cfg.data_dir);
    if !path.exists() {
        anyhow::bail!("no log at {} (wrong --data-dir?)", path.display());
    }
    match RedbLog::open(&path) {
        Ok(s) => Ok(Some(s)),
        Err(LogError::Storage(msg)) if msg.contains("another process") => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn print_stats(v: &serde_json::Value) {
    println!(
        "{:<16} {:>4} {:>14} {:>14} {:>12} {:>14}",
        "topic", "part", "first_offset", "next_offset", "records", "bytes"
    );
    for t in v["topics"].as_array().into_iter().flatten() {
        for p in t["partitions"].as_array().into_iter().flatten() {
            println!(
                "{:<16} {:>4} {:>14} {:>14} {:>12} {:>14}",
                t["name"].as_str().unwrap_or("?"),
                p["partition"],
                p["first_offset"],
                p["next_offset"],
                p["records"],
                p["bytes"]
            );
        }
    }
}

/// A GET against the running agent's admin API (plain HTTP/1.1 on loopback).
fn http_get_json(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("the log is in use but no agent answers on {addr} (pass --admin-listen)"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    anyhow::ensure!(status == "200", "admin API {path}: HTTP {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        body = rest.get(n + 2..).context("short chunk")?;
    }
}
