//! The `edge-agent` command line (the binary is a one-line wrapper; the `demo` binary runs
//! it as a subcommand of itself).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::agent;
use crate::config::Config;
use crate::log::redb_store::RedbLog;
use crate::log::{LogError, LogStore};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

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
    /// Re-send a range of the log to the cloud through the running agent's bridge; the
    /// records carry a `replay` header. Shows progress (rate, ETA) until the cloud has it all.
    Replay(ReplayArgs),
    /// Inspect the log, of a stopped agent (its data dir) or a running one (its admin API).
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// Device credentials for `[mqtt] auth = "password"` (the credentials file: Argon2id
    /// hashes; a running agent picks changes up at the next connect).
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Make development certificates: a CA (kept and reused), the agent's server certificate
    /// for `[mqtt.tls]`, and device certificates whose CN is the device id (production users
    /// bring their own PKI).
    Certs {
        /// Where they go (`ca.pem`, `ca.key`, `agent.pem`, `agent.key`, `device-<id>.pem`...).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Names devices reach the agent by (DNS names or IP addresses); repeat or
        /// comma-separate.
        #[arg(long = "host", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Device certificates to make (`device-<id>.pem` and `.key`).
        #[arg(long = "device", value_delimiter = ',')]
        devices: Vec<String>,
        /// Days the new certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Add a device (or give it a new password). Without --password-stdin a random password
    /// is made and printed once: it is not kept anywhere but in the device.
    Add {
        #[command(flatten)]
        common: Common,
        /// The device id (its MQTT client id and username).
        id: String,
        /// Read the password from standard input (one line) instead of making one.
        #[arg(long, conflicts_with = "certificate")]
        password_stdin: bool,
        /// No password: the device logs in over TLS with a client certificate whose CN is its
        /// id (`edge-agent certs --device ID` makes one).
        #[arg(long)]
        certificate: bool,
    },
    /// Provision a WiFi board: make the device's password (added to the credentials as `add`
    /// does) and write the board's config sector image, with the WiFi network, the gateway's
    /// address and the sampling period, to flash at the board's config address (its README
    /// says where). The WiFi password is read from standard input (one line; an empty line for
    /// an open network). One firmware binary then serves the whole fleet.
    Provision {
        #[command(flatten)]
        common: Common,
        /// The device id (its MQTT client id and username).
        id: String,
        /// The WiFi network's SSID.
        #[arg(long)]
        wifi_ssid: String,
        /// The gateway's MQTT address as the device reaches it: `HOST:PORT` (an IPv4 address
        /// or a host name).
        #[arg(long)]
        gateway: String,
        /// Time between two samples, ms.
        #[arg(long, default_value_t = 10_000)]
        sample_period_ms: u32,
        /// Most readings per publish.
        #[arg(long, default_value_t = 8)]
        batch: u8,
        /// Where to write the sector image (4096 bytes).
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove a device: its next connection is refused.
    Remove {
        #[command(flatten)]
        common: Common,
        /// The device id.
        id: String,
    },
    /// The devices that may connect (ids and when they were added; never a secret).
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    /// Forward the log to this Kafka-compatible cloud (bootstrap `HOST:PORT[,HOST:PORT]`):
    /// enables the bridge with defaults, or overrides `[bridge] bootstrap`.
    #[arg(long, env = "EDGE_CLOUD")]
    cloud: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("start").required(true).args(["from_offset", "since"])))]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Edge topic (telemetry, device-status, dead-letter).
    #[arg(long)]
    topic: String,
    /// One partition [default: all].
    #[arg(long)]
    partition: Option<u32>,
    /// From this offset to the current end.
    #[arg(long)]
    from_offset: Option<u64>,
    /// From records this old to the current end: `90s`, `15m`, `2h`, `3d`.
    #[arg(long, value_parser = parse_duration_ms)]
    since: Option<u64>,
    /// Return once queued instead of following progress.
    #[arg(long)]
    no_wait: bool,
}

