//! `demo`: the whole appliance in one command — a three-node replicated cloud (`--nodes 1` for
//! a single broker), an edge agent with its bridge, a simulated fleet and (when QEMU is
//! present) one firmware image.
//!
//! The binary is also the cloud broker and the edge agent: `demo cloud-broker run ...` and
//! `demo edge-agent ...` run those commands (so `cargo run --bin demo` builds everything it
//! starts, and the tests start the real processes from one binary).
//!
//! # What runs where
//! - The cloud broker and the edge agent are child processes of this binary. Each is put in
//!   its own process group (a terminal's Ctrl-C reaches only the demo, which then stops them
//!   in order: fleet, QEMU, agent, broker) and gets `PR_SET_PDEATHSIG` = SIGTERM (if the demo
//!   is killed, they stop too). Their output goes to `<data-dir>/logs/<name>.log`.
//! - The uplink is an in-process [`Proxy`] per cloud node, listening on `--kafka-port` (node N
//!   on that port + N - 1) in front of the node, which listens on a private port and
//!   advertises its proxy. Every Kafka client — the
//!   agent's bridge and a user's kcat alike — goes through it, because librdkafka connects to
//!   the advertised address; so cutting the proxy really cuts the gateway off the cloud.
//! - The fleet runs in-process ([`sim::run`]) on its own tokio runtime; shutting that runtime
//!   down drops every device task (the devices' sockets close, as a power cut would).
//! - Children are spawned from the main thread only: the parent-death signal fires when the
//!   *thread* that forked the child exits, and the main thread lives as long as the process.
//!
//! # Layout
//! - [`child`]: a child process ([`Proc`]): started in its own process group with a
//!   parent-death signal, waited on until ready, stopped with SIGTERM then SIGKILL.
//! - [`cloud`]: the cloud nodes, each behind its uplink proxy.
//! - [`status`]: what the edge agent says, and what the demo prints (banner, status lines,
//!   summary).

mod child;
mod cloud;
mod secure;
mod status;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use hil_tests::agent::http_get;
use hil_tests::proxy::Proxy;
use hil_tests::sim::{self, Report, SimConfig};
use hil_tests::wait;

use crate::child::{stop_requested, Proc};
use crate::cloud::start_cloud;
use crate::status::{print_banner, print_summary, snapshot, status_line};

#[global_allocator]
static ALLOC: cloud_broker::alloc::LazyHuge = cloud_broker::alloc::LazyHuge;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("cloud-broker") => {
            args.remove(0);
            cloud_broker::cli::main(args)
        }
        Some("edge-agent") => {
            args.remove(0);
            edge_agent::cli::main(args)
        }
        _ => demo(args),
    }
}

