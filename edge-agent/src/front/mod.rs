//! The front: the MQTT listener devices reach, in front of rumqttd, which listens on loopback
//! ports of its own.
//!
//! Why a front: rumqttd 0.20 has no hook to authorize a topic (only a tenant-prefix mode tied
//! to client certificates), so nothing inside it can stop an authenticated device from
//! publishing as another; and it bounds neither subscriptions nor half-sent packets, and keeps
//! something for every client id, filter and retained topic it ever saw (measured: 16 MiB for
//! each distinct filter). The front reads what a device sends, packet by packet (rumqttd's own
//! framing and parsers), and lets through only what the device's identity allows:
//! - the first packet is CONNECT, MQTT 3.1.1 or 5 (each handed to rumqttd's listener of that
//!   version; another protocol level gets the CONNACK the spec requires, "unacceptable protocol
//!   version", and the connection is closed); its client id must be a device id, and a last
//!   will, if any, goes to a device status topic;
//! - PUBLISH only to `sensors/<id>` and `devices/<id>/status`;
//! - SUBSCRIBE only to `devices/<id>/ack`.
//!
//! With `[mqtt] auth = "password"` the `<id>` is the device's own: the client id, which rumqttd
//! checks against the credentials (client id, username and password). With `auth = "none"`
//! anyone may connect and name any device, but only in topics of those shapes, and only
//! `[mqtt] max_devices` distinct device ids (client ids and ids in topics) are taken after the
//! agent starts: a new one past that is refused. What rumqttd and the ingest keep per device is
//! then bounded by that number, as the credentials file bounds it with passwords.
//!
//! The retain flag is cleared on every publish and will: behind the front nobody can subscribe to
//! a retained topic, and rumqttd would keep each one forever. At most `[mqtt] max_connections`
//! connections are open through the front; one more is closed at once.
//!
//! Anything else is refused by closing the connection before the packet reaches the broker, so
//! it never enters the log (MQTT 3.1.1 has no way to refuse a publish and go on); the refusal is
//! logged with the client id and counted (`edge_mqtt_denied_total`). A batch's own device id must
//! match its topic as well: the ingest checks that. What the broker sends back is copied through
//! untouched. A packet once begun must arrive whole within `[mqtt] frame_timeout_s` (the CONNECT too,
//! from the connection's start), so a client that sends half a packet and goes silent holds
//! nothing for long; between packets the device's keep-alive rules, enforced by rumqttd.
//!
//! On the TLS listener (`[mqtt.tls]`) a device may present a client certificate instead of a
//! password: the front verifies it against `client_ca` in the handshake, requires the CONNECT's
//! client id to be the certificate subject's CN, and logs it in to rumqttd with a secret of
//! its own ([`crate::credentials::Checker::front_token`]) in place of a password, so rumqttd's
//! one authentication hook serves both kinds of device and the topic rules above hold for both.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4;
use rumqttd::protocol::Error as MqttError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::metrics::{add, Metrics};

mod rules;
pub use rules::{
    authorize, connect_identity, may_publish, may_subscribe, publish_device, subscribe_device, Denied,
    DeviceSet, Rules,
};
use rules::{clear_will_retain, with_token};

/// Who may name which device ids.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `auth = "password"`: a device names only itself. Certificate devices are logged in to
    /// rumqttd with `token`.
    Password {
        /// The secret a certificate device is logged in to rumqttd with.
        token: Arc<str>,
    },
    /// `auth = "none"`: any device, up to the set's capacity.
    Open(Arc<DeviceSet>),
}

