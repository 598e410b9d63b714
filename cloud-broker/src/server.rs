//! The Kafka listener and the per-connection loop.
//!
//! Each connection has a reader task and a writer task. The reader decodes frames and starts
//! one handler task per request, passing the writer a receiver for its response in request
//! order; the writer sends responses in that order (clients match them by correlation id, the
//! Java client asserts the order). So a connection pipelines (librdkafka keeps up to five
//! produce requests in flight) while responses stay ordered. What a connection may hold is
//! bounded by [`crate::limits`]: requests outstanding, the frame size, how long a begun frame
//! may take, how long it may stay silent, and the request bytes held over all connections. A
//! malformed frame closes only its connection.
//!
//! A listener may speak TLS (the handshake must finish within the frame timeout) and may ask
//! for a SASL login first ([`crate::security`]): until then only ApiVersions and the login's
//! own requests are served, and any other request closes the connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::api::{self, Broker};
use crate::limits::{Admitted, Closed, Gate, Reserved};
use crate::protocol::{self, Decoded};
use crate::security::session::Session;
use crate::security::Listener;

/// Bytes read (and reserved) at a time while a large frame arrives.
const CHUNK: usize = 64 << 10;

/// The largest frame read before a SASL login.
const MAX_BEFORE_LOGIN: usize = 512 << 10;

/// Accepts connections until the listener is dropped, admitting each through `gate`.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, gate: Arc<Gate>) -> std::io::Result<()> {
    serve_on(broker, listener, gate, Listener::primary()).await
}

/// [`serve`] for a listener of any protocol.
pub async fn serve_on(
    broker: Arc<Broker>,
    listener: TcpListener,
    gate: Arc<Gate>,
    kind: Arc<Listener>,
) -> std::io::Result<()> {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors or a connection reset before it was taken: not the
            // listener's end. Pause a little so a full descriptor table can drain.
            Err(e) => {
                warn!(error = %e, "accepting a kafka connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(admitted) = gate.admit(peer.ip()) else {
            drop(sock); // refused: closed at once, counted by the gate
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (b, g, kind) = (broker.clone(), gate.clone(), kind.clone());
        tokio::spawn(async move {
            if let Err(e) = accepted(b, sock, g, admitted, kind).await {
                debug!(%peer, error = %e, "connection closed");
            }
        });
    }
}

/// A connection just accepted: its TLS handshake if the listener has one, then its requests.
async fn accepted(
    broker: Arc<Broker>,
    sock: TcpStream,
    gate: Arc<Gate>,
    admitted: Admitted,
    kind: Arc<Listener>,
) -> anyhow::Result<()> {
    let peer = sock.peer_addr().ok();
    let Some(acceptor) = &kind.tls else {
        let session = Session::new(&kind, None);
        let (rd, wr) = sock.into_split();
        return connection(broker, rd, wr, peer, gate, admitted, kind, session).await;
    };
    let tls = match timeout(gate.limits.frame_timeout(), acceptor.accept(sock)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            gate.count(Closed::TlsHandshake, peer.map(|p| p.ip()));
            anyhow::bail!("TLS handshake: {e}");
        }
        Err(_) => {
            gate.count(Closed::FrameTimeout, peer.map(|p| p.ip()));
            anyhow::bail!("TLS handshake not done within {:?}", gate.limits.frame_timeout());
        }
    };
    // A certificate is only here if the listener's CA verified it.
    let name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(foundation::tls::common_name);
    let session = Session::new(&kind, name);
    let (rd, wr) = tokio::io::split(tls);
    connection(broker, rd, wr, peer, gate, admitted, kind, session).await
}

