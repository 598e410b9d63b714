//! The engine of `device-sim`: many virtual devices, each one the real firmware library.
//!
//! Every virtual device is a tokio task that owns a [`firmware::mqtt::Uplink`] and runs it with
//! the library's own async driver ([`firmware::driver::run`]) over a tokio `TcpStream` adapted
//! to `embedded-io-async`. So the simulator exercises the same buffer, MQTT state machine,
//! resend and reconnect logic as the MCU image, only with a socket instead of a UART. With
//! [`SimTls`] the socket is TLS (rustls), each device presenting its own client certificate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use embedded_io_adapters::tokio_1::FromTokio;
use firmware::buffer::OverflowPolicy;
use firmware::driver::{self, Clock, Connector};
use firmware::mqtt::{Config, Uplink};
use firmware::wire::Reading;
use tokio::net::TcpStream;

/// Transmit buffer of a simulated device: room for a full 64-reading batch.
const SIM_TX: usize = 1280;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Broker address, `host:port`.
    pub broker: String,
    /// Number of virtual devices.
    pub devices: usize,
    /// Readings per second per device.
    pub rate: f64,
    /// Readings per publish (at most 64).
    pub batch: usize,
    /// Stop sampling after this long...
    pub duration: Option<Duration>,
    /// ...or after this many readings per device (whichever comes first).
    pub readings: Option<u64>,
    /// Buffer capacity per device, in readings.
    pub buffer: usize,
    /// What a full buffer does.
    pub policy: OverflowPolicy,
    /// Device ids are `<prefix><index>`.
    pub id_prefix: String,
    /// After sampling stops, how long to wait for the last acks.
    pub drain_timeout: Duration,
    /// Resend timeout of each device, ms.
    pub resend_timeout_ms: u64,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u16,
    /// Counts the readings sampled, over the fleet (a test waits on it).
    pub sampled: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Every device connects with its id as username and this password (an agent with
    /// `[mqtt] auth = "password"`).
    pub password: Option<String>,
    /// MQTT over TLS (`[mqtt.tls]`).
    pub tls: Option<SimTls>,
}

/// TLS for the simulated devices.
#[derive(Debug, Clone)]
pub struct SimTls {
    /// The CA the agent's certificate is checked against.
    pub ca: std::path::PathBuf,
    /// Where each device's client certificate is, as `edge-agent certs` names them
    /// (`device-<id>.pem` and `.key`); none: no client certificates (log in with a password).
    pub certs: Option<std::path::PathBuf>,
}

impl SimTls {
    /// The TLS connector of device `id` to the agent at `addr`.
    fn connector(
        &self,
        id: &str,
        addr: &str,
    ) -> anyhow::Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)> {
        match &self.certs {
            None => tls_connector(&self.ca, None, addr),
            Some(dir) => {
                let (cert, key) = (
                    dir.join(format!("device-{id}.pem")),
                    dir.join(format!("device-{id}.key")),
                );
                tls_connector(&self.ca, Some((&cert, &key)), addr)
            }
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            broker: "127.0.0.1:1883".into(),
            devices: 1,
            rate: 10.0,
            batch: 1,
            duration: None,
            readings: Some(100),
            buffer: 1024,
            policy: OverflowPolicy::DropOldest,
            id_prefix: "sim-".into(),
            drain_timeout: Duration::from_secs(30),
            resend_timeout_ms: 5_000,
            keep_alive_s: 30,
            sampled: None,
            password: None,
            tls: None,
        }
    }
}