/// What the front needs.
#[derive(Debug, Clone)]
pub struct Front {
    /// rumqttd's loopback listener for MQTT 3.1.1.
    pub inner: SocketAddr,
    /// rumqttd's loopback listener for MQTT 5.
    pub inner_v5: SocketAddr,
    /// The largest packet a device may send (what rumqttd allows).
    pub max_packet: usize,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How long a packet, once begun (and the CONNECT, from the connection's start), may take
    /// to arrive whole (`[mqtt] frame_timeout_s`).
    pub frame_deadline: std::time::Duration,
    /// Who may name which device ids.
    pub mode: Mode,
    /// Connections open through the front, at most `[mqtt] max_connections`.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Refusals are logged at most once a second.
    pub log: Arc<foundation::logging::Throttle>,
}

/// Accepts devices on `listener` until the runtime ends; over TLS with `tls`.
pub async fn serve(listener: TcpListener, front: Front, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting an MQTT connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = front.connections.clone().try_acquire_owned() else {
            add(&front.metrics.mqtt_connection_limit, 1);
            if front.log.ready() {
                warn!(%peer, "MQTT connection closed: [mqtt] max_connections are open");
            }
            drop(sock);
            continue;
        };
        let f = front.clone();
        let tls = tls.clone();
        add(&front.metrics.mqtt_connections, 1);
        let open = Open {
            _permit: permit,
            metrics: front.metrics.clone(),
        };
        tokio::spawn(async move {
            let _open = open;
            let _ = sock.set_nodelay(true);
            let r = match tls {
                None => {
                    let (cr, cw) = sock.into_split();
                    connection(cr, cw, &f, None).await
                }
                Some(acceptor) => match tokio::time::timeout(f.frame_deadline, acceptor.accept(sock)).await {
                    Ok(Ok(stream)) => {
                        // Only a certificate the CA verified is here.
                        let name = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(foundation::tls::common_name);
                        let (cr, cw) = tokio::io::split(stream);
                        connection(cr, cw, &f, name).await
                    }
                    Ok(Err(e)) => {
                        add(&f.metrics.mqtt_tls_failures, 1);
                        Err(anyhow::anyhow!("TLS handshake: {e}"))
                    }
                    Err(_) => Err(late(&f)),
                },
            };
            if let Err(e) = r {
                debug!(%peer, error = %e, "MQTT connection through the front ended");
            }
        });
    }
}