/// `90s`, `15m`, `2h`, `3d`, `500ms` or plain seconds → milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 90s, 15m, 2h, 3d)"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} too large"))
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
    /// Check every stored row and chunk (checksums, decoding, counts) and redb's pages; list
    /// what is damaged and which offsets it held. Exits with status 1 if anything is.
    Verify {
        #[command(flatten)]
        common: Common,
        /// Also move each damaged item to the log's quarantine table (its bytes kept) and
        /// rebuild what counted it: reads and forwarding go on past the hole, offsets are never
        /// reused. What a damaged chunk held is lost at the edge (the devices were told it was
        /// stored); the report says which offsets.
        #[arg(long)]
        quarantine: bool,
        /// Open a log that holds less than it acknowledged (it rolled back: the agent refuses to
        /// start on it and says so): each such partition goes on after the offsets it had
        /// handed out, none is given twice, and the lost ranges are recorded. Agent stopped.
        #[arg(long)]
        accept_rollback: bool,
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

/// Parses `args` (the first is the program name) and runs the command.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    foundation::logging::init("EDGE_LOG", "info,rumqttd=off");
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
            if let Some(c) = a.cloud {
                cfg.bridge.get_or_insert_with(Default::default).bootstrap = c;
            }
            cfg.validate()?;
            agent::run(cfg)
        }
        Cmd::Replay(a) => replay(a),
        Cmd::Devices { cmd } => devices(cmd),
        Cmd::Certs {
            dir,
            hosts,
            devices,
            days,
        } => certs(&dir, &hosts, &devices, days),
        Cmd::Log {
            cmd: LogCmd::Stats { common, json },
        } => {
            let cfg = load(&common)?;
            let v = match open_local(&cfg)? {
                Some(store) => crate::admin::log_json(&store)?,
                None => http_get_json(&cfg, "/api/log")?,
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
                LogCmd::Verify {
                    common,
                    quarantine,
                    accept_rollback,
                    json,
                },
        } => {
            let cfg = load(&common)?;
            let local = if accept_rollback {
                let path = agent::log_path(&cfg.data_dir);
                Some(
                    RedbLog::open_with(&path, true)
                        .with_context(|| format!("opening {} (is the agent stopped?)", path.display()))?,
                )
            } else {
                open_local(&cfg)?
            };
            let v = match local {
                Some(store) => {
                    let r = if quarantine {
                        store.quarantine()?
                    } else {
                        store.verify()?
                    };
                    let mut v = serde_json::to_value(&r)?;
                    v["clean"] = r.is_clean().into();
                    v
                }
                None if quarantine => http_json(&cfg, "POST", "/api/log/quarantine")?,
                None => http_get_json(&cfg, "/api/log/verify")?,
            };
            if json {
                println!("{v}");
            } else {
                print_verify(&v, quarantine);
            }
            let damaged = v["damaged"].as_array().is_some_and(|d| !d.is_empty());
            if damaged && !quarantine {
                std::process::exit(1);
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
                    .map(|r| crate::render::record(&topic, r))
                    .collect(),
                None => {
                    let path = format!(
                        "/api/log/records?topic={topic}&partition={partition}&from={from}&limit={limit}"
                    );
                    serde_json::from_value(http_get_json(&cfg, &path)?)?
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

fn print_verify(v: &serde_json::Value, quarantined: bool) {
    println!(
        "checked {} topics, {} partitions, {} chunks ({} records, {} bytes), {} dedup states, {} metadata values",
        v["topics"], v["partitions"], v["chunks"], v["records"], v["bytes"], v["streams"], v["meta"]
    );
    let damaged = v["damaged"].as_array().cloned().unwrap_or_default();
    if damaged.is_empty() {
        println!("no damaged rows or chunks");
    }
    for d in &damaged {
        println!(
            "{} {}: {} ({})",
            if quarantined { "QUARANTINED" } else { "DAMAGED" },
            d["key"].as_str().unwrap_or("?"),
            d["what"].as_str().unwrap_or(""),
            d["error"].as_str().unwrap_or("")
        );
    }
    match v["page_damage"].as_str() {
        Some(p) => println!("redb page check: {p}"),
        None => println!("redb page check: ok"),
    }
    if v["orphan_chunks"].as_u64().unwrap_or(0) > 0 {
        println!(
            "{} chunks belong to a topic whose row was quarantined",
            v["orphan_chunks"]
        );
    }
    let q = v["quarantined"].as_array().map_or(0, Vec::len);
    if q > 0 {
        println!("{q} items are in the quarantine table");
    }
    if !damaged.is_empty() && !quarantined {
        println!("run `edge-agent log verify --quarantine` to put them aside and go on");
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

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let cfg = load(&a.common)?;
    let mut path = format!("/api/replay?topic={}", a.topic);
    if let Some(p) = a.partition {
        path += &format!("&partition={p}");
    }
    match (a.from_offset, a.since) {
        (Some(o), _) => path += &format!("&from_offset={o}"),
        (None, Some(ms)) => path += &format!("&since_ms={ms}"),
        (None, None) => unreachable!("clap requires one"),
    }
    let st = http_json(&cfg, "POST", &path).context("replay goes through the running agent's bridge")?;
    let id = st["id"].as_u64().context("no job id in the agent's answer")?;
    eprintln!("replay job {id}: {} records of {} queued", st["total"], a.topic);
    if a.no_wait {
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        // The agent may restart meanwhile (the job is saved and goes on): wait a minute for it.
        let st = match http_json(&cfg, "GET", &format!("/api/replay/{id}")) {
            Ok(st) => {
                unreachable_since = None;
                st
            }
            // Only a connection failure is worth waiting for; an answer (e.g. 404) is final.
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<foundation::http::Error>()
                        .is_some_and(|e| e.is_unreachable())
                }) =>
            {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(e.context("the agent has been unreachable for a minute"));
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e),
        };
        let (total, acked, failed) = (
            st["total"].as_u64().unwrap_or(0),
            st["acked"].as_u64().unwrap_or(0),
            st["failed"].as_u64().unwrap_or(0),
        );
        let elapsed = st["elapsed_s"].as_f64().unwrap_or(0.0).max(0.001);
        let rate = acked as f64 / elapsed;
        let eta = if rate > 0.0 {
            total.saturating_sub(acked) as f64 / rate
        } else {
            f64::INFINITY
        };
        let done = st["done"].as_bool().unwrap_or(false);
        let frac = if total == 0 {
            1.0
        } else {
            acked as f64 / total as f64
        };
        if tty {
            let width = 30;
            let filled = ((frac * width as f64) as usize).min(width);
            eprint!(
                "\r[{}{}] {:>5.1}% {acked}/{total} {rate:>9.0} rec/s ETA {}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                frac * 100.0,
                if eta.is_finite() {
                    format!("{eta:.0}s")
                } else {
                    "?".into()
                }
            );
            let _ = std::io::stderr().flush();
        } else if done || last_line.elapsed() >= std::time::Duration::from_secs(2) {
            last_line = std::time::Instant::now();
            eprintln!(
                "replay {id}: {acked}/{total} acknowledged ({:.1}%), {rate:.0} records/s",
                frac * 100.0
            );
        }
        if done {
            if tty {
                eprintln!();
            }
            anyhow::ensure!(failed == 0, "replay {id}: {failed} records failed");
            let resent = st["resent"].as_u64().unwrap_or(0);
            println!(
                "replay {id}: {acked} records re-sent and acknowledged in {elapsed:.1} s{}",
                if resent > 0 {
                    format!(" ({resent} sent again after a new session; they may be in the cloud twice)")
                } else {
                    String::new()
                }
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A GET against the running agent's admin API.
fn http_get_json(cfg: &Config, path: &str) -> anyhow::Result<serde_json::Value> {
    http_json(cfg, "GET", path)
}

/// A request without a body against the running agent's admin API; its answer must be 200
/// with JSON. The admin token is presented when its file is there (`[admin] auth`).
fn http_json(cfg: &Config, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let addr = cfg.admin.listen;
    let token = match foundation::token::read(&cfg.admin_token_file()) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context("the admin token")),
    };
    foundation::http::json_with_token(&addr.to_string(), method, path, token.as_deref()).map_err(
        |e| match e {
            e @ foundation::http::Error::Unreachable { .. } => {
                anyhow::Error::new(e).context(format!("no agent answers on {addr} (pass --admin-listen)"))
            }
            e => e.into(),
        },
    )
}

/// Sets device `id`'s password in the credentials file at `path` (made if missing); whether
/// the device was there already.
fn store_password(path: &std::path::Path, id: &str, password: &str) -> anyhow::Result<bool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut c = crate::credentials::Credentials::load(path)?;
    let replaced = c.devices.contains_key(id);
    c.set(id, password)?;
    c.save(path)?;
    Ok(replaced)
}

/// `edge-agent certs`.
fn certs(dir: &std::path::Path, hosts: &[String], devices: &[String], days: u32) -> anyhow::Result<()> {
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let ca = foundation::tls::DevCa::open_or_create(dir, "iot-appliance edge development CA")?;
    println!("CA certificate           {}", ca.cert_path().display());
    let agent = ca.issue("agent", "edge-agent", hosts, foundation::tls::Role::Server, days)?;
    println!("agent certificate        {}", agent.cert.display());
    println!("agent key                {}", agent.key.display());
    for id in devices {
        anyhow::ensure!(
            vocab::wire::is_valid_device_id(id),
            "{id:?} is not a device id (1-32 of A-Z a-z 0-9 - _ .)"
        );
        let d = ca.issue(
            &format!("device-{id}"),
            id,
            &[],
            foundation::tls::Role::Client,
            days,
        )?;
        println!("device {id:<17} {}", d.cert.display());
    }
    println!(
        "development certificates only: the CA key is in {}",
        dir.join("ca.key").display()
    );
    Ok(())
}

/// `edge-agent devices ...`.
fn devices(cmd: DevicesCmd) -> anyhow::Result<()> {
    use crate::credentials::{generate_password, Credentials, FILE_NAME};
    let path = |common: &Common| -> anyhow::Result<PathBuf> {
        let cfg = load(common)?;
        Ok(cfg
            .mqtt
            .credentials_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join(FILE_NAME)))
    };
    match cmd {
        DevicesCmd::Add {
            common,
            id,
            password_stdin,
            certificate,
        } => {
            let path = path(&common)?;
            if certificate {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut c = Credentials::load(&path)?;
                c.set_certificate(&id)?;
                c.save(&path)?;
                eprintln!(
                    "added device {id} (client certificate, no password) in {}",
                    path.display()
                );
                return Ok(());
            }
            let (password, made) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                (line.trim_end_matches(['\r', '\n']).to_string(), false)
            } else {
                (generate_password()?, true)
            };
            let replaced = store_password(&path, &id, &password)?;
            eprintln!(
                "{} device {id} in {}",
                if replaced { "new password for" } else { "added" },
                path.display()
            );
            if made {
                // Printed once, to standard output alone (a script can take it).
                println!("{password}");
            }
            Ok(())
        }
        DevicesCmd::Provision {
            common,
            id,
            wifi_ssid,
            gateway,
            sample_period_ms,
            batch,
            out,
        } => {
            use firmware::provision::{Gateway, Provision, SECTOR};
            let (host, port) = gateway
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--gateway {gateway:?}: expected HOST:PORT"))?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let wifi_password = line.trim_end_matches(['\r', '\n']);
            let password = generate_password()?;
            let record = Provision {
                device_id: &id,
                mqtt_password: &password,
                wifi_ssid: &wifi_ssid,
                wifi_password,
                gateway: Gateway { host, port },
                sample_period_ms,
                batch,
            };
            let mut sector = [0xFFu8; SECTOR];
            record.encode(&mut sector).map_err(|e| anyhow::anyhow!("{e}"))?;
            // The image first (it holds the password the device will use), then the credentials.
            foundation::files::write_private_bytes(&out, &sector)?;
            let path = path(&common)?;
            let replaced = store_password(&path, &id, &password)?;
            eprintln!(
                "{} device {id} in {}; its config sector is {} (owner-only: it holds the device's \
                 and the WiFi's passwords). Flash it at the board's config address (see its README).",
                if replaced { "new password for" } else { "added" },
                path.display(),
                out.display()
            );
            Ok(())
        }
        DevicesCmd::Remove { common, id } => {
            let path = path(&common)?;
            let mut c = Credentials::load(&path)?;
            anyhow::ensure!(
                c.devices.remove(&id).is_some(),
                "no device {id:?} in {}",
                path.display()
            );
            c.save(&path)?;
            eprintln!("removed device {id} from {}", path.display());
            Ok(())
        }
        DevicesCmd::List { common, json } => {
            let c = Credentials::load(&path(&common)?)?;
            if json {
                let v: Vec<serde_json::Value> = c
                    .devices
                    .iter()
                    .map(|(id, e)| {
                        let login = if e.hash.is_empty() {
                            "certificate"
                        } else {
                            "password"
                        };
                        serde_json::json!({ "id": id, "added_ms": e.added_ms, "login": login })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (id, e) in &c.devices {
                    let login = if e.hash.is_empty() {
                        "certificate"
                    } else {
                        "password"
                    };
                    println!(
                        "{id}\t{login}\tadded {}",
                        foundation::time::rfc3339_ms(e.added_ms)
                    );
                }
            }
            Ok(())
        }
    }
}