/// Run the whole appliance on this machine: a cloud broker, an edge agent that forwards its
/// log to the cloud over an uplink the demo can cut, a fleet of simulated devices (each one
/// the real firmware library) and, when QEMU and the board image are there, the firmware image
/// under QEMU. Prints where to look, then a status line every 5 s. Ctrl-C stops everything.
#[derive(Debug, Parser)]
#[command(
    name = "demo",
    version,
    after_help = "Walkthrough: `demo --offline-after 20 --online-after 60` cuts the gateway's \
uplink to the cloud at 20 s and restores it at 60 s: the devices keep being acknowledged (the \
gateway stores their readings), the bridge backlog grows, then drains into the cloud.\n\n\
The binary is also the components it starts: `demo cloud-broker run --help`, \
`demo edge-agent --help`."
)]
struct Args {
    /// Data of the cloud broker and the edge agent, and the logs; kept between runs (a second
    /// start on the same directory resumes).
    #[arg(long, value_name = "DIR", default_value = "./demo-data")]
    data_dir: PathBuf,
    /// Simulated devices (0 for none).
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Readings per second per device.
    #[arg(long, value_name = "PER_S", default_value_t = 2.0)]
    rate: f64,
    /// Cut the gateway's uplink to the cloud this many seconds after the start.
    #[arg(long, value_name = "SECS")]
    offline_after: Option<u64>,
    /// Restore the uplink this many seconds after the start (later than --offline-after).
    #[arg(long, value_name = "SECS", requires = "offline_after")]
    online_after: Option<u64>,
    /// Stop after this many seconds: the devices stop sampling and get their last acks, the
    /// cloud catches up (at most 30 s), then everything stops [default: run until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Do not start the firmware image under QEMU.
    #[arg(long)]
    no_qemu: bool,
    /// Cloud broker nodes: 3 make a replicated cluster (every partition on three nodes, one
    /// can die); 1 is a single broker.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=5))]
    nodes: u16,
    /// The cloud's Kafka port on 127.0.0.1, for kcat and any Kafka client (the uplink proxy
    /// listens here, in front of the broker); node N of a cluster is on this port + N - 1.
    #[arg(long, value_name = "PORT", default_value_t = 9092, value_parser = clap::value_parser!(u16).range(1..))]
    kafka_port: u16,
    /// The edge agent's MQTT port on 127.0.0.1 (devices publish here; the firmware image does).
    #[arg(long, value_name = "PORT", default_value_t = 1883, value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_port: u16,
    /// The edge agent's MQTT-over-TLS port on 127.0.0.1 (the simulated devices publish here,
    /// each with its client certificate).
    #[arg(long, value_name = "PORT", default_value_t = 8883, value_parser = clap::value_parser!(u16).range(1..))]
    mqtts_port: u16,
    /// The edge agent's admin HTTP port on 127.0.0.1 (/api/bridge, /metrics, /api/devices).
    #[arg(long, value_name = "PORT", default_value_t = 8081, value_parser = clap::value_parser!(u16).range(1..))]
    admin_port: u16,
    /// The cloud broker's HTTP port on 127.0.0.1 (/health, /api/cluster); a cluster's other
    /// nodes take free ports (the banner names them).
    #[arg(long, value_name = "PORT", default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    cloud_http_port: u16,
}

/// Status lines come this often.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long the devices wait for their last acks after sampling stops.
const FLEET_DRAIN: Duration = Duration::from_secs(30);
/// How long a `--duration` run waits for the cloud to acknowledge the whole backlog.
const CLOUD_CATCH_UP: Duration = Duration::from_secs(30);
/// SIGTERM to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A component must be up within this long.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY_ID: &str = "demo-gateway";