/// Encodes a response the connection itself makes (the login's).
fn encoded(key: ApiKey, version: i16, correlation: i32, resp: &ResponseKind) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    protocol::encode(&mut out, key, version, correlation, resp)?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn connection<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    mut wr: W,
    peer: Option<std::net::SocketAddr>,
    gate: Arc<Gate>,
    _admitted: Admitted,
    kind: Arc<Listener>,
    mut session: Session,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let listener_name: Arc<str> = Arc::from(kind.name.as_str());
    let (tx, mut rx) = mpsc::channel::<oneshot::Receiver<Option<BytesMut>>>(gate.limits.max_in_flight);
    let writer = tokio::spawn(async move {
        while let Some(next) = rx.recv().await {
            match next.await {
                Ok(Some(bytes)) => {
                    // TLS holds what the socket did not take until flushed (a no-op on TCP).
                    if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}    // acks=0 produce: no response
                Err(_) => return, // handler failed: close
            }
        }
    });
    let (idle, frame_timeout) = (gate.limits.idle_timeout(), gate.limits.frame_timeout());
    let result = async {
        loop {
            // Waiting for the next request: a connection silent past the idle timeout goes.
            let mut len = [0u8; 4];
            match timeout(idle, rd.read_exact(&mut len[..1])).await {
                Err(_) => {
                    gate.count(Closed::Idle, peer.map(|p| p.ip()));
                    anyhow::bail!("idle for {idle:?}");
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(_)) => {}
            }
            // A frame has begun: all of it within the frame timeout.
            let deadline = Instant::now() + frame_timeout;
            let late = || {
                gate.count(Closed::FrameTimeout, peer.map(|p| p.ip()));
                anyhow::anyhow!("a frame not whole within {frame_timeout:?}")
            };
            timeout_at(deadline, rd.read_exact(&mut len[1..]))
                .await
                .map_err(|_| late())??;
            let len = i32::from_be_bytes(len);
            // Before the login, only the login's small requests (Kafka's
            // sasl.server.max.receive.size).
            let most = if session.authenticated() {
                gate.limits.max_frame_bytes
            } else {
                MAX_BEFORE_LOGIN
            };
            if len < 0 || len as usize > most {
                gate.count(Closed::FrameTooLarge, peer.map(|p| p.ip()));
                warn!(?peer, len, "frame length out of range; closing the connection");
                anyhow::bail!("frame length {len}");
            }
            let len = len as usize;
            // The body, reserved from the request memory pool as it arrives.
            let mut reserved = Reserved::default();
            let mut buf = BytesMut::with_capacity(len.min(CHUNK));
            while buf.len() < len {
                let n = (len - buf.len()).min(CHUNK);
                timeout_at(deadline, gate.reserve(&mut reserved, len, n))
                    .await
                    .map_err(|_| late())?;
                let start = buf.len();
                buf.resize(start + n, 0);
                timeout_at(deadline, rd.read_exact(&mut buf[start..]))
                    .await
                    .map_err(|_| late())??;
            }
            let (done_tx, done_rx) = oneshot::channel();
            match protocol::decode(buf.freeze()) {
                Err(e) => {
                    warn!(?peer, error = %e, "bad request; closing the connection");
                    anyhow::bail!(e);
                }
                Ok(Decoded::Immediate(bytes)) => {
                    let _ = done_tx.send(Some(bytes));
                }
                Ok(Decoded::Request(mut req)) => {
                    let (key, version, corr) = (req.api_key, req.version, req.header.correlation_id);
                    // The login's own requests are served here, in order, by the connection.
                    let placeholder = RequestKind::ApiVersions(Default::default());
                    let step = match std::mem::replace(&mut req.body, placeholder) {
                        RequestKind::SaslHandshake(_) if version == 0 => {
                            broker
                                .guard
                                .login_failed(peer.map(|p| p.ip()), "SaslHandshake v0 (raw tokens)");
                            anyhow::bail!("SaslHandshake v0: raw SASL tokens are not served");
                        }
                        RequestKind::SaslHandshake(r) => {
                            let step = session.handshake(&broker.guard, &r);
                            Some((ResponseKind::SaslHandshake(step.response), step.close))
                        }
                        RequestKind::SaslAuthenticate(r) => {
                            let step = session.authenticate(&broker.guard, r, peer.map(|p| p.ip())).await;
                            Some((ResponseKind::SaslAuthenticate(step.response), step.close))
                        }
                        body => {
                            req.body = body;
                            None
                        }
                    };
                    if let Some((resp, close)) = step {
                        let _ = done_tx.send(Some(encoded(key, version, corr, &resp)?));
                        if tx.send(done_rx).await.is_err() || close {
                            anyhow::bail!("SASL login refused");
                        }
                        continue;
                    }
                    if !session.authenticated() && key != ApiKey::ApiVersions {
                        broker
                            .guard
                            .login_failed(peer.map(|p| p.ip()), "a request before the SASL login");
                        anyhow::bail!("{key:?} before the SASL login");
                    }
                    req.peer = peer.map(|p| p.ip());
                    req.principal = session.principal.clone();
                    req.listener = listener_name.clone();
                    let b = broker.clone();
                    let arrived = std::time::Instant::now();
                    let size = len + 4;
                    // Produce requests reach the writer here, in arrival order.
                    let started = api::start(&b, *req);
                    tokio::spawn(async move {
                        // The request's bytes stay reserved until it is answered.
                        let _reserved = reserved;
                        match started.finish(&b).await {
                            Ok(None) => {
                                b.stats.request(key as i16, arrived.elapsed(), size, 0);
                                let _ = done_tx.send(None);
                            }
                            Ok(Some(resp)) => {
                                let mut out = BytesMut::new();
                                match protocol::encode(&mut out, key, version, corr, &resp) {
                                    Ok(()) => {
                                        b.stats.request(key as i16, arrived.elapsed(), size, out.len());
                                        let _ = done_tx.send(Some(out));
                                    }
                                    Err(e) => {
                                        warn!(?key, version, error = %e, "response did not encode; closing")
                                    }
                                }
                            }
                            Err(e) => warn!(?key, version, error = %e, "request failed; closing"),
                        }
                    });
                }
            }
            if tx.send(done_rx).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    drop(tx);
    let _ = writer.await;
    result
}

/// Binds the Kafka listener.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("kafka listen address {addr}: {e}"))?;
    info!(%addr, "kafka listener up");
    Ok(l)
}
