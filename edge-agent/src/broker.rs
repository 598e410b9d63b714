//! The embedded MQTT broker (rumqttd 0.20) and the local link the ingest pipeline reads.
//!
//! Pitfalls of rumqttd 0.20 this module handles (see the issue notes and the crate source):
//! - the router pauses a local link whose buffer fills and sends `Notification::Unschedule`;
//!   unless answered with exactly one `ready()`, the link stalls for good;
//! - a link that falls behind the in-memory filter log is silently moved to its head: we watch
//!   the delivery cursor (it rises by one per message within a filter) and count the jumps;
//!   devices re-send what was skipped because nothing is acked before it is on disk;
//! - `start()` only logs a bind failure, so we bind the port ourselves first to fail loudly;
//! - its sockets keep Nagle's algorithm on: a PUBACK written right after a forwarded Ack then
//!   waits for the device's delayed TCP ACK (40 ms on Linux; `ingest-bench` measured a p99
//!   PUBACK latency of 46 ms and a third of the throughput). We set `TCP_NODELAY` on its
//!   listening socket, which accepted connections inherit ([`set_listener_nodelay`]);
//! - there is no shutdown: the agent stops taking messages from the link and exits.
//!
//! Memory: every subscription filter gets its own in-memory log in rumqttd. Telemetry filters
//! get a 4 × 4 MiB window (about half a second at a million readings per second); each
//! device's ack filter gets 2 × 1 KiB, since acks are cumulative and only the newest matters.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use anyhow::Context;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, ConnectionSettings, Notification, RouterConfig, SegmentConfig, ServerSettings};
use tracing::{error, warn};

use crate::config::MqttConfig;
use crate::credentials::Checker;
use crate::ingest::Message;
use crate::metrics::{add, Metrics};

/// Filters the ingest link subscribes to.
pub const FILTERS: [&str; 2] = ["sensors/+", "devices/+/status"];

/// The rumqttd configuration the agent runs with (also used by `ingest-bench` for bare rumqttd,
/// so the peer is sized exactly like the agent's broker).
pub fn rumqttd_config(cfg: &MqttConfig) -> rumqttd::Config {
    rumqttd_config_with(cfg, None, None)
}

/// [`rumqttd_config`] with devices checked by `auth` (`[mqtt] auth = "password"`), and an MQTT 5
/// listener on `v5` (behind the front, which also bounds what rumqttd keeps).
pub fn rumqttd_config_with(
    cfg: &MqttConfig,
    auth: Option<Arc<Checker>>,
    v5: Option<SocketAddr>,
) -> rumqttd::Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        // rumqttd compares the whole remaining length (topic + payload + header fields).
        max_payload_size: cfg.max_payload_bytes + 256,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    if let Some(chk) = auth {
        connections.set_auth_handler(move |client_id, username, password| {
            let chk = chk.clone();
            async move { chk.check(client_id, username, password).await }
        });
    }
    let server = ServerSettings {
        name: "mqtt-v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    let v5 = v5.map(|listen| {
        HashMap::from([(
            "v5".to_string(),
            ServerSettings {
                name: "mqtt-v5".into(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections,
            },
        )])
    });
    let small = SegmentConfig {
        max_segment_size: 1024,
        max_segment_count: 2,
    };
    let router = RouterConfig {
        max_connections: cfg.max_connections + 16,
        max_outgoing_packet_count: 1000,
        max_segment_size: 4 << 20,
        max_segment_count: 4,
        custom_segment: Some(HashMap::from([("devices/+/ack".to_string(), small)])),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5,
        ..Default::default()
    }
}

/// A publish as rumqttd delivered it to the link (its topic checked to be UTF-8), moved to the
/// ingest thread without copying: topic and payload stay the broker's shared buffers, so the
/// link reader allocates nothing per message and the ingest thread frees nothing per message.
#[derive(Debug)]
pub struct LinkPublish(rumqttd::protocol::Publish);

