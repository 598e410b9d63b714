//! `ingest-bench`: the issue-3 benchmark. One load generator, three targets, one run, one
//! machine: the edge agent's durable ingest against bare rumqttd and mosquitto.
//!
//! # Targets
//! - `edge` (E): the `edge-agent` release binary on a fresh data dir. Its headline figure is
//!   the **durable** rate: how fast the application Acks on `devices/<id>/ack` advance as the
//!   devices see them. The agent sends an Ack only after the redb transaction holding the
//!   readings committed with `Durability::Immediate`.
//! - `rumqttd` (a): bare rumqttd 0.20 sized exactly like the agent's broker
//!   ([`edge_agent::broker::rumqttd_config`]) with a local link on the agent's filters whose
//!   consumer reads and discards (answering `Unschedule` with one `ready()`). It runs in a
//!   child process of this binary (`ingest-bench serve-rumqttd`), so its CPU and memory are
//!   read from `/proc` like the other two, and its threads die with the run (rumqttd has no
//!   shutdown). Its figure is the rate at which the link consumer receives publishes.
//! - `mosquitto` (b): Debian's mosquitto 2.0, `persistence false`, unlimited inflight and
//!   queue, `set_tcp_nodelay true`. Its figure is PUBACKs/s.
//! - `edge-tls` (E'', not in the default set): the agent's `[mqtt.tls]` listener, every client
//!   a certificate device with its own client certificate (TLS 1.3), every packet through the
//!   front; its connect phase gives the TLS handshake rate.
//! - `edge-auth` (E', not in the default set): the agent with `[mqtt] auth = "password"`, every
//!   client authenticated by id and password and every packet through the authorizing front;
//!   its connect phase gives the handshake rate (new devices per second).
//! - `rumqttd-acks` (diagnostics, not in the default set): bare rumqttd whose link consumer
//!   Acks from memory what it received, every millisecond: the agent without storage. Against
//!   it the clients run the Ack protocol, so it separates what the Ack traffic costs rumqttd
//!   from what durability costs the agent.
//!
//! Every server listens on 127.0.0.1 on a free port, with `TCP_NODELAY` on its connections
//! (rumqttd through [`edge_agent::broker::set_listener_nodelay`], as in the agent), and is killed
//! when its run ends, also on an error, a panic, Ctrl-C or SIGTERM.
//!
//! # Load generator
//! N tokio tasks, each one MQTT 3.1.1 connection driven by the firmware's own codec, publish
//! QoS 1 to `sensors/<id>` with real [`wire::Batch`] payloads (one boot id per client,
//! consecutive seqs from 2^42 so every varint keeps its width and the payload its size), and
//! keep at most W publishes without PUBACK. Against the agent each client also subscribes to
//! its Ack topic and, like a device, holds at most `--ack-window` readings the agent has not
//! yet acknowledged as durable (`low_seq` is the oldest of them, as on a device). A client
//! writes everything the window allows in one `write`, then parses whatever one `read`
//! returns, so the generator costs as little CPU as possible on a 2-core machine.
//!
//! # Figures
//! Every figure is taken over `--duration` seconds after `--warmup`; CPU per thread comes from
//! `/proc/<pid>/task/*/stat` over the same window, so a run says where the cores went (target,
//! generator, and other processes: a run disturbed by other work is repeated, `--retries`).
//! Latencies are the clients' own: publish to PUBACK, and publish to the Ack covering it; the
//! agent's commit latency comes from its `/metrics` histogram (interpolated within buckets).
//! Memory is `VmRSS` and `VmHWM` of the server process.
//!
//! # Scenarios (`--scenario`, default all)
//! 1. `peak`: N clients, single-reading 64-byte publishes, unpaced: E durable vs (a) vs (b).
//! 2. `batch`: 16 readings per publish: E durable (and (a) for reference).
//! 3. `latency`: E at `--moderate` × scenario 1's durable peak (paced), besides the peak run.
//! 4. `rss`: 1,000 devices publishing one reading per second: memory of every target.

use foundation::process::Guard;
use foundation::procfs;
use foundation::prom::{quantile_between, Metrics};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use firmware::mqtt::codec::{self, Packet};
use firmware::wire::{self, BatchRef, Reading};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

/// Edge agent ingest benchmark (issue 3): the agent's durable rate against bare rumqttd and
/// mosquitto, measured with one load generator in one run. Prints a table (or `--json`).
#[derive(Debug, Parser)]
#[command(name = "ingest-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: run bare rumqttd with a discarding local link (target "rumqttd"); answers
    /// "count" on stdin with the publishes the link received; exits when stdin closes.
    #[command(hide = true)]
    ServeRumqttd {
        #[arg(long)]
        listen: SocketAddr,
        /// Also Ack what the link received (from memory, every millisecond), like an agent
        /// without storage.
        #[arg(long)]
        acks: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// 1: peak rate, single-reading 64-byte publishes, all three targets.
    Peak,
    /// 2: 16 readings per publish, edge (durable) and rumqttd (reference).
    Batch,
    /// 3: latency at a moderate load (a fraction of scenario 1's durable peak) and at peak.
    Latency,
    /// 4: memory with 1,000 devices publishing one reading per second.
    Rss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum TargetKind {
    /// The edge agent (E).
    Edge,
    /// Bare rumqttd with a discarding local link (a).
    Rumqttd,
    /// Diagnostics, not in the default set: bare rumqttd whose link consumer Acks from
    /// memory what it received (an agent without storage), so clients run the Ack protocol.
    RumqttdAcks,
    /// mosquitto 2.0 (b).
    Mosquitto,
    /// The edge agent with `[mqtt] auth = "password"` (E'): every client authenticates with
    /// its id and a password (Argon2id), and every packet passes the authorizing front. Not in
    /// the default set; its connect phase gives the handshake rate.
    EdgeAuth,
    /// The edge agent's MQTT-over-TLS listener (`[mqtt.tls]`, E''): every client a
    /// certificate device, a TLS 1.3 handshake with its client certificate, every packet
    /// through the front. Not in the default set; its connect phase gives the TLS handshake rate.
    EdgeTls,
}

impl TargetKind {
    fn label(self) -> &'static str {
        match self {
            TargetKind::Edge => "edge-agent (E)",
            TargetKind::Rumqttd => "bare rumqttd (a)",
            TargetKind::RumqttdAcks => "rumqttd + in-memory acks",
            TargetKind::Mosquitto => "mosquitto (b)",
            TargetKind::EdgeAuth => "edge-agent, password auth + front (E')",
            TargetKind::EdgeTls => "edge-agent, TLS + client certificates + front (E'')",
        }
    }

    fn is_edge(self) -> bool {
        matches!(
            self,
            TargetKind::Edge | TargetKind::EdgeAuth | TargetKind::EdgeTls
        )
    }
}