fn demo(args: Vec<OsString>) -> ExitCode {
    let a = Args::parse_from(args);
    match run(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What wakes the main loop besides its timers.
#[derive(Debug)]
enum Event {
    /// SIGINT or SIGTERM.
    Stop(&'static str),
    /// The fleet finished (only with `--duration`).
    FleetDone(anyhow::Result<Report>),
}

/// Why the demo stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Duration,
    Signal(&'static str),
}

fn validate(a: &Args) -> anyhow::Result<()> {
    if a.devices > 0 {
        ensure!(
            a.rate.is_finite() && a.rate > 0.0,
            "--rate must be a positive number of readings per second"
        );
    }
    if let (Some(off), Some(on)) = (a.offline_after, a.online_after) {
        ensure!(
            on > off,
            "--online-after ({on}) must be later than --offline-after ({off})"
        );
    }
    ensure!(a.duration != Some(0), "--duration must be at least 1 second");
    let kafka_ports: Vec<(u16, &str)> = (0..a.nodes)
        .map(|i| {
            let p = a.kafka_port.checked_add(i).unwrap_or(0);
            (
                p,
                if i == 0 {
                    "--kafka-port"
                } else {
                    "--kafka-port (+ node)"
                },
            )
        })
        .collect();
    ensure!(
        kafka_ports.iter().all(|(p, _)| *p > 0),
        "--kafka-port {} leaves no room for {} nodes",
        a.kafka_port,
        a.nodes
    );
    let mut ports = kafka_ports;
    ports.extend([
        (a.mqtt_port, "--mqtt-port"),
        (a.mqtts_port, "--mqtts-port"),
        (a.admin_port, "--admin-port"),
        (a.cloud_http_port, "--cloud-http-port"),
    ]);
    for (i, (p, flag)) in ports.iter().enumerate() {
        if let Some((_, other)) = ports[..i].iter().find(|(q, _)| q == p) {
            bail!("{other} and {flag} are both {p}: give them different ports");
        }
    }
    for (p, flag) in ports {
        std::net::TcpListener::bind(("127.0.0.1", p))
            .with_context(|| format!("127.0.0.1:{p} is in use: choose another port with {flag}"))?;
    }
    Ok(())
}

/// Whether QEMU runs, or one line saying why not.
fn qemu_image(no_qemu: bool) -> Result<PathBuf, String> {
    if no_qemu {
        return Err("QEMU: off (--no-qemu)".into());
    }
    if hil_tests::mosquitto::which("qemu-system-arm").is_none() {
        return Err("QEMU: skipped, qemu-system-arm is not installed \
                    (apt install qemu-system-arm, or scripts/setup)"
            .into());
    }
    hil_tests::qemu::lm3s6965_image().map_err(|_| {
        "QEMU: skipped, the board image is not built (scripts/test-all builds it, or \
         `cargo build --release` in firmware/boards/qemu-lm3s6965)"
            .to_string()
    })
}

/// The board image under QEMU as device `qemu-1`, sampling forever (`n=0`), its UART0 a TCP
/// client of the agent's MQTT port that reconnects every second. Started directly rather than
/// with `hil_tests::qemu::Qemu`, which runs QEMU under `timeout(1)`: the demo needs QEMU
/// itself as its child, so that SIGTERM and the parent-death signal reach it.
fn start_qemu(mqtt_port: u16, rate: f64, password: &str, log: &Path) -> anyhow::Result<Proc> {
    let rate = rate.round().clamp(1.0, 1000.0) as u32;
    let args = [
        "id=qemu-1".to_string(),
        "n=0".into(),
        format!("rate={rate}"),
        format!("pass={password}"),
    ];
    let cmd = hil_tests::qemu::command(mqtt_port, &args)?;
    Proc::spawn("firmware under QEMU", cmd, log)
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    validate(&a)?;
    let data_dir =
        std::path::absolute(&a.data_dir).with_context(|| format!("data dir {}", a.data_dir.display()))?;
    let logs = data_dir.join("logs");
    for d in [&logs, &data_dir.join("cloud"), &data_dir.join("edge")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let exe = std::env::current_exe().context("locating the demo binary")?;

    // Signals first, so a Ctrl-C during start-up also stops cleanly.
    let (tx, events) = mpsc::channel::<Event>();
    let signals = {
        let tx = tx.clone();
        foundation::shutdown::on_signals(move |sig| tx.send(Event::Stop(sig)).is_ok())
            .context("installing the signal handlers")?
    };

    // Security on both hops, made for this run (secure.rs): devices log in to the agent (the
    // fleet with client certificates over TLS, qemu-1 with a password), the bridge logs in to
    // the cloud with SCRAM over TLS.
    let kafka = (0..a.nodes)
        .map(|i| format!("127.0.0.1:{}", a.kafka_port + i))
        .collect::<Vec<_>>()
        .join(",");
    let prefix = SimConfig::default().id_prefix;
    let device_ids: Vec<String> = (0..a.devices).map(|i| format!("{prefix}{i}")).collect();
    let secured = secure::provision(&data_dir, &device_ids, a.mqtts_port, &kafka)?;

    // The cloud, each node behind an uplink proxy on its user-facing Kafka port.
    let cloud = start_cloud(&a, &exe, &data_dir, &logs, &events, &secured)?;
    let http_ports: Vec<u16> = cloud.iter().map(|n| n.http).collect();
    let (proxies, mut brokers): (Vec<Proxy>, Vec<Proc>) =
        cloud.into_iter().map(|n| (n.proxy, n.proc)).unzip();

    let password = secured.device_password.clone();
    let edge_cfg = secured.edge_config.clone();
    let mut cmd = Command::new(&exe);
    cmd.args(["edge-agent", "run", "--config"])
        .arg(&edge_cfg)
        .arg("--data-dir")
        .arg(data_dir.join("edge"))
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", a.mqtt_port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", a.admin_port))
        .arg("--cloud")
        .arg(&kafka)
        .args(["--gateway-id", GATEWAY_ID])
        .env("NO_COLOR", "1");
    let agent_log = logs.join("edge-agent.log");
    let mut agent = Proc::spawn("edge agent", cmd, &agent_log)?;
    let admin = a.admin_port;
    agent.wait_ready("the edge agent to be healthy", &events, || {
        http_get(admin, "/health").is_ok_and(|(code, _)| code == 200)
    })?;

    // The firmware image under QEMU, when it can run.
    let qemu_log = logs.join("qemu.log");
    let mut qemu = match qemu_image(a.no_qemu) {
        Ok(_) => match start_qemu(a.mqtt_port, a.rate, &password, &qemu_log) {
            Ok(p) => Some(p),
            Err(e) => {
                println!("QEMU: skipped, it did not start: {e:#}");
                None
            }
        },
        Err(why) => {
            println!("{why}");
            None
        }
    };

    // The fleet, in-process on its own runtime.
    let fleet = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the fleet's tokio runtime")?;
    let mut fleet_running = a.devices > 0;
    if fleet_running {
        let cfg = SimConfig {
            broker: format!("127.0.0.1:{}", a.mqtts_port),
            devices: a.devices,
            rate: a.rate,
            batch: 1,
            duration: a
                .duration
                .map(|d| Duration::from_secs(d).saturating_sub(started.elapsed())),
            readings: None,
            drain_timeout: FLEET_DRAIN,
            tls: Some(hil_tests::sim::SimTls {
                ca: secured.ca.clone(),
                certs: Some(secured.certs.clone()),
            }),
            ..SimConfig::default()
        };
        let tx = tx.clone();
        fleet.spawn(async move {
            let _ = tx.send(Event::FleetDone(sim::run(cfg).await));
        });
    }

    let mut logs: Vec<&Path> = brokers.iter().map(|b| b.log.as_path()).collect();
    logs.push(agent_log.as_path());
    if qemu.is_some() {
        logs.push(&qemu_log);
    }
    print_banner(
        &a,
        &data_dir,
        qemu.is_some(),
        &logs,
        &http_ports,
        &secured.kcat_properties,
        (&secured.admin_token, &secured.cloud_token),
    );

    let at = |s: Option<u64>| s.map(|s| started + Duration::from_secs(s));
    let (mut offline_at, mut online_at) = (at(a.offline_after), at(a.online_after));
    let end_at = at(a.duration);
    let mut next_status = started + STATUS_EVERY;
    let mut uplink_down = false;
    let mut cuts = 0u32;
    let mut report: Option<Report> = None;
    let reason = loop {
        let now = Instant::now();
        if offline_at.is_some_and(|t| t <= now) {
            offline_at = None;
            for proxy in &proxies {
                proxy.set_down(true);
                proxy.cut();
            }
            uplink_down = true;
            cuts += 1;
            println!(
                "[{:>4}s] uplink DOWN: the gateway is cut off from the cloud; devices are still \
                 acknowledged, the backlog grows at the edge",
                started.elapsed().as_secs()
            );
        }
        if online_at.is_some_and(|t| t <= now) {
            online_at = None;
            for proxy in &proxies {
                proxy.set_down(false);
            }
            uplink_down = false;
            println!(
                "[{:>4}s] uplink UP again: the bridge reconnects and the backlog drains into the cloud",
                started.elapsed().as_secs()
            );
        }
        if end_at.is_some_and(|t| t <= now) {
            break Reason::Duration;
        }
        if next_status <= now {
            println!("{}", status_line(started.elapsed(), admin, uplink_down));
            while next_status <= Instant::now() {
                next_status += STATUS_EVERY;
            }
        }
        for p in brokers.iter_mut().chain([&mut agent]) {
            if let Some(st) = p.exited() {
                bail!(
                    "the {} exited unexpectedly ({st}): see {}",
                    p.name,
                    p.log.display()
                );
            }
        }
        if let Some(st) = qemu.as_mut().and_then(|q| q.exited()) {
            println!("QEMU exited ({st}): see {}", qemu_log.display());
            qemu = None;
        }
        let wake = [Some(next_status), offline_at, online_at, end_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_status);
        match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Stop(sig)) => break Reason::Signal(sig),
            Ok(Event::FleetDone(r)) => {
                // Without --duration the fleet never ends by itself; with it, it ends at the
                // deadline, which the next iteration sees.
                report = Some(r.context("the simulated fleet failed")?);
                fleet_running = false;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("event channel closed"),
        }
    };
    let secs = started.elapsed().as_secs();
    match reason {
        Reason::Duration => println!("[{secs:>4}s] --duration reached: stopping"),
        Reason::Signal(sig) => println!("[{secs:>4}s] {sig}: stopping"),
    }

    // 1. The devices: with --duration they stop sampling and wait for their last acks.
    let mut interrupted = matches!(reason, Reason::Signal(_));
    if fleet_running && !interrupted {
        println!(
            "waiting for the devices' last acks (at most {} s)",
            FLEET_DRAIN.as_secs()
        );
        match events.recv_timeout(FLEET_DRAIN + Duration::from_secs(10)) {
            Ok(Event::FleetDone(r)) => report = Some(r.context("the simulated fleet failed")?),
            Ok(Event::Stop(sig)) => {
                println!("{sig}: not waiting any longer");
                interrupted = true;
            }
            Err(_) => println!("the devices did not finish in time"),
        }
    }
    fleet.shutdown_timeout(Duration::from_secs(2));
    // 2. The firmware under QEMU.
    if let Some(mut q) = qemu.take() {
        q.stop();
    }
    // 3. With --duration, let the cloud catch up so the summary is exact.
    if reason == Reason::Duration && !interrupted {
        if uplink_down {
            println!("the uplink is down: the backlog stays at the edge (the next start forwards it)");
        } else {
            println!(
                "waiting for the cloud to acknowledge the backlog (at most {} s)",
                CLOUD_CATCH_UP.as_secs()
            );
            // The cloud has everything: no forwarded partition has a backlog (the bridge
            // measures it against the log's end when asked), and the telemetry checkpoints
            // cover every record the edge log holds (read from the log itself, first).
            let caught_up = wait::until(
                CLOUD_CATCH_UP,
                "the cloud to acknowledge every edge record",
                || {
                    if let Some(sig) = stop_requested(&events) {
                        return Some(Err(sig));
                    }
                    snapshot(admin)
                        .ok()
                        .filter(|s| s.backlog == 0 && s.cloud_telemetry >= s.edge_telemetry)
                        .map(|_| Ok(()))
                },
            );
            match caught_up {
                Ok(Ok(())) => {}
                Ok(Err(sig)) => println!("{sig}: not waiting any longer"),
                Err(e) => println!("{e}"),
            }
        }
    }
    let last = snapshot(admin);
    // 4. The gateway (it commits and acks what it has), then the cloud.
    let mut clean = true;
    for p in [&mut agent].into_iter().chain(brokers.iter_mut()) {
        match p.stop() {
            Some((st, false)) if st.success() => {}
            Some((st, killed)) => {
                clean = false;
                let how = if killed {
                    "was killed after SIGTERM timed out"
                } else {
                    "exited badly"
                };
                eprintln!("demo: the {} {how} ({st}): see {}", p.name, p.log.display());
            }
            None => {}
        }
    }
    drop(proxies);
    drop(signals);

    print_summary(reason, started.elapsed(), report.as_ref(), last, cuts);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