/// What one device did.
#[derive(Debug, Clone, Default)]
pub struct DeviceReport {
    /// Device id.
    pub id: String,
    /// Counters from the device's uplink.
    pub counters: firmware::wire::Counters,
    /// Readings still unacknowledged when the device stopped.
    pub unacked: u64,
    /// Milliseconds from sampling to ack, per acked reading.
    pub latencies_ms: Vec<u32>,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per device.
    pub devices: Vec<DeviceReport>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    fn sum(&self, f: impl Fn(&DeviceReport) -> u64) -> u64 {
        self.devices.iter().map(f).sum()
    }
    /// Readings sampled.
    pub fn generated(&self) -> u64 {
        self.sum(|d| d.counters.generated)
    }
    /// Readings sent (first sends).
    pub fn sent(&self) -> u64 {
        self.sum(|d| d.counters.sent)
    }
    /// Readings sent again.
    pub fn resent(&self) -> u64 {
        self.sum(|d| d.counters.resent)
    }
    /// Readings acknowledged.
    pub fn acked(&self) -> u64 {
        self.sum(|d| d.counters.acked)
    }
    /// Readings dropped for overflow.
    pub fn dropped(&self) -> u64 {
        self.sum(|d| d.counters.dropped_overflow)
    }
    /// Readings still unacknowledged at the end.
    pub fn unacked(&self) -> u64 {
        self.sum(|d| d.unacked)
    }
    /// Reconnects.
    pub fn reconnects(&self) -> u64 {
        self.sum(|d| d.counters.reconnects)
    }
    /// Ack latency percentile (0..=100), ms.
    pub fn latency_percentile(&self, p: f64) -> Option<u32> {
        let mut all: Vec<u32> = self
            .devices
            .iter()
            .flat_map(|d| d.latencies_ms.iter().copied())
            .collect();
        if all.is_empty() {
            return None;
        }
        all.sort_unstable();
        let idx = ((p / 100.0) * (all.len() - 1) as f64).round() as usize;
        Some(all[idx.min(all.len() - 1)])
    }
    /// Whether every sampled reading was acknowledged and none was dropped.
    pub fn lossless(&self) -> bool {
        self.dropped() == 0 && self.unacked() == 0
    }
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "devices": self.devices.len(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "generated": self.generated(),
            "sent": self.sent(),
            "resent": self.resent(),
            "acked": self.acked(),
            "dropped": self.dropped(),
            "unacked": self.unacked(),
            "reconnects": self.reconnects(),
            "ack_latency_ms": {
                "p50": self.latency_percentile(50.0),
                "p90": self.latency_percentile(90.0),
                "p99": self.latency_percentile(99.0),
                "max": self.latency_percentile(100.0),
            },
            "acked_per_s": self.acked() as f64 / self.elapsed.as_secs_f64().max(1e-9),
        })
    }
}

struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

struct TokioDelay;

impl embedded_hal_async::delay::DelayNs for TokioDelay {
    async fn delay_ns(&mut self, ns: u32) {
        tokio::time::sleep(Duration::from_nanos(ns.into())).await
    }
    async fn delay_us(&mut self, us: u32) {
        tokio::time::sleep(Duration::from_micros(us.into())).await
    }
    async fn delay_ms(&mut self, ms: u32) {
        tokio::time::sleep(Duration::from_millis(ms.into())).await
    }
}

struct TcpConnector {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

/// A device's socket: plain TCP or TLS over it.
pub enum Stream {
    /// TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// Connects to `addr` (with TCP_NODELAY), then TLS with `tls` if given, each step within
    /// `timeout`.
    pub async fn connect(
        addr: &str,
        tls: Option<&(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
        timeout: Duration,
    ) -> std::io::Result<Stream> {
        let late = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}"));
        let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| late())??;
        let _ = s.set_nodelay(true);
        Ok(match tls {
            None => Stream::Plain(s),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), s))
                    .await
                    .map_err(|_| late())??;
                Stream::Tls(Box::new(tls))
            }
        })
    }
}

/// A TLS connector for a client presenting `cert` and `key` (if given) to a server at
/// `host:port` whose certificate is from `ca`, and the server name it checks.
pub fn tls_connector(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    addr: &str,
) -> anyhow::Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| anyhow::anyhow!("{host}: not a server name: {e}"))?;
    let config = foundation::tls::client_config(ca, identity)?;
    Ok((tokio_rustls::TlsConnector::from(config), name))
}

impl Connector for TcpConnector {
    type Conn = FromTokio<Stream>;
    async fn connect(&mut self) -> Option<Self::Conn> {
        let s = Stream::connect(&self.addr, self.tls.as_ref(), Duration::from_secs(5))
            .await
            .ok()?;
        Some(FromTokio::new(s))
    }
}