/// A connection's place among `[mqtt] max_connections`, shown in `edge_mqtt_connections`.
struct Open {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics
            .mqtt_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn late(f: &Front) -> anyhow::Error {
    add(&f.metrics.mqtt_frame_timeouts, 1);
    if f.log.ready() {
        warn!(deadline = ?f.frame_deadline, "MQTT connection closed: a packet not whole within [mqtt] frame_timeout_s");
    }
    anyhow::anyhow!("a packet not whole within {:?}", f.frame_deadline)
}

/// Counts a refusal and logs it (at most once a second).
fn refused(f: &Front, d: &Denied, client_id: Option<&str>) {
    if *d == Denied::Devices {
        add(&f.metrics.mqtt_device_limit, 1);
    } else {
        add(&f.metrics.mqtt_denied, 1);
    }
    if !f.log.ready() {
        return;
    }
    let Some(client_id) = client_id.map(foundation::logging::client_text) else {
        return warn!(denied = ?d, "MQTT connection refused by the front");
    };
    match d {
        Denied::Publish(t) | Denied::Subscribe(t) | Denied::Will(t) => {
            let topic = foundation::logging::client_text(t);
            let denied = match d {
                Denied::Publish(_) => "publish",
                Denied::Subscribe(_) => "subscribe",
                _ => "will",
            };
            warn!(%client_id, denied, %topic, "MQTT packet refused by the front; connection closed");
        }
        Denied::Devices => {
            warn!(%client_id, "MQTT connection closed: a device id past [mqtt] max_devices (auth = \"none\")")
        }
        _ => warn!(%client_id, denied = ?d, "MQTT connection refused by the front"),
    }
}

async fn connection<R, W>(mut cr: R, mut cw: W, f: &Front, certificate: Option<String>) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8 << 10);
    // The CONNECT, before anything reaches the broker.
    // The CONNECT must be whole within the frame deadline of the connection's start.
    let connect_by = tokio::time::Instant::now() + f.frame_deadline;
    let h = loop {
        match v4::check(buf.iter(), f.max_packet) {
            Ok(h) => break h,
            Err(MqttError::InsufficientBytes(_)) => {
                let n = tokio::time::timeout_at(connect_by, cr.read_buf(&mut buf))
                    .await
                    .map_err(|_| late(f))??;
                if n == 0 {
                    return Ok(());
                }
            }
            Err(e) => anyhow::bail!("not MQTT: {e:?}"),
        }
    };
    let connect = buf.split_to(h.frame_length());
    let open = match &f.mode {
        Mode::Open(set) => Some(&**set),
        Mode::Password { .. } => None,
    };
    // A certificate device: its client id must be the certificate's name, and it is logged in
    // with the front's token.
    let checked = connect_identity(&connect, open).and_then(|(id, level)| match (&certificate, &f.mode) {
        (None, _) => Ok((id, level, connect.clone())),
        (Some(name), Mode::Password { token }) if *name == id => with_token(level, &connect, &id, token)
            .map(|c| (id, level, c))
            .map_err(|d| (d, level)),
        (Some(_), _) => Err((Denied::Certificate, level)),
    });
    let (id, level, mut connect) = match checked {
        Ok(x) => x,
        Err((d, level)) => {
            // MQTT 3.1.1's CONNACK return codes: 1 unacceptable protocol version (also the
            // answer to a level this front does not serve), 2 identifier rejected, 3 server
            // unavailable, 5 not authorized; MQTT 5's reason codes: 0x85 client identifier not
            // valid, 0x87 not authorized, 0x97 quota exceeded (with an empty property list).
            let connack: &[u8] = match (&d, level) {
                (Denied::Protocol(_), _) => &[0x20, 0x02, 0x00, 0x01],
                (Denied::Devices, 5) => &[0x20, 0x03, 0x00, 0x97, 0x00],
                (Denied::Devices, _) => &[0x20, 0x02, 0x00, 0x03],
                (Denied::ClientId, 5) => &[0x20, 0x03, 0x00, 0x85, 0x00],
                (_, 5) => &[0x20, 0x03, 0x00, 0x87, 0x00],
                (Denied::ClientId, _) => &[0x20, 0x02, 0x00, 0x02],
                _ => &[0x20, 0x02, 0x00, 0x05],
            };
            refused(f, &d, None);
            let _ = cw.write_all(connack).await;
            let _ = cw.shutdown().await;
            return Ok(());
        }
    };
    clear_will_retain(&mut connect);
    let rules = match open {
        Some(set) => Rules::Open(set),
        None => Rules::Device(&id),
    };
    let up = TcpStream::connect(if level == 5 { f.inner_v5 } else { f.inner }).await?;
    let _ = up.set_nodelay(true);
    let (mut ur, mut uw) = up.into_split();
    uw.write_all(&connect).await?;
    let mut down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut out = BytesMut::with_capacity(8 << 10);
    let mut partial_since = None;
    // Ok(true): the device sent DISCONNECT.
    let up = async {
        loop {
            let mut disconnected = false;
            // Every whole packet read so far, checked, then written to the broker at once.
            loop {
                match v4::check(buf.iter(), f.max_packet) {
                    Ok(h) => {
                        partial_since = None;
                        let mut frame = buf.split_to(h.frame_length());
                        if let Err(d) = authorize(rules, level, &frame, &h) {
                            refused(f, &d, Some(&id));
                            anyhow::bail!("refused");
                        }
                        if h.byte1 >> 4 == 3 {
                            // No retained publishes (see the module's notes).
                            frame[0] &= !0x01;
                        }
                        out.extend_from_slice(&frame);
                        if h.byte1 >> 4 == 14 {
                            disconnected = true;
                            break;
                        }
                    }
                    Err(MqttError::InsufficientBytes(_)) => break,
                    Err(e) => anyhow::bail!("not MQTT: {e:?}"),
                }
            }
            if !out.is_empty() {
                uw.write_all(&out).await?;
                out.clear();
            }
            if disconnected {
                return Ok(true);
            }
            // A packet begun must be whole within the deadline; between packets the device's
            // keep-alive rules (rumqttd closes a silent connection, and the front with it).
            let n = if buf.is_empty() {
                cr.read_buf(&mut buf).await?
            } else {
                let by = *partial_since.get_or_insert_with(|| tokio::time::Instant::now() + f.frame_deadline);
                tokio::time::timeout_at(by, cr.read_buf(&mut buf))
                    .await
                    .map_err(|_| late(f))??
            };
            if n == 0 {
                return Ok(false);
            }
            // Keep the buffer from holding a stale large allocation forever.
            if buf.is_empty() && buf.capacity() > 1 << 20 {
                buf = BytesMut::with_capacity(8 << 10);
            }
        }
    };
    // Either side ending ends both: when the broker closes the connection (a refused login, a
    // keep-alive timeout), a client that keeps its socket open holds nothing here.
    let r = tokio::select! {
        r = up => r,
        _ = &mut down => Ok(false),
    };
    if let Ok(true) = r {
        // rumqttd 0.20 counts a connection's end twice when a DISCONNECT is followed at once
        // by the socket closing, and the second count ends whichever new connection was given
        // the same internal id meanwhile (measured: edge-bounds, devices that connect, publish
        // and disconnect one after another). So after a DISCONNECT the socket to rumqttd stays
        // open until rumqttd closes it, which then counts the end once.
        let _ = tokio::time::timeout(f.frame_deadline, &mut down).await;
    }
    down.abort();
    r.map(|_| ())
}