impl Message for LinkPublish {
    fn topic(&self) -> &str {
        // Checked by the reader; an impossible failure is an "unexpected topic" dead letter.
        std::str::from_utf8(&self.0.topic).unwrap_or("")
    }
    fn payload(&self) -> &[u8] {
        &self.0.payload
    }
}

/// A running broker: the link used to publish acks, and the listening address.
pub struct Mqtt {
    /// Publishes acks (QoS 0 from the link; devices receive them at their subscription QoS).
    pub tx: LinkTx,
    rx: Option<LinkRx>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt").finish_non_exhaustive()
    }
}

impl Mqtt {
    /// Starts rumqttd on `cfg.listen` and subscribes the ingest link.
    pub fn start(
        cfg: &MqttConfig,
        auth: Option<Arc<Checker>>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        // rumqttd logs a bind failure and carries on; find out ourselves.
        let public =
            TcpListener::bind(cfg.listen).with_context(|| format!("MQTT listen address {}", cfg.listen))?;
        // Devices reach the front (crate::front) on the public address, and rumqttd listens on
        // loopback ports behind it: two distinct free ports (both held until both are known),
        // released for rumqttd.
        let mut rcfg = cfg.clone();
        let mode = match &auth {
            Some(checker) => crate::front::Mode::Password {
                token: checker.front_token(),
            },
            None => crate::front::Mode::Open(Arc::new(crate::front::DeviceSet::with_metrics(
                cfg.max_devices,
                metrics.clone(),
            ))),
        };
        let held = [
            TcpListener::bind("127.0.0.1:0").context("a loopback port for rumqttd")?,
            TcpListener::bind("127.0.0.1:0").context("a loopback port for rumqttd")?,
        ];
        rcfg.listen = held[0].local_addr()?;
        let v5 = held[1].local_addr()?;
        drop(held);
        let cfg = &rcfg;
        let mut broker = Broker::new(rumqttd_config_with(cfg, auth, Some(v5)));
        // An unguessable client id: a remote client with the same id would take the link over.
        let id = format!("edge-agent-ingest-{:016x}", foundation::ids::random_u64());
        let (mut tx, rx) = broker
            .link(&id)
            .map_err(|e| anyhow::anyhow!("rumqttd link: {e:?}"))?;
        for f in FILTERS {
            tx.subscribe(f)
                .map_err(|e| anyhow::anyhow!("rumqttd subscribe {f}: {e:?}"))?;
        }
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    error!(error = ?e, "rumqttd stopped");
                }
            })
            .context("starting the rumqttd thread")?;
        wait_listening(cfg.listen)?;
        match set_listener_nodelay(cfg.listen) {
            Ok(0) | Err(_) => {
                warn!("could not set TCP_NODELAY on rumqttd's listener; small acks may wait 40 ms")
            }
            Ok(_) => {}
        }
        {
            wait_listening(v5)?;
            let _ = set_listener_nodelay(v5);
            let f = crate::front::Front {
                inner: cfg.listen,
                inner_v5: v5,
                max_packet: cfg.max_payload_bytes + 256,
                metrics: metrics.clone(),
                frame_deadline: std::time::Duration::from_secs(cfg.frame_timeout_s),
                mode,
                connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
                log: Arc::new(foundation::logging::Throttle::default()),
            };
            public.set_nonblocking(true)?;
            let tls = match &cfg.tls {
                None => None,
                Some(t) => {
                    let mode = match (&t.client_ca, t.require_client_cert) {
                        (None, _) => foundation::tls::ClientAuth::None,
                        (Some(_), true) => foundation::tls::ClientAuth::Required,
                        (Some(_), false) => foundation::tls::ClientAuth::Optional,
                    };
                    let config =
                        foundation::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref(), mode)
                            .context("[mqtt.tls]")?;
                    let l = TcpListener::bind(t.listen)
                        .with_context(|| format!("MQTT TLS listen address {}", t.listen))?;
                    l.set_nonblocking(true)?;
                    Some((l, tokio_rustls::TlsAcceptor::from(config)))
                }
            };
            std::thread::Builder::new()
                .name("mqtt-front".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => return error!(error = %e, "the MQTT front has no runtime"),
                    };
                    rt.block_on(async move {
                        if let Some((l, acceptor)) = tls {
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => {
                                    tokio::spawn(crate::front::serve(l, f.clone(), Some(acceptor)));
                                }
                                Err(e) => error!(error = %e, "the MQTT front's TLS listener"),
                            }
                        }
                        match tokio::net::TcpListener::from_std(public) {
                            Ok(l) => crate::front::serve(l, f, None).await,
                            Err(e) => error!(error = %e, "the MQTT front's listener"),
                        }
                    })
                })
                .context("starting the MQTT front")?;
        }
        Ok(Mqtt { tx, rx: Some(rx) })
    }

    /// Starts the thread that moves publishes from the link into `out`.
    pub fn spawn_reader(
        &mut self,
        out: SyncSender<LinkPublish>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<()> {
        let rx = self.rx.take().context("reader already started")?;
        std::thread::Builder::new()
            .name("mqtt-link".into())
            .spawn(move || read_link(rx, out, metrics))
            .context("starting the link reader")?;
        Ok(())
    }
}