/// Runs one virtual device to completion.
async fn device(
    cfg: SimConfig,
    index: usize,
    start_delay: Duration,
    boot_id: u32,
) -> anyhow::Result<DeviceReport> {
    tokio::time::sleep(start_delay).await;
    let id = format!("{}{}", cfg.id_prefix, index);
    let mut ucfg = Config::new(&id, boot_id).map_err(|e| anyhow::anyhow!("device id {id:?}: {e}"))?;
    ucfg.batch_max = cfg.batch.clamp(1, firmware::wire::MAX_BATCH_READINGS);
    let period_ms = 1000.0 / cfg.rate.max(0.001);
    // A batch waits at most as long as it takes to fill, so batching never adds more latency
    // than the batch's own sampling time.
    ucfg.linger_ms = ((period_ms * ucfg.batch_max as f64) as u64).clamp(1, 1_000);
    ucfg.max_in_flight = (ucfg.batch_max * 8).max(64);
    ucfg.resend_timeout_ms = cfg.resend_timeout_ms;
    ucfg.keep_alive_s = cfg.keep_alive_s;
    if let Some(pw) = &cfg.password {
        let fits = ucfg.username.push_str(&id).is_ok() && ucfg.password.push_str(pw).is_ok();
        anyhow::ensure!(fits, "a password of at most 64 bytes");
    }
    let tls = match &cfg.tls {
        None => None,
        Some(t) => Some(t.connector(&id, &cfg.broker)?),
    };
    ucfg.reconnect_min_ms = 200;
    ucfg.reconnect_max_ms = 5_000;
    ucfg.response_timeout_ms = 10_000;
    let clock = TokioClock(Instant::now());
    let mut uplink: Uplink<Vec<Reading>, SIM_TX> = Uplink::new(
        ucfg,
        vec![Reading::default(); cfg.buffer.max(1)],
        cfg.policy,
        0,
        0,
    );
    let target = cfg.readings.unwrap_or(u64::MAX);
    let stop_at_ms = cfg.duration.map_or(u64::MAX, |d| d.as_millis() as u64);
    let mut next_at = 0.0f64;
    let mut made = 0u64;
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    let mut latencies = Vec::new();
    let mut drain_deadline: Option<u64> = None;
    let phase = index as f32 * 0.37;
    driver::run(
        &mut uplink,
        &mut TcpConnector {
            addr: cfg.broker.clone(),
            tls,
        },
        &clock,
        &mut TokioDelay,
        |u, now| {
            let sampling = made < target && now < stop_at_ms;
            if sampling {
                while made < target && (next_at as u64) <= now {
                    let value = 20.0 + 5.0 * (made as f32 * 0.1 + phase).sin();
                    let r = Reading {
                        channel: 0,
                        timestamp_ms: foundation::time::now_ms() as u64,
                        value,
                    };
                    if let Ok(seq) = u.push(r, now) {
                        pending.push_back((seq, now));
                    }
                    made += 1;
                    if let Some(c) = &cfg.sampled {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    next_at += period_ms;
                }
            }
            let low = u.buffer().low_seq();
            while pending.front().is_some_and(|&(seq, _)| seq < low) {
                let (_, t) = pending.pop_front().unwrap_or_default();
                latencies.push(now.saturating_sub(t) as u32);
            }
            if made < target && now < stop_at_ms {
                return Some(next_at as u64);
            }
            let deadline = *drain_deadline.get_or_insert(now + cfg.drain_timeout.as_millis() as u64);
            if u.buffer().is_empty() || now >= deadline {
                return None;
            }
            Some(deadline)
        },
    )
    .await;
    Ok(DeviceReport {
        id,
        counters: uplink.counters(),
        unacked: uplink.buffer().len() as u64,
        latencies_ms: latencies,
    })
}

/// Runs the whole fleet. Device starts are spread over the first second.
pub async fn run(cfg: SimConfig) -> anyhow::Result<Report> {
    let started = Instant::now();
    let seed = (foundation::time::now_ms() as u32) ^ std::process::id().rotate_left(16);
    let spread = Duration::from_secs(1).as_micros() as u64 / cfg.devices.max(1) as u64;
    let mut tasks = Vec::with_capacity(cfg.devices);
    for i in 0..cfg.devices {
        let boot = seed.wrapping_add((i as u32).wrapping_mul(0x9e37_79b9));
        tasks.push(tokio::spawn(device(
            cfg.clone(),
            i,
            Duration::from_micros(spread * i as u64),
            boot,
        )));
    }
    let mut devices = Vec::with_capacity(tasks.len());
    for t in tasks {
        devices.push(t.await??);
    }
    Ok(Report {
        devices,
        elapsed: started.elapsed(),
    })
}
