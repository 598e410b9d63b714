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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::api::{self, Broker};
use crate::limits::{Admitted, Closed, Gate, Reserved};
use crate::protocol::{self, Decoded};

/// Bytes read (and reserved) at a time while a large frame arrives.
const CHUNK: usize = 64 << 10;

/// Accepts connections until the listener is dropped, admitting each through `gate`.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, gate: Arc<Gate>) -> std::io::Result<()> {
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
        let (b, g) = (broker.clone(), gate.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(b, sock, g, admitted).await {
                debug!(%peer, error = %e, "connection closed");
            }
        });
    }
}

async fn connection(
    broker: Arc<Broker>,
    sock: TcpStream,
    gate: Arc<Gate>,
    _admitted: Admitted,
) -> anyhow::Result<()> {
    let peer = sock.peer_addr().ok();
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<oneshot::Receiver<Option<BytesMut>>>(gate.limits.max_in_flight);
    let writer = tokio::spawn(async move {
        while let Some(next) = rx.recv().await {
            match next.await {
                Ok(Some(bytes)) => {
                    if wr.write_all(&bytes).await.is_err() {
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
            if len < 0 || len as usize > gate.limits.max_frame_bytes {
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
                    req.peer = peer.map(|p| p.ip());
                    let b = broker.clone();
                    let (key, version, corr) = (req.api_key, req.version, req.header.correlation_id);
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