/// Sets `TCP_NODELAY` on this process's TCP sockets bound to `addr`: rumqttd's listener (Linux
/// copies the option to every socket it accepts from then on) and any connection accepted
/// already. rumqttd binds its listener itself and offers no socket hook, so the listener is
/// found among the process's descriptors. Returns how many sockets were set.
pub fn set_listener_nodelay(addr: SocketAddr) -> std::io::Result<usize> {
    use std::os::fd::{FromRawFd, RawFd};
    let mut set = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for getsockname and setsockopt, which fail
        // harmlessly on anything that is not a TCP socket; ManuallyDrop never closes it.
        let sock = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if sock.local_addr().ok() == Some(addr) && sock.set_nodelay(true).is_ok() {
            set += 1;
        }
    }
    Ok(set)
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    // Read from the socket table: a probing connection would make rumqttd log an error.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !listens_on(addr) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "rumqttd did not start listening on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Whether a socket of this machine listens on `addr`, read from `/proc/net/tcp` (IPv4;
/// without connecting, so the server logs no aborted connection). An IPv6 address, or no
/// `/proc`, is checked by connecting.
fn listens_on(addr: std::net::SocketAddr) -> bool {
    let std::net::SocketAddr::V4(v4) = addr else {
        return std::net::TcpStream::connect(addr).is_ok();
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return std::net::TcpStream::connect(addr).is_ok();
    };
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port());
    // Columns: slot, local address, remote address, state (0A: listening), ...
    table.lines().skip(1).any(|l| {
        let mut cols = l.split_whitespace().skip(1);
        cols.next() == Some(local.as_str()) && cols.nth(1) == Some("0A")
    })
}

fn read_link(mut rx: LinkRx, out: SyncSender<LinkPublish>, metrics: Arc<Metrics>) {
    // Last delivery cursor per filter (telemetry vs status), to detect skipped messages.
    let mut last: [Option<u64>; 2] = [None, None];
    loop {
        match rx.recv() {
            Ok(Some(Notification::Forward(f))) => {
                let Ok(topic) = std::str::from_utf8(&f.publish.topic) else {
                    continue;
                };
                let filter = usize::from(!topic.starts_with("sensors/"));
                if let Some((_, offset)) = f.cursor {
                    if let Some(prev) = last[filter] {
                        if offset > prev + 1 {
                            let lost = offset - prev - 1;
                            add(&metrics.cursor_jumps, lost);
                            warn!(
                                filter = FILTERS[filter],
                                lost, "rumqttd skipped messages for the ingest link; devices will re-send"
                            );
                        }
                    }
                    last[filter] = Some(offset);
                }
                if out.send(LinkPublish(f.publish)).is_err() {
                    return; // the ingest loop is gone: shutting down
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = rx.ready() {
                    error!(error = ?e, "rumqttd link could not be resumed");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error!(error = ?e, "rumqttd link closed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listening_socket_is_found_without_connecting() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(super::listens_on(addr));
        drop(l);
        assert!(!super::listens_on(addr));
    }
}
