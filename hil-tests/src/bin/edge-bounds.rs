//! `edge-bounds`: what MQTT clients can make the edge agent hold in memory, and what a hostile
//! one can add, against bare rumqttd (the agent's broker, sized the same, with no front) in the
//! same run. Both run with `auth = "none"`: anyone may connect.
//!
//! Phases, each followed by the server's `VmRSS`:
//! 1. `--devices` devices, on `--clients` threads, one after another: connect, subscribe to
//!    their ack topic, publish one batch (3 readings) at QoS 1, wait for the PUBACK, disconnect.
//!    What a device costs is the RSS it added, divided by the devices.
//! 2. A hostile client, `--hostile` times: connect under a new client id, subscribe to a new
//!    filter (`sensors/h-<i>`, one per attempt), publish `--payload` bytes to that topic, and
//!    disconnect (on the agent, past `max_devices` = `--devices`, each is refused).
//!
//! ```text
//! cargo build --release -p edge-agent -p hil-tests
//! ./target/release/edge-bounds            # --devices 10000 --hostile 20000 --payload 4096
//! ```

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use foundation::process::Guard;
use hil_tests::raw_mqtt::{self, read_packet};

#[derive(Parser, Debug)]
#[command(about = "Memory the edge agent holds for devices and for a hostile client, against bare rumqttd")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// (internal) Bare rumqttd with the agent's configuration and a link subscribed like the
    /// agent's, discarding what it receives.
    ServeRumqttd {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct Opts {
    /// Devices in phase 1.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Hostile attempts in phase 2 (each a new client id, filter and topic).
    #[arg(long, default_value_t = 20_000)]
    hostile: usize,
    /// Bytes each hostile publish carries.
    #[arg(long, default_value_t = 4096)]
    payload: usize,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The edge-agent binary (build it with `cargo build --release -p edge-agent`).
    #[arg(long, default_value = "target/release/edge-agent")]
    agent_bin: PathBuf,
    /// Devices send DISCONNECT before closing. Bare rumqttd 0.20 then fails: it counts the
    /// end of such a connection twice, and the second count ends the next connection given the
    /// same internal id (the agent's front keeps the socket open until rumqttd closes it).
    #[arg(long)]
    disconnect: bool,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::ServeRumqttd { listen }) = cli.cmd {
        return serve_rumqttd(listen);
    }
    let o = cli.opts;
    anyhow::ensure!(
        o.agent_bin.is_file(),
        "{} missing: cargo build --release -p edge-agent",
        o.agent_bin.display()
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in ["edge-agent", "bare rumqttd"] {
        match measure(&o, target) {
            Ok(r) => rows.push(r),
            Err(e) => failed.push(format!("{target}: {e:#}")),
        }
    }
    println!("\n| server | RSS idle | after {} devices | per device | after {} hostile attempts ({} B each) | hostile growth | hostile attempts refused |", o.devices, o.hostile, o.payload);
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.2} KiB | {:.1} MiB | {:+.1} MiB | {} |",
            r.target,
            r.idle as f64 / 1024.0,
            r.devices as f64 / 1024.0,
            (r.devices as f64 - r.idle as f64) / o.devices as f64,
            r.hostile as f64 / 1024.0,
            (r.hostile as f64 - r.devices as f64) / 1024.0,
            r.refused
        );
    }
    for f in &failed {
        println!("| {f} |");
    }
    if o.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"server": r.target, "rss_idle_kib": r.idle, "rss_devices_kib": r.devices,
                "rss_hostile_kib": r.hostile, "refused": r.refused})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"runs": v, "failed": failed}))?
        );
    }
    anyhow::ensure!(
        rows.iter().any(|r| r.target == "edge-agent"),
        "the edge agent failed"
    );
    Ok(())
}

struct Row {
    target: &'static str,
    idle: u64,
    devices: u64,
    hostile: u64,
    refused: usize,
}