#[derive(Debug, Clone, clap::Args)]
struct Opts {
    /// Scenarios to run (default: all four, the issue's set).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Run every scenario (the default when no --scenario is given).
    #[arg(long)]
    all: bool,
    /// Targets to measure (default: all three; each scenario uses the ones it needs).
    #[arg(long, value_enum, value_delimiter = ',')]
    targets: Vec<TargetKind>,
    /// The edge-agent binary (build it with `cargo build --release -p edge-agent`).
    #[arg(long, default_value = "target/release/edge-agent")]
    agent_bin: PathBuf,
    /// Concurrent MQTT clients for scenarios 1-3.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// QoS 1 publishes in flight (without PUBACK) per client, the same for every target. At 16
    /// no target saturates the machine (the round trip limits them all); 64 lets each reach its
    /// CPU limit (see BENCHMARKS.md).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Readings per client not yet acknowledged by the agent's Ack (a device's buffer);
    /// edge only.
    #[arg(long, default_value_t = 1024)]
    ack_window: u64,
    /// Readings per publish in scenario 2.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up per run (load on, nothing measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Scenario 3's moderate load, as a fraction of scenario 1's durable peak.
    #[arg(long, default_value_t = 0.5)]
    moderate: f64,
    /// Devices in scenario 4.
    #[arg(long, default_value_t = 1000)]
    rss_devices: usize,
    /// Seconds measured in scenario 4.
    #[arg(long, default_value_t = 20.0)]
    rss_duration: f64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    gen_threads: usize,
    /// Before each run, wait up to this many seconds for the machine to be idle (other
    /// processes below --quiet-below % of the machine for one second); runs that could not wait
    /// for quiet, or had other CPU load during the measurement, are flagged.
    #[arg(long, default_value_t = 120.0)]
    quiet_wait: f64,
    /// Idle threshold for --quiet-wait, % of all cores.
    #[arg(long, default_value_t = 5.0)]
    quiet_below: f64,
    /// Repeat a run (up to this many times) when other processes used more than
    /// --noisy-above % of one core while it was measured.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// See --retries.
    #[arg(long, default_value_t = 15.0)]
    noisy_above: f64,
    /// Diagnostics: clients of the edge agent do not subscribe to their Acks (no durable
    /// figure; the MQTT path alone).
    #[arg(long, hide = true)]
    no_acks: bool,
    /// Print per-thread CPU of every run.
    #[arg(long)]
    threads: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::ServeRumqttd { listen, acks }) = cli.cmd {
        return serve_rumqttd(listen, acks);
    }
    let opts = cli.opts;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.gen_threads.max(1))
        .thread_name("gen")
        .enable_all()
        .build()?;
    // Ctrl-C / SIGTERM: drop the running bench future, whose guards kill the servers.
    rt.block_on(async {
        tokio::select! {
            r = bench(opts) => r,
            sig = foundation::shutdown::signal_received() => bail!("interrupted ({sig})"),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// One run's load.
#[derive(Debug, Clone)]
struct Load {
    clients: usize,
    batch: usize,
    window: usize,
    /// Readings not yet durably acked per client (edge only).
    ack_window: u64,
    /// Publishes per second per client; `None`: as fast as the windows allow.
    rate: Option<f64>,
    /// Edge clients skip the Ack subscription (diagnostics).
    no_acks: bool,
    warmup: Duration,
    duration: Duration,
}

async fn bench(opts: Opts) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = if opts.all || opts.scenario.is_empty() {
        vec![Scenario::Peak, Scenario::Batch, Scenario::Latency, Scenario::Rss]
    } else {
        let mut s = opts.scenario.clone();
        s.sort();
        s.dedup();
        s
    };
    let targets: Vec<TargetKind> = if opts.targets.is_empty() {
        vec![TargetKind::Edge, TargetKind::Rumqttd, TargetKind::Mosquitto]
    } else {
        opts.targets.clone()
    };
    let wants = |t: TargetKind| targets.contains(&t);
    if targets.iter().any(|t| t.is_edge()) && !opts.agent_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p edge-agent` or pass --agent-bin",
            opts.agent_bin.display()
        );
    }
    let machine = machine_info();
    let mut report = Report {
        machine: machine.clone(),
        opts: opts.clone(),
        runs: Vec::new(),
    };
    if !opts.json {
        println!("# ingest-bench — {machine}");
        println!(
            "clients {}, window {} publishes, ack window {} readings, warm-up {} s, measured {} s, generator threads {}\n",
            opts.clients, opts.window, opts.ack_window, opts.warmup, opts.duration, opts.gen_threads
        );
    }
    let base = Load {
        clients: opts.clients,
        batch: 1,
        window: opts.window,
        ack_window: opts.ack_window,
        rate: None,
        no_acks: false,
        warmup: Duration::from_secs_f64(opts.warmup),
        duration: Duration::from_secs_f64(opts.duration),
    };
    let mut edge_peak: Option<f64> = None;
    for sc in &scenarios {
        match sc {
            Scenario::Peak => {
                for t in [
                    TargetKind::Edge,
                    TargetKind::EdgeAuth,
                    TargetKind::EdgeTls,
                    TargetKind::Rumqttd,
                    TargetKind::RumqttdAcks,
                    TargetKind::Mosquitto,
                ] {
                    if wants(t) {
                        let r = run(&opts, t, "1-peak", &base).await?;
                        if t == TargetKind::Edge {
                            edge_peak = r.durable_per_s;
                        }
                        report.push(r);
                    }
                }
            }
            Scenario::Batch => {
                let load = Load {
                    batch: opts.batch,
                    ..base.clone()
                };
                for t in [
                    TargetKind::Edge,
                    TargetKind::EdgeAuth,
                    TargetKind::EdgeTls,
                    TargetKind::Rumqttd,
                    TargetKind::RumqttdAcks,
                ] {
                    if wants(t) {
                        report.push(run(&opts, t, "2-batch", &load).await?);
                    }
                }
            }
            Scenario::Latency => {
                if !wants(TargetKind::Edge) {
                    continue;
                }
                let peak = match edge_peak {
                    Some(p) => p,
                    None => {
                        let r = run(&opts, TargetKind::Edge, "3-latency-peak", &base).await?;
                        let p = r.durable_per_s.unwrap_or(0.0);
                        report.push(r);
                        p
                    }
                };
                anyhow::ensure!(peak > 0.0, "no durable peak to take a fraction of");
                let load = Load {
                    rate: Some(peak * opts.moderate / opts.clients as f64),
                    ..base.clone()
                };
                report.push(run(&opts, TargetKind::Edge, "3-latency-moderate", &load).await?);
            }
            Scenario::Rss => {
                let load = Load {
                    clients: opts.rss_devices,
                    rate: Some(1.0),
                    duration: Duration::from_secs_f64(opts.rss_duration),
                    ..base.clone()
                };
                for t in [
                    TargetKind::Edge,
                    TargetKind::EdgeAuth,
                    TargetKind::EdgeTls,
                    TargetKind::Rumqttd,
                    TargetKind::RumqttdAcks,
                    TargetKind::Mosquitto,
                ] {
                    if wants(t) {
                        report.push(run(&opts, t, "4-rss", &load).await?);
                    }
                }
            }
        }
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print_summary();
    }
    Ok(())
}

async fn run(opts: &Opts, kind: TargetKind, scenario: &str, load: &Load) -> anyhow::Result<RunResult> {
    if !opts.json {
        eprintln!(
            "[{scenario}] {}: {} clients, {} reading(s)/publish, {}",
            kind.label(),
            load.clients,
            load.batch,
            match load.rate {
                Some(r) => format!("{:.1} publishes/s per client", r),
                None => "unpaced".into(),
            }
        );
    }
    let mut attempt = 0;
    let mut r = loop {
        wait_quiet(opts).await;
        let target = Target::start(kind, opts).await?;
        let load = &Load {
            no_acks: opts.no_acks,
            ..load.clone()
        };
        // Bounded: whatever happens, a run ends within its time plus a margin.
        let limit = load.warmup + load.duration + Duration::from_secs(60);
        let r = tokio::time::timeout(limit, drive(&target, load))
            .await
            .map_err(|_| {
                anyhow!(
                    "{scenario} against {} did not finish within {limit:?}",
                    kind.label()
                )
            })?
            .with_context(|| format!("{scenario} against {}", kind.label()))?;
        drop(target);
        attempt += 1;
        // Memory does not depend on CPU contention: scenario 4 is not repeated for noise.
        if r.other_cpu <= opts.noisy_above || attempt > opts.retries || load.rate.is_some_and(|r| r <= 1.0) {
            break r;
        }
        if !opts.json {
            eprintln!(
                "  other processes used {:.0} % of a core during the run; measuring again",
                r.other_cpu
            );
        }
    };
    r.scenario = scenario.to_string();
    if !opts.json {
        r.print();
        if opts.threads {
            r.print_threads();
        }
    }
    Ok(r)
}

/// Waits (bounded) until nothing else keeps the machine busy, so peers are measured alike.
async fn wait_quiet(opts: &Opts) {
    let deadline = Instant::now() + Duration::from_secs_f64(opts.quiet_wait);
    let mut said = false;
    loop {
        let a = procfs::machine_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = procfs::machine_ticks();
        let busy = (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64 * 100.0;
        if busy < opts.quiet_below {
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "  machine still {busy:.0} % busy after {} s; measuring anyway",
                opts.quiet_wait
            );
            return;
        }
        if !said && !opts.json {
            eprintln!("  waiting for the machine to be idle ({busy:.0} % busy with other work)");
            said = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// A spawned server process, killed (and its scratch dir removed) on drop, also on panic.
struct ProcGuard {
    child: Guard,
    dir: Option<PathBuf>,
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.child.kill9();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Target {
    kind: TargetKind,
    mqtt: SocketAddr,
    /// `edge-tls`: the TLS listener clients use instead, and the directory of the CA and
    /// every client's certificate (`device-<id>.pem`).
    tls: Option<(SocketAddr, PathBuf)>,
    admin: Option<SocketAddr>,
    /// stdin/stdout of the `serve-rumqttd` child.
    rumqttd_io: Option<std::sync::Mutex<(ChildStdin, BufReader<ChildStdout>)>>,
    guard: ProcGuard,
}

fn scratch_dir(kind: &str) -> anyhow::Result<PathBuf> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "ingest-bench-{}-{kind}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Target {
    async fn start(kind: TargetKind, opts: &Opts) -> anyhow::Result<Self> {
        let mqtt = loopback(hil_tests::free_port());
        let t = match kind {
            TargetKind::Edge | TargetKind::EdgeAuth | TargetKind::EdgeTls => {
                let dir = scratch_dir("edge")?;
                let admin = loopback(hil_tests::free_port());
                let log = std::fs::File::create(dir.join("agent.log"))?;
                let mut config = Vec::new();
                let mut tls = None;
                if kind == TargetKind::EdgeTls {
                    // Every client a certificate device: a development CA, the agent's
                    // certificate, one client certificate per client id.
                    let data = dir.join("data");
                    std::fs::create_dir_all(&data)?;
                    let certs = dir.join("certs");
                    let ca = foundation::tls::DevCa::open_or_create(&certs, "ingest-bench CA")?;
                    let agent = ca.issue(
                        "agent",
                        "edge-agent",
                        &["127.0.0.1".into()],
                        foundation::tls::Role::Server,
                        1,
                    )?;
                    let mut creds = edge_agent::credentials::Credentials::default();
                    for i in 0..opts.clients.max(opts.rss_devices) {
                        let id = device_id(i);
                        ca.issue(
                            &format!("device-{id}"),
                            &id,
                            &[],
                            foundation::tls::Role::Client,
                            1,
                        )?;
                        creds.set_certificate(&id)?;
                    }
                    creds.save(&data.join(edge_agent::credentials::FILE_NAME))?;
                    let tls_addr = loopback(hil_tests::free_port());
                    let toml = dir.join("edge.toml");
                    std::fs::write(
                        &toml,
                        format!(
                            "[mqtt]\nauth = \"password\"\n[mqtt.tls]\nlisten = \"{tls_addr}\"\ncert = \"{}\"\n\
                             key = \"{}\"\nclient_ca = \"{}\"\nrequire_client_cert = true\n",
                            agent.cert.display(),
                            agent.key.display(),
                            ca.cert_path().display()
                        ),
                    )?;
                    config = vec!["--config".to_string(), toml.to_string_lossy().into_owned()];
                    tls = Some((tls_addr, certs));
                }
                if kind == TargetKind::EdgeAuth {
                    // Every client id the run may use, with one password (hashed once: the
                    // salt is shared, which a bench may do and a fleet must not).
                    let data = dir.join("data");
                    std::fs::create_dir_all(&data)?;
                    let hash = edge_agent::credentials::hash(BENCH_PASSWORD)?;
                    let mut creds = edge_agent::credentials::Credentials::default();
                    for i in 0..opts.clients.max(opts.rss_devices) {
                        creds.devices.insert(
                            device_id(i),
                            edge_agent::credentials::Entry {
                                hash: hash.clone(),
                                added_ms: 0,
                            },
                        );
                    }
                    creds.save(&data.join(edge_agent::credentials::FILE_NAME))?;
                    let toml = dir.join("edge.toml");
                    std::fs::write(&toml, "[mqtt]\nauth = \"password\"\n")?;
                    config = vec!["--config".to_string(), toml.to_string_lossy().into_owned()];
                }
                let child = Command::new(&opts.agent_bin)
                    .arg("run")
                    .args(&config)
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .arg("--mqtt-listen")
                    .arg(mqtt.to_string())
                    .arg("--admin-listen")
                    .arg(admin.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("starting {}", opts.agent_bin.display()))?;
                Target {
                    kind,
                    mqtt,
                    tls,
                    admin: Some(admin),
                    rumqttd_io: None,
                    guard: ProcGuard {
                        child: Guard::new("the target", child),
                        dir: Some(dir),
                    },
                }
            }
            TargetKind::Rumqttd | TargetKind::RumqttdAcks => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("serve-rumqttd").arg("--listen").arg(mqtt.to_string());
                if kind == TargetKind::RumqttdAcks {
                    cmd.arg("--acks");
                }
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting serve-rumqttd")?;
                let stdin = child.stdin.take().context("child stdin")?;
                let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
                Target {
                    kind,
                    mqtt,
                    tls: None,
                    admin: None,
                    rumqttd_io: Some(std::sync::Mutex::new((stdin, stdout))),
                    guard: ProcGuard {
                        child: Guard::new("bare rumqttd", child),
                        dir: None,
                    },
                }
            }
            TargetKind::Mosquitto => {
                let dir = scratch_dir("mosquitto")?;
                let conf = dir.join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                         set_tcp_nodelay true\nmax_inflight_messages 0\nmax_queued_messages 0\n\
                         log_dest stderr\nlog_type error\n",
                        mqtt.port()
                    ),
                )?;
                let bin = hil_tests::mosquitto::which("mosquitto")
                    .context("mosquitto is not installed (apt-get install mosquitto)")?;
                let child = Command::new(bin)
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting mosquitto")?;
                Target {
                    kind,
                    mqtt,
                    tls: None,
                    admin: None,
                    rumqttd_io: None,
                    guard: ProcGuard {
                        child: Guard::new("the target", child),
                        dir: Some(dir),
                    },
                }
            }
        };
        let mut t = t;
        t.wait_ready().await?;
        Ok(t)
    }

    fn pid(&self) -> u32 {
        self.guard.child.pid()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mqtt_ok = hil_tests::listening(self.mqtt.port());
            let admin_ok = match self.admin {
                Some(a) => {
                    foundation::http::get(&a.to_string(), "/health").is_ok_and(|(code, _)| code == 200)
                }
                None => true,
            };
            if mqtt_ok && admin_ok {
                break;
            }
            if self.guard.child.exited().is_some() || Instant::now() > deadline {
                let log = self
                    .guard
                    .dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join("agent.log")).ok())
                    .unwrap_or_default();
                bail!(
                    "{} did not start listening on {}\n{log}",
                    self.kind.label(),
                    self.mqtt
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(io) = &self.rumqttd_io {
            // The child says "ready" once its link is subscribed.
            let mut line = String::new();
            io.lock()
                .map_err(|_| anyhow!("poisoned"))?
                .1
                .read_line(&mut line)?;
            anyhow::ensure!(line.trim() == "ready", "serve-rumqttd said {line:?}");
        }
        Ok(())
    }

    /// Publishes the bare rumqttd link consumer has received.
    fn consumer_count(&self) -> anyhow::Result<Option<u64>> {
        let Some(io) = &self.rumqttd_io else {
            return Ok(None);
        };
        let mut io = io.lock().map_err(|_| anyhow!("poisoned"))?;
        io.0.write_all(b"count\n")?;
        io.0.flush()?;
        let mut line = String::new();
        io.1.read_line(&mut line)?;
        Ok(Some(line.trim().parse().context("serve-rumqttd count")?))
    }

    fn metrics(&self) -> anyhow::Result<Option<Metrics>> {
        let Some(a) = self.admin else { return Ok(None) };
        let (code, body) = foundation::http::get(&a.to_string(), "/metrics")?;
        anyhow::ensure!(code == 200, "GET /metrics: HTTP {code}");
        Ok(Some(Metrics::parse(&body)?))
    }
}

// ---------------------------------------------------------------------------------------------
// The bare rumqttd child (target a)
// ---------------------------------------------------------------------------------------------

fn serve_rumqttd(listen: SocketAddr, acks: bool) -> anyhow::Result<()> {
    use rumqttd::Notification;
    let cfg = edge_agent::config::MqttConfig {
        listen,
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(edge_agent::broker::rumqttd_config(&cfg));
    let (mut tx, mut rx) = broker
        .link("ingest-bench-consumer")
        .map_err(|e| anyhow!("rumqttd link: {e:?}"))?;
    for f in edge_agent::broker::FILTERS {
        tx.subscribe(f).map_err(|e| anyhow!("subscribe {f}: {e:?}"))?;
    }
    let received = Arc::new(AtomicU64::new(0));
    {
        let received = received.clone();
        std::thread::Builder::new()
            .name("link-consumer".into())
            .spawn(move || {
                // --acks: newest (boot, last seq) per device, and the devices to Ack at the next flush.
                let mut newest: std::collections::HashMap<String, (u32, u64)> = Default::default();
                let mut dirty: Vec<String> = Vec::new();
                let mut flush_at: Option<Instant> = None;
                loop {
                    let n = match flush_at {
                        Some(at) => match rx.recv_deadline(at) {
                            Err(rumqttd::local::LinkError::RecvTimeout(_)) => Ok(None),
                            other => other,
                        },
                        None => rx.recv(),
                    };
                    match n {
                        Ok(Some(Notification::Forward(f))) => {
                            received.fetch_add(1, Ordering::Relaxed);
                            if acks {
                                if let Ok(b) = wire::decode_batch(&f.publish.payload) {
                                    if let Some(last) = b.last_seq() {
                                        match newest.get_mut(b.device_id.as_str()) {
                                            Some(v) => *v = (b.boot_id, last),
                                            None => {
                                                newest.insert(b.device_id.to_string(), (b.boot_id, last));
                                            }
                                        }
                                        dirty.push(b.device_id.to_string());
                                        flush_at
                                            .get_or_insert_with(|| Instant::now() + Duration::from_millis(1));
                                    }
                                }
                            }
                        }
                        Ok(Some(Notification::Unschedule)) => {
                            if rx.ready().is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                    if flush_at.is_some_and(|at| Instant::now() >= at) {
                        dirty.sort_unstable();
                        dirty.dedup();
                        for d in dirty.drain(..) {
                            let (boot_id, up_to_seq) = newest[&d];
                            let mut buf = [0u8; wire::MAX_ACK_ENCODED];
                            if let Ok(p) = wire::encode(&wire::Ack { boot_id, up_to_seq }, &mut buf) {
                                let _ = tx.publish(format!("devices/{d}/ack"), p.to_vec());
                            }
                        }
                        flush_at = None;
                    }
                }
            })?;
    }
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("rumqttd: {e:?}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hil_tests::listening(listen.port()) {
        anyhow::ensure!(Instant::now() < deadline, "rumqttd did not listen on {listen}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same socket setup as the agent's broker.
    edge_agent::broker::set_listener_nodelay(listen)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line?.trim() == "count" {
            writeln!(out, "{}", received.load(Ordering::Relaxed))?;
            out.flush()?;
        }
    }
    // stdin closed: the bench is gone. rumqttd has no shutdown; leave with the process.
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------------

/// First sequence number: 2^42, so `first_seq` and `low_seq` stay 7-byte varints for the run.
const SEQ_BASE: u64 = 1 << 42;
/// Encoded size of a single-reading publish payload (scenario 1).
const PAYLOAD_64: usize = 64;

/// Per-client counters, on their own cache line (one writer each).
#[repr(align(64))]
#[derive(Default)]
struct ClientCounters {
    /// PUBACKs received (publishes the broker took).
    pubacks: AtomicU64,
    /// Readings acknowledged by the agent's application Ack (durable).
    durable: AtomicU64,
}

#[derive(Debug, Clone)]
struct ClientSpec {
    addr: SocketAddr,
    /// Over TLS, with the client certificate in this directory (and the CA's).
    tls: Option<PathBuf>,
    id: String,
    /// Connect with the id as username and this password.
    password: Option<&'static str>,
    boot: u32,
    batch: usize,
    window: usize,
    /// Subscribe to `devices/<id>/ack` and hold at most this many readings not yet acked.
    ack_window: Option<u64>,
    interval: Option<Duration>,
    /// Pacing phase, so paced clients do not all publish in the same instant.
    offset: Duration,
}

/// The password of every client of the `edge-auth` target.
const BENCH_PASSWORD: &str = "bench-password-1";

/// Device id of client `i`, padded so that a single-reading batch encodes to 64 bytes.
fn device_id(i: usize) -> String {
    let mut id = format!("bench-{i:05}-");
    while payload_len(&id, 1) < PAYLOAD_64 && id.len() < wire::MAX_DEVICE_ID {
        id.push('x');
    }
    id
}

fn reading(seq: u64, now_ms: u64) -> Reading {
    Reading {
        channel: 0,
        timestamp_ms: now_ms,
        value: seq as f32,
    }
}

fn payload_len(id: &str, batch: usize) -> usize {
    let rs = vec![reading(0, foundation::time::now_ms() as u64); batch];
    let b = BatchRef {
        device_id: id,
        boot_id: u32::MAX,
        first_seq: SEQ_BASE,
        low_seq: SEQ_BASE,
        readings: (&rs, &[]),
    };
    let mut buf = [0u8; wire::MAX_BATCH_ENCODED];
    wire::encode(&b, &mut buf).map_or(0, |b| b.len())
}

/// What a client hands back when it stops.
#[derive(Debug, Default)]
struct ClientOutcome {
    /// Publish-to-durable-Ack latencies (µs) of publishes sent while measuring.
    ack_latency_us: Vec<u32>,
    /// Publish-to-PUBACK latencies (µs) of publishes sent while measuring.
    puback_latency_us: Vec<u32>,
}

/// Appends a QoS 1 PUBLISH of `batch` readings to `out`.
fn put_publish(out: &mut Vec<u8>, topic: &str, pid: u16, b: &BatchRef<'_>) -> anyhow::Result<()> {
    let start = out.len();
    out.resize(start + 5 + 2 + topic.len() + 2 + wire::MAX_BATCH_ENCODED, 0);
    let r = codec::encode_publish_with(&mut out[start..], topic, Some(pid), false, false, |buf| {
        Ok(wire::encode(b, buf)?.len())
    })
    .map_err(|e| anyhow!("encode publish: {e:?}"))?;
    out.copy_within(start + r.start..start + r.end, start);
    out.truncate(start + r.len());
    Ok(())
}

fn put(out: &mut Vec<u8>, f: impl FnOnce(&mut [u8]) -> Result<usize, firmware::Error>) -> anyhow::Result<()> {
    let start = out.len();
    out.resize(start + 256, 0);
    let n = f(&mut out[start..]).map_err(|e| anyhow!("encode: {e:?}"))?;
    out.truncate(start + n);
    Ok(())
}

/// Reads until one whole packet is buffered and returns its bytes (connect/subscribe only).
async fn read_packet(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    loop {
        if let Some(n) = codec::frame_len(buf).map_err(|e| anyhow!("frame: {e:?}"))? {
            if buf.len() >= n {
                let frame = buf[..n].to_vec();
                buf.drain(..n);
                return Ok(frame);
            }
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await?;
        anyhow::ensure!(n > 0, "broker closed the connection during the handshake");
        buf.extend_from_slice(&tmp[..n]);
    }
}

struct Ctl {
    /// Latency samples are taken for publishes sent while this is set.
    measuring: AtomicBool,
    connected: AtomicUsize,
}

async fn client(
    spec: ClientSpec,
    counters: Arc<ClientCounters>,
    ctl: Arc<Ctl>,
    mut go: watch::Receiver<bool>,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<ClientOutcome> {
    let tls = match &spec.tls {
        None => None,
        Some(dir) => {
            let (cert, key) = (
                dir.join(format!("device-{}.pem", spec.id)),
                dir.join(format!("device-{}.key", spec.id)),
            );
            Some(hil_tests::sim::tls_connector(
                &dir.join("ca.pem"),
                Some((&cert, &key)),
                &spec.addr.to_string(),
            )?)
        }
    };
    let mut s =
        hil_tests::sim::Stream::connect(&spec.addr.to_string(), tls.as_ref(), Duration::from_secs(30))
            .await?;
    let mut w: Vec<u8> = Vec::with_capacity(64 * 1024);
    put(&mut w, |b| {
        codec::encode_connect(
            b,
            &codec::Connect {
                client_id: &spec.id,
                keep_alive_s: 120,
                clean_session: true,
                will: None,
                username: spec.password.map(|_| spec.id.as_str()),
                password: spec.password.map(str::as_bytes),
            },
        )
    })?;
    s.write_all(&w).await?;
    s.flush().await?;
    w.clear();
    let mut pending = Vec::new();
    let f = read_packet(&mut s, &mut pending).await?;
    match codec::parse(&f) {
        Ok(Packet::ConnAck { code: 0, .. }) => {}
        other => bail!("connect refused: {other:?}"),
    }
    if spec.ack_window.is_some() {
        let filter = format!("devices/{}/ack", spec.id);
        // QoS 0, as the firmware subscribes: Acks are cumulative; a lost one is repaired by the next.
        put(&mut w, |b| codec::encode_subscribe(b, 1, &filter, 0))?;
        s.write_all(&w).await?;
        s.flush().await?;
        w.clear();
        let f = read_packet(&mut s, &mut pending).await?;
        match codec::parse(&f) {
            Ok(Packet::SubAck { code: 0, .. }) => {}
            other => bail!("subscribe refused: {other:?}"),
        }
    }
    ctl.connected.fetch_add(1, Ordering::SeqCst);
    while !*go.borrow_and_update() {
        go.changed().await?;
    }

    let topic = format!("sensors/{}", spec.id);
    let mut rbuf = vec![0u8; 256 * 1024];
    rbuf[..pending.len()].copy_from_slice(&pending);
    let mut end = pending.len();
    let mut next_seq = SEQ_BASE;
    // Lowest reading not acknowledged as durable (a device's `low_seq`).
    let mut low = SEQ_BASE;
    let mut pid: u16 = 0;
    // MQTT window: (packet id, sent at, sent while measuring) awaiting PUBACK, in send order.
    let mut inflight: VecDeque<(u16, Instant, bool)> = VecDeque::with_capacity(spec.window);
    // Durable window: (last seq of a publish, sent at, sent while measuring).
    let mut unacked: VecDeque<(u64, Instant, bool)> = VecDeque::new();
    let mut out = ClientOutcome::default();
    let mut readings = vec![Reading::default(); spec.batch];
    let start = Instant::now();
    let mut due = start + spec.offset;
    let sleep = tokio::time::sleep_until(due.into());
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let mut room = inflight.len() < spec.window
            && spec
                .ack_window
                .is_none_or(|aw| next_seq + spec.batch as u64 - low <= aw);
        if room && (spec.interval.is_none() || due <= now) {
            let ts = foundation::time::now_ms() as u64;
            let measuring = ctl.measuring.load(Ordering::Relaxed);
            while room && (spec.interval.is_none() || due <= now) {
                for (i, r) in readings.iter_mut().enumerate() {
                    *r = reading(next_seq + i as u64, ts);
                }
                pid = pid.checked_add(1).unwrap_or(1);
                let b = BatchRef {
                    device_id: &spec.id,
                    boot_id: spec.boot,
                    first_seq: next_seq,
                    low_seq: if spec.ack_window.is_some() { low } else { next_seq },
                    readings: (&readings, &[]),
                };
                put_publish(&mut w, &topic, pid, &b)?;
                inflight.push_back((pid, now, measuring));
                next_seq += spec.batch as u64;
                if spec.ack_window.is_some() {
                    unacked.push_back((next_seq - 1, now, measuring));
                }
                if let Some(iv) = spec.interval {
                    due += iv;
                }
                room = inflight.len() < spec.window
                    && spec
                        .ack_window
                        .is_none_or(|aw| next_seq + spec.batch as u64 - low <= aw);
            }
        }
        if !w.is_empty() {
            s.write_all(&w).await?;
            s.flush().await?;
            w.clear();
        }
        // Wait for the broker, the next paced publish (if there is room for it), or the stop.
        let timer = spec.interval.is_some() && room;
        if timer {
            sleep.as_mut().reset(due.into());
        }
        let n = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = s.read(&mut rbuf[end..]) => r?,
            _ = &mut sleep, if timer => continue,
        };
        anyhow::ensure!(n > 0, "broker closed the connection");
        end += n;
        let now = Instant::now();
        let mut pos = 0;
        while let Some(len) = codec::frame_len(&rbuf[pos..end]).map_err(|e| anyhow!("frame: {e:?}"))? {
            anyhow::ensure!(len <= rbuf.len(), "packet of {len} bytes");
            if end - pos < len {
                break;
            }
            match codec::parse(&rbuf[pos..pos + len]).map_err(|e| anyhow!("parse: {e:?}"))? {
                Packet::PubAck { pid } => {
                    let sent = if inflight.front().map(|f| f.0) == Some(pid) {
                        inflight.pop_front()
                    } else {
                        inflight
                            .iter()
                            .position(|p| p.0 == pid)
                            .and_then(|i| inflight.remove(i))
                    };
                    if let Some((_, at, true)) = sent {
                        let us = now.duration_since(at).as_micros();
                        out.puback_latency_us.push(us.min(u32::MAX as u128) as u32);
                    }
                    counters.pubacks.fetch_add(1, Ordering::Relaxed);
                }
                Packet::Publish { pid, payload, .. } => {
                    if let Some(p) = pid {
                        put(&mut w, |b| codec::encode_puback(b, p))?;
                    }
                    if let Ok(ack) = wire::decode::<wire::Ack>(payload) {
                        if ack.boot_id == spec.boot && ack.up_to_seq >= low {
                            low = ack.up_to_seq + 1;
                            counters.durable.store(low - SEQ_BASE, Ordering::Relaxed);
                            while let Some(&(last, at, measured)) = unacked.front() {
                                if last > ack.up_to_seq {
                                    break;
                                }
                                if measured {
                                    let us = now.duration_since(at).as_micros();
                                    out.ack_latency_us.push(us.min(u32::MAX as u128) as u32);
                                }
                                unacked.pop_front();
                            }
                        }
                    }
                }
                _ => {}
            }
            pos += len;
        }
        rbuf.copy_within(pos..end, 0);
        end -= pos;
    }
    w.clear();
    put(&mut w, codec::encode_disconnect)?;
    let _ = s.write_all(&w).await;
    let _ = s.flush().await;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// One run: load, snapshots, figures
// ---------------------------------------------------------------------------------------------

struct Snapshot {
    at: Instant,
    pubacks: u64,
    durable: u64,
    target_threads: BTreeMap<u32, (String, u64)>,
    gen_threads: BTreeMap<u32, (String, u64)>,
    machine: (u64, u64),
    consumer: Option<(Instant, u64)>,
    metrics: Option<(Instant, Metrics)>,
}

fn snapshot(target: &Target, counters: &[Arc<ClientCounters>]) -> anyhow::Result<Snapshot> {
    let at = Instant::now();
    let pubacks = counters.iter().map(|c| c.pubacks.load(Ordering::Relaxed)).sum();
    let durable = counters.iter().map(|c| c.durable.load(Ordering::Relaxed)).sum();
    let target_threads = procfs::thread_ticks(target.pid());
    let gen_threads = procfs::thread_ticks(std::process::id());
    let machine = procfs::machine_ticks();
    let consumer = target.consumer_count()?.map(|c| (Instant::now(), c));
    let metrics = target.metrics()?.map(|m| (Instant::now(), m));
    Ok(Snapshot {
        at,
        pubacks,
        durable,
        target_threads,
        gen_threads,
        machine,
        consumer,
        metrics,
    })
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    scenario: String,
    target: Option<TargetKind>,
    clients: usize,
    batch: usize,
    window: usize,
    payload_bytes: usize,
    paced_rate: Option<f64>,
    secs: f64,
    pubacks_per_s: f64,
    /// Readings/s the agent acknowledged as durable (edge).
    durable_per_s: Option<f64>,
    /// Publishes/s the bare rumqttd link consumer received.
    consumer_per_s: Option<f64>,
    /// Publish to PUBACK, as the clients saw it.
    puback_p50_ms: Option<f64>,
    puback_p99_ms: Option<f64>,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    ack_max_ms: Option<f64>,
    commit_p50_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
    commits_per_s: Option<f64>,
    records_per_commit: Option<f64>,
    agent_readings_per_s: Option<f64>,
    /// Messages rumqttd skipped for the agent's link, and batches seen after a gap.
    agent_losses: Option<(f64, f64)>,
    rss_kib: u64,
    hwm_kib: u64,
    /// Seconds from the first client's start until every client was connected.
    connect_s: f64,
    /// Target process CPU, % of one core, per thread name.
    target_cpu: BTreeMap<String, f64>,
    /// Load generator CPU, % of one core.
    gen_cpu: f64,
    machine_busy_pct: f64,
    /// CPU used by processes other than the target and the generator, % of one core.
    other_cpu: f64,
    client_errors: usize,
    first_error: Option<String>,
}

impl RunResult {
    /// The run's headline rate, in readings/s.
    fn headline(&self) -> f64 {
        self.durable_per_s
            .or(self.consumer_per_s.map(|c| c * self.batch as f64))
            .unwrap_or(self.pubacks_per_s * self.batch as f64)
    }

    fn target_cpu_total(&self) -> f64 {
        self.target_cpu.values().sum()
    }
}

fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1000.0)
}

async fn drive(target: &Target, load: &Load) -> anyhow::Result<RunResult> {
    let edge = target.kind.is_edge();
    let acks = edge || target.kind == TargetKind::RumqttdAcks;
    let ctl = Arc::new(Ctl {
        measuring: AtomicBool::new(false),
        connected: AtomicUsize::new(0),
    });
    let (go_tx, go_rx) = watch::channel(false);
    let mut stops = Vec::with_capacity(load.clients);
    let mut tasks = Vec::with_capacity(load.clients);
    let mut counters = Vec::with_capacity(load.clients);
    let interval = load.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let tag = foundation::ids::random_u64();
    for i in 0..load.clients {
        let c = Arc::new(ClientCounters::default());
        counters.push(c.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        stops.push(stop_tx);
        let spec = ClientSpec {
            addr: target.tls.as_ref().map_or(target.mqtt, |t| t.0),
            tls: target.tls.as_ref().map(|t| t.1.clone()),
            id: device_id(i),
            password: (target.kind == TargetKind::EdgeAuth).then_some(BENCH_PASSWORD),
            // Top bit set: a 5-byte varint, so the payload size does not depend on the id.
            boot: (tag as u32).wrapping_add(i as u32) | 0x8000_0000,
            batch: load.batch,
            window: load.window,
            ack_window: (acks && !load.no_acks).then_some(load.ack_window),
            interval,
            offset: interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / load.clients as f64)),
        };
        tasks.push(tokio::spawn(client(spec, c, ctl.clone(), go_rx.clone(), stop_rx)));
    }
    let connecting = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctl.connected.load(Ordering::SeqCst) < load.clients {
        if tasks.iter().any(|t| t.is_finished()) {
            break; // a client failed to connect: its error is reported with the results
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} clients connected within 60 s",
            ctl.connected.load(Ordering::SeqCst),
            load.clients
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    let _ = go_tx.send(true);
    tokio::time::sleep(load.warmup).await;
    let s0 = snapshot(target, &counters)?;
    ctl.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(load.duration).await;
    ctl.measuring.store(false, Ordering::Relaxed);
    let s1 = snapshot(target, &counters)?;
    let (rss, hwm) = procfs::rss_kib(target.pid());
    for s in stops {
        let _ = s.send(());
    }
    let mut lat: Vec<u32> = Vec::new();
    let mut puback_lat: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(o))) => {
                lat.extend(o.ack_latency_us);
                puback_lat.extend(o.puback_latency_us);
            }
            Ok(Ok(Err(e))) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(format!("client task: {e}"));
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert("client did not stop within 10 s".into());
            }
        }
    }
    lat.sort_unstable();
    puback_lat.sort_unstable();

    let secs = (s1.at - s0.at).as_secs_f64();
    let cpu = |a: &BTreeMap<u32, (String, u64)>, b: &BTreeMap<u32, (String, u64)>| -> BTreeMap<String, f64> {
        let mut by_name = procfs::cpu_percent_by_name(a, b, secs);
        by_name.retain(|_, pct| *pct > 0.0);
        by_name
    };
    let gen = cpu(&s0.gen_threads, &s1.gen_threads);
    let mut r = RunResult {
        target: Some(target.kind),
        clients: load.clients,
        batch: load.batch,
        window: load.window,
        payload_bytes: payload_len(&device_id(0), load.batch),
        paced_rate: load.rate,
        secs,
        pubacks_per_s: (s1.pubacks - s0.pubacks) as f64 / secs,
        rss_kib: rss,
        hwm_kib: hwm,
        connect_s,
        target_cpu: cpu(&s0.target_threads, &s1.target_threads),
        gen_cpu: gen.values().sum(),
        machine_busy_pct: {
            let (b, t) = (s1.machine.0 - s0.machine.0, s1.machine.1 - s0.machine.1);
            if t == 0 {
                0.0
            } else {
                b as f64 / t as f64 * 100.0
            }
        },
        client_errors: errors,
        first_error,
        puback_p50_ms: quantile_ms(&puback_lat, 0.50),
        puback_p99_ms: quantile_ms(&puback_lat, 0.99),
        ..Default::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    r.other_cpu = (r.machine_busy_pct * cores - r.target_cpu_total() - r.gen_cpu).max(0.0);
    if acks {
        r.durable_per_s = Some((s1.durable - s0.durable) as f64 / secs);
        r.ack_p50_ms = quantile_ms(&lat, 0.50);
        r.ack_p99_ms = quantile_ms(&lat, 0.99);
        r.ack_max_ms = lat.last().map(|v| *v as f64 / 1000.0);
    }
    if let (Some((t0, c0)), Some((t1, c1))) = (s0.consumer, s1.consumer) {
        r.consumer_per_s = Some((c1 - c0) as f64 / (t1 - t0).as_secs_f64());
    }
    if let (Some((t0, m0)), Some((t1, m1))) = (&s0.metrics, &s1.metrics) {
        let dt = (*t1 - *t0).as_secs_f64();
        let h = "edge_commit_duration_seconds";
        let (b0, b1) = (m0.buckets(h), m1.buckets(h));
        r.commit_p50_ms = quantile_between(&b0, &b1, 0.50).map(|s| s * 1000.0);
        r.commit_p99_ms = quantile_between(&b0, &b1, 0.99).map(|s| s * 1000.0);
        let d = |k: &str| m1.value(k, &[]).unwrap_or(0.0) - m0.value(k, &[]).unwrap_or(0.0);
        let commits = d("edge_commits_total");
        r.commits_per_s = Some(commits / dt);
        r.agent_readings_per_s = Some(d("edge_readings_ingested_total") / dt);
        r.records_per_commit = (commits > 0.0).then(|| d("edge_commit_batch_records_sum") / commits);
        r.agent_losses = Some((
            m1.value("edge_rumqttd_cursor_jumps_total", &[]).unwrap_or(0.0),
            m1.value("edge_rumqttd_lag_detected_total", &[]).unwrap_or(0.0),
        ));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

fn machine_info() -> String {
    let m = procfs::machine();
    format!(
        "nproc {}, {:.1} GiB RAM, {}",
        m.nproc,
        m.mem_total_kib as f64 / 1024.0 / 1024.0,
        m.cpu_model
    )
}

fn fmt_rate(v: f64) -> String {
    let v = v.round() as u64;
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

impl RunResult {
    fn print(&self) {
        let t = self.target.map_or("?", |t| t.label());
        let mut line = format!("  {t}: PUBACKs {}/s", fmt_rate(self.pubacks_per_s),);
        if let Some(d) = self.durable_per_s {
            line += &format!(", durable {} readings/s", fmt_rate(d));
        }
        if let Some(c) = self.consumer_per_s {
            line += &format!(", link consumer {} publishes/s", fmt_rate(c));
        }
        line += &format!(
            "; PUBACK latency p50 {} / p99 {} ms",
            fmt_ms(self.puback_p50_ms),
            fmt_ms(self.puback_p99_ms)
        );
        println!("{line}");
        if self.durable_per_s.is_some() {
            println!(
                "    ack latency p50 {} / p99 {} / max {} ms; commit p50 {} / p99 {} ms; {:.0} commits/s of {:.0} records",
                fmt_ms(self.ack_p50_ms),
                fmt_ms(self.ack_p99_ms),
                fmt_ms(self.ack_max_ms),
                fmt_ms(self.commit_p50_ms),
                fmt_ms(self.commit_p99_ms),
                self.commits_per_s.unwrap_or(0.0),
                self.records_per_commit.unwrap_or(0.0),
            );
            if let Some((jumps, lag)) = self.agent_losses {
                if jumps > 0.0 || lag > 0.0 {
                    println!("    WARNING: rumqttd skipped {jumps} messages for the agent ({lag} batches after a gap)");
                }
            }
        }
        println!(
            "    CPU (% of one core): target {:.0}, generator {:.0}, other processes {:.0}; machine {:.0} % busy; RSS {:.1} MiB (peak {:.1} MiB); payload {} B",
            self.target_cpu_total(),
            self.gen_cpu,
            self.other_cpu,
            self.machine_busy_pct,
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0,
            self.payload_bytes
        );
        if self.client_errors > 0 {
            println!(
                "    {} client(s) failed: {}",
                self.client_errors,
                self.first_error.as_deref().unwrap_or("")
            );
        }
    }

    fn print_threads(&self) {
        let mut v: Vec<_> = self.target_cpu.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let s: Vec<String> = v.iter().map(|(k, p)| format!("{k} {p:.0} %")).collect();
        println!("    threads: {}", s.join(", "));
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "target": self.target.map(|t| format!("{t:?}").to_lowercase()),
            "clients": self.clients,
            "readings_per_publish": self.batch,
            "window": self.window,
            "payload_bytes": self.payload_bytes,
            "paced_publishes_per_s_per_client": self.paced_rate,
            "measured_s": self.secs,
            "pubacks_per_s": self.pubacks_per_s,
            "durable_readings_per_s": self.durable_per_s,
            "link_consumer_publishes_per_s": self.consumer_per_s,
            "readings_per_s": self.headline(),
            "puback_latency_ms": {"p50": self.puback_p50_ms, "p99": self.puback_p99_ms},
            "ack_latency_ms": {"p50": self.ack_p50_ms, "p99": self.ack_p99_ms, "max": self.ack_max_ms},
            "commit_ms": {"p50": self.commit_p50_ms, "p99": self.commit_p99_ms},
            "commits_per_s": self.commits_per_s,
            "records_per_commit": self.records_per_commit,
            "agent_readings_per_s": self.agent_readings_per_s,
            "rumqttd_cursor_jumps": self.agent_losses.map(|l| l.0),
            "lag_detected": self.agent_losses.map(|l| l.1),
            "vm_rss_kib": self.rss_kib,
            "connect_s": self.connect_s,
            "connects_per_s": self.clients as f64 / self.connect_s.max(1e-9),
            "vm_hwm_kib": self.hwm_kib,
            "target_cpu_pct": self.target_cpu,
            "generator_cpu_pct": self.gen_cpu,
            "machine_busy_pct": self.machine_busy_pct,
            "other_processes_cpu_pct": self.other_cpu,
            "client_errors": self.client_errors,
            "first_error": self.first_error,
        })
    }
}

struct Report {
    machine: String,
    opts: Opts,
    runs: Vec<RunResult>,
}

/// A target of the issue: `value / reference >= min` (or `value <= max` for memory).
struct Check {
    what: String,
    value: f64,
    target: String,
    met: bool,
}

impl Report {
    fn push(&mut self, r: RunResult) {
        self.runs.push(r);
    }

    fn find(&self, scenario: &str, t: TargetKind) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.scenario == scenario && r.target == Some(t))
    }

    fn checks(&self) -> Vec<Check> {
        let mut v = Vec::new();
        if let Some(e) = self.find("1-peak", TargetKind::Edge) {
            let ed = e.durable_per_s.unwrap_or(0.0);
            if let Some(a) = self.find("1-peak", TargetKind::Rumqttd) {
                let x = ed / a.headline();
                v.push(Check {
                    what: "1: E durable / (a) link consumer".into(),
                    value: x,
                    target: "≥ 0.80".into(),
                    met: x >= 0.8,
                });
            }
            if let Some(b) = self.find("1-peak", TargetKind::Mosquitto) {
                let x = ed / b.pubacks_per_s;
                v.push(Check {
                    what: "1: E durable / (b) PUBACKs".into(),
                    value: x,
                    target: "≥ 1.00".into(),
                    met: x >= 1.0,
                });
            }
        }
        for sc in ["1-peak", "2-batch"] {
            for (kind, what) in [
                (TargetKind::EdgeAuth, "E' (password auth + front)"),
                (TargetKind::EdgeTls, "E'' (TLS + client certificates + front)"),
            ] {
                if let (Some(e), Some(a)) = (self.find(sc, TargetKind::Edge), self.find(sc, kind)) {
                    let x = a.durable_per_s.unwrap_or(0.0) / e.durable_per_s.unwrap_or(f64::MAX);
                    v.push(Check {
                        what: format!(
                            "{sc}: {what} durable / E; connected {} clients at {:.0}/s",
                            a.clients,
                            a.clients as f64 / a.connect_s.max(1e-9)
                        ),
                        value: x,
                        target: "≥ 0.70 (the issue's bound for TLS)".into(),
                        met: x >= 0.7,
                    });
                }
            }
        }
        if let Some(e) = self.find("2-batch", TargetKind::Edge) {
            let d = e.durable_per_s.unwrap_or(0.0);
            v.push(Check {
                what: "2: E durable readings/s, batches of 16".into(),
                value: d,
                target: "≥ 1,000,000".into(),
                met: d >= 1e6,
            });
        }
        if let Some(e) = self.find("4-rss", TargetKind::Edge) {
            let mib = e.hwm_kib as f64 / 1024.0;
            v.push(Check {
                what: format!("4: E peak RSS (VmHWM), {} devices", e.clients),
                value: mib,
                target: "≤ 64 MiB".into(),
                met: mib <= 64.0,
            });
        }
        v
    }

    fn print_summary(&self) {
        println!("\n## Results — {}\n", self.machine);
        println!("| scenario | target | clients × readings/publish | payload B | PUBACKs/s | readings/s (E: durable; a: link consumer) | target CPU % | generator CPU % | others CPU % |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            println!(
                "| {} | {} | {} × {}{} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                r.scenario,
                r.target.map_or("?", |t| t.label()),
                r.clients,
                r.batch,
                r.paced_rate.map_or(String::new(), |p| format!(" @ {p:.1}/s")),
                r.payload_bytes,
                fmt_rate(r.pubacks_per_s),
                fmt_rate(r.headline()),
                r.target_cpu_total(),
                r.gen_cpu,
                r.other_cpu
            );
        }
        let lat: Vec<&RunResult> = self.runs.iter().filter(|r| r.durable_per_s.is_some()).collect();
        if !lat.is_empty() {
            println!("\n| scenario | E load (durable readings/s) | commit p50 / p99 ms | device-seen ack p50 / p99 / max ms | records per commit |");
            println!("|---|---|---|---|---|");
            for r in lat {
                println!(
                    "| {} | {} | {} / {} | {} / {} / {} | {:.0} |",
                    r.scenario,
                    fmt_rate(r.durable_per_s.unwrap_or(0.0)),
                    fmt_ms(r.commit_p50_ms),
                    fmt_ms(r.commit_p99_ms),
                    fmt_ms(r.ack_p50_ms),
                    fmt_ms(r.ack_p99_ms),
                    fmt_ms(r.ack_max_ms),
                    r.records_per_commit.unwrap_or(0.0)
                );
            }
        }
        let rss: Vec<&RunResult> = self.runs.iter().filter(|r| r.scenario == "4-rss").collect();
        if !rss.is_empty() {
            println!("\n| target | devices | VmRSS MiB (end) | VmHWM MiB (peak) |");
            println!("|---|---|---|---|");
            for r in rss {
                println!(
                    "| {} | {} | {:.1} | {:.1} |",
                    r.target.map_or("?", |t| t.label()),
                    r.clients,
                    r.rss_kib as f64 / 1024.0,
                    r.hwm_kib as f64 / 1024.0
                );
            }
        }
        let checks = self.checks();
        if !checks.is_empty() {
            println!("\n| issue target | measured | target | met |");
            println!("|---|---|---|---|");
            for c in checks {
                let value = if c.value >= 1000.0 {
                    fmt_rate(c.value)
                } else {
                    format!("{:.2}", c.value)
                };
                println!(
                    "| {} | {} | {} | {} |",
                    c.what,
                    value,
                    c.target,
                    if c.met { "yes" } else { "**no**" }
                );
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "machine": self.machine,
            "options": {
                "clients": self.opts.clients,
                "window": self.opts.window,
                "ack_window": self.opts.ack_window,
                "batch": self.opts.batch,
                "duration_s": self.opts.duration,
                "warmup_s": self.opts.warmup,
                "moderate": self.opts.moderate,
                "rss_devices": self.opts.rss_devices,
                "generator_threads": self.opts.gen_threads,
            },
            "runs": self.runs.iter().map(RunResult::json).collect::<Vec<_>>(),
            "targets": self.checks().iter().map(|c| json!({
                "what": c.what, "value": c.value, "target": c.target, "met": c.met,
            })).collect::<Vec<_>>(),
        })
    }
}
