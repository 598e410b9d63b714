//! `device-sim`: a fleet of virtual sensor devices running the real firmware library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use firmware::buffer::OverflowPolicy;
use hil_tests::acker::Acker;
use hil_tests::mosquitto::Mosquitto;
use hil_tests::sim::{self, SimConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    /// Drop the oldest unacknowledged reading when the buffer is full.
    DropOldest,
    /// Refuse new readings when the buffer is full.
    RefuseNewest,
}

/// Simulate many sensor devices publishing readings over MQTT and waiting for the gateway's
/// Ack. Exits non-zero if, when it stops, any reading was dropped or is still unacknowledged.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version)]
struct Args {
    /// MQTT broker (the edge agent, or any broker with an acker), host:port.
    #[arg(long, default_value = "127.0.0.1:1883", env = "SIM_BROKER")]
    broker: String,
    /// Number of virtual devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Readings per second per device.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Readings per publish (1..=64).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Stop sampling after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop sampling after this many readings per device (default 100 if no --duration).
    #[arg(long)]
    readings: Option<u64>,
    /// Buffer capacity per device, in readings.
    #[arg(long, default_value_t = 1024)]
    buffer: usize,
    /// What a full buffer does.
    #[arg(long, value_enum, default_value = "drop-oldest")]
    policy: Policy,
    /// Device ids are the prefix followed by the device index.
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// Seconds to wait for the last acks after sampling stops.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Resend unacknowledged readings after this many ms without ack progress.
    #[arg(long, default_value_t = 5_000)]
    resend_timeout_ms: u64,
    /// MQTT keep-alive in seconds.
    #[arg(long, default_value_t = 30)]
    keepalive: u16,
    /// Every device connects with its id as username and this password (an agent with
    /// `[mqtt] auth = "password"`: add each id with `edge-agent devices add ID --password-stdin`).
    #[arg(long, env = "SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// MQTT over TLS (an agent's `[mqtt.tls]` listener): the CA its certificate is checked
    /// against.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: each device presents its client certificate from this directory
    /// (`device-<id>.pem` and `.key`, as `edge-agent certs --device ID` makes them).
    #[arg(long, requires = "tls_ca")]
    tls_certs: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Start a private mosquitto on a free port plus the test acker and publish there
    /// (a self-contained run until the edge agent is the gateway; --broker is ignored).
    #[arg(long)]
    with_broker: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if !(1..=firmware::wire::MAX_BATCH_READINGS).contains(&a.batch) || a.rate <= 0.0 || a.devices == 0 {
        eprintln!("device-sim: --batch must be 1..=64, --rate > 0 and --devices > 0");
        return ExitCode::from(2);
    }
    // Kept alive for the whole run; dropped (stopped) on return.
    let mut local = None;
    let broker = if a.with_broker {
        match start_local_broker() {
            Ok((addr, m, acker)) => {
                eprintln!("device-sim: private mosquitto and test acker on {addr}");
                local = Some((m, acker));
                addr
            }
            Err(e) => {
                eprintln!("device-sim: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        a.broker
    };
    let cfg = SimConfig {
        broker,
        devices: a.devices,
        rate: a.rate,
        batch: a.batch,
        duration: a.duration.map(Duration::from_secs_f64),
        readings: a.readings.or(if a.duration.is_none() { Some(100) } else { None }),
        buffer: a.buffer,
        policy: match a.policy {
            Policy::DropOldest => OverflowPolicy::DropOldest,
            Policy::RefuseNewest => OverflowPolicy::RefuseNewest,
        },
        id_prefix: a.id_prefix,
        drain_timeout: Duration::from_secs_f64(a.drain_timeout),
        resend_timeout_ms: a.resend_timeout_ms,
        keep_alive_s: a.keepalive,
        sampled: None,
        password: a.password,
        tls: a.tls_ca.map(|ca| hil_tests::sim::SimTls {
            ca,
            certs: a.tls_certs,
        }),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("device-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match rt.block_on(sim::run(cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("device-sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    if a.json {
        println!("{}", report.to_json());
    } else {
        let ms = |p| {
            report
                .latency_percentile(p)
                .map_or("-".to_string(), |v| format!("{v} ms"))
        };
        println!(
            "devices {}  elapsed {:.1} s\ngenerated {}  sent {}  re-sent {}  acked {}  dropped {}  unacked {}  reconnects {}\n\
             ack latency p50 {}  p90 {}  p99 {}  max {}\nacked/s {:.0}",
            report.devices.len(),
            report.elapsed.as_secs_f64(),
            report.generated(),
            report.sent(),
            report.resent(),
            report.acked(),
            report.dropped(),
            report.unacked(),
            report.reconnects(),
            ms(50.0),
            ms(90.0),
            ms(99.0),
            ms(100.0),
            report.acked() as f64 / report.elapsed.as_secs_f64().max(1e-9),
        );
    }
    drop(local);
    if report.lossless() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "device-sim: {} reading(s) dropped, {} unacknowledged",
            report.dropped(),
            report.unacked()
        );
        ExitCode::FAILURE
    }
}

fn start_local_broker() -> anyhow::Result<(String, Mosquitto, Acker)> {
    let m = Mosquitto::start()?;
    let acker = Acker::start("127.0.0.1", m.port())?;
    Ok((m.addr(), m, acker))
}