fn measure(o: &Opts, target: &'static str) -> anyhow::Result<Row> {
    let dir = foundation::scratch::TempDir::new("edge-bounds")?;
    let port = foundation::net::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = foundation::net::free_port()?;
    let mut cmd = if target == "edge-agent" {
        let cfg = dir.path().join("edge.toml");
        std::fs::write(
            &cfg,
            format!("[mqtt]\nmax_devices = {}\nmax_connections = 1000\n", o.devices),
        )?;
        let mut c = Command::new(&o.agent_bin);
        c.arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--mqtt-listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"));
        c
    } else {
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("serve-rumqttd").arg("--listen").arg(addr.to_string());
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = Guard::spawn(target, &mut cmd)?;
    server.wait_ready(Duration::from_secs(20), "the MQTT port", || {
        foundation::net::listening(port)
    })?;
    let pid = server.pid();
    let rss = || foundation::procfs::rss_kib(pid).0;
    // Settle: the first connections allocate the broker's pools.
    device(addr, "warm-up", o.disconnect)?;
    let idle = rss();

    eprintln!("[{target}] {} devices ...", o.devices);
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..o.clients)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= o.devices - 1 {
                            return Ok(());
                        }
                        device(addr, &format!("dev-{i}"), o.disconnect)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    eprintln!("[{target}]   {:.1} s", t.elapsed().as_secs_f64());
    let devices = settled(rss);

    eprintln!("[{target}] {} hostile attempts ...", o.hostile);
    let refused = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let payload = vec![0x5a; o.payload];
    std::thread::scope(|s| {
        for _ in 0..o.clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.hostile {
                    return;
                }
                if !hostile(addr, i, &payload) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let hostile = settled(rss);
    drop(server);
    Ok(Row {
        target,
        idle,
        devices,
        hostile,
        refused: refused.into_inner(),
    })
}

/// RSS once it stops changing (a broker frees or fills buffers just after the clients leave).
fn settled(rss: impl Fn() -> u64) -> u64 {
    let mut last = rss();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = rss();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn connect(addr: SocketAddr, id: &str) -> anyhow::Result<TcpStream> {
    let mut c = raw_mqtt::open(addr)?;
    c.write_all(&raw_mqtt::connect_frame(id))?;
    Ok(c)
}

/// SUBSCRIBE at QoS 0 (the device's ack subscription, as the firmware makes it).
fn subscribe(c: &mut TcpStream, filter: &str) -> std::io::Result<()> {
    let mut v = vec![0, 1];
    raw_mqtt::string(&mut v, filter.as_bytes());
    v.push(0);
    c.write_all(&raw_mqtt::frame(0x82, &v))
}

fn publish(c: &mut TcpStream, topic: &str, payload: &[u8]) -> std::io::Result<()> {
    c.write_all(&raw_mqtt::publish_frame(topic, payload))
}

/// A device's visit: its ack subscription and one batch, PUBACKed.
fn device(addr: SocketAddr, id: &str, disconnect: bool) -> anyhow::Result<()> {
    let mut c = connect(addr, id)?;
    match read_packet(&mut c) {
        Some((0x20, b)) if b.get(1) == Some(&0) => {}
        other => bail!("{id}: no CONNACK accepting it: {other:?}"),
    }
    subscribe(&mut c, &format!("devices/{id}/ack"))?;
    publish(&mut c, &format!("sensors/{id}"), &raw_mqtt::batch(id, 1))?;
    loop {
        match read_packet(&mut c) {
            Some((h, _)) if h >> 4 == 4 => break,
            Some(_) => {}
            None => bail!("{id}: closed before its PUBACK"),
        }
    }
    if disconnect {
        c.write_all(&raw_mqtt::DISCONNECT)?;
    }
    Ok(())
}

/// A hostile attempt; whether it was let through (a SUBACK and a PUBACK).
fn hostile(addr: SocketAddr, i: usize, payload: &[u8]) -> bool {
    let Ok(mut c) = connect(addr, &format!("h-{i}")) else {
        return false;
    };
    if !matches!(read_packet(&mut c), Some((0x20, b)) if b.get(1) == Some(&0)) {
        return false;
    }
    let topic = format!("sensors/h-{i}");
    if subscribe(&mut c, &topic).is_err() || !matches!(read_packet(&mut c), Some((h, _)) if h >> 4 == 9) {
        return false;
    }
    if publish(&mut c, &topic, payload).is_err() {
        return false;
    }
    loop {
        match read_packet(&mut c) {
            Some((h, _)) if h >> 4 == 4 => {
                let _ = c.write_all(&raw_mqtt::DISCONNECT);
                return true;
            }
            Some(_) => {}
            None => return false,
        }
    }
}

fn serve_rumqttd(listen: SocketAddr) -> anyhow::Result<()> {
    let cfg = edge_agent::config::MqttConfig {
        listen,
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(edge_agent::broker::rumqttd_config(&cfg));
    let (mut tx, mut rx) = broker
        .link("bench-link")
        .map_err(|e| anyhow::anyhow!("link: {e:?}"))?;
    for f in edge_agent::broker::FILTERS {
        tx.subscribe(f).map_err(|e| anyhow::anyhow!("subscribe: {e:?}"))?;
    }
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("rumqttd stopped: {e:?}");
        }
    });
    loop {
        match rx.recv() {
            Ok(Some(rumqttd::Notification::Unschedule)) => {
                if rx.ready().is_err() {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
}
