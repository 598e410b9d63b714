//! The Kafka listener and the per-connection loop.
//!
//! Each connection has a reader task and a writer task. The reader decodes frames and starts
//! one handler task per request, passing the writer a receiver for its response in request
//! order; the writer sends responses in that order (clients match them by correlation id, the
//! Java client asserts the order). So a connection pipelines (librdkafka keeps up to five
//! produce requests in flight) while responses stay ordered. At most [`MAX_IN_FLIGHT`] requests
//! per connection are outstanding. A malformed frame closes only its connection.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::api::{self, Broker};
use crate::protocol::{self, Decoded, MAX_FRAME};

/// Requests in flight per connection.
pub const MAX_IN_FLIGHT: usize = 32;

/// Accepts connections until the listener fails.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let b = broker.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(b, sock).await {
                debug!(%peer, error = %e, "connection closed");
            }
        });
    }
}

async fn connection(broker: Arc<Broker>, sock: TcpStream) -> anyhow::Result<()> {
    let peer = sock.peer_addr().ok();
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<oneshot::Receiver<Option<BytesMut>>>(MAX_IN_FLIGHT);
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
    let result = async {
        loop {
            let len = match rd.read_i32().await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if len < 0 || len as usize > MAX_FRAME {
                warn!(?peer, len, "frame length out of range; closing the connection");
                anyhow::bail!("frame length {len}");
            }
            let mut buf = vec![0u8; len as usize];
            rd.read_exact(&mut buf).await?;
            let (done_tx, done_rx) = oneshot::channel();
            match protocol::decode(Bytes::from(buf)) {
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
                    let size = len as usize + 4;
                    // Produce requests reach the writer here, in arrival order.
                    let started = api::start(&b, *req);
                    tokio::spawn(async move {
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
