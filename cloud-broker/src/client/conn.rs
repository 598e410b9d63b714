//! One connection to a Kafka broker: typed requests out, typed responses in, in order.
//!
//! A request may be sent before the previous response is read ([`Conn::send`], then
//! [`Conn::recv`]), which is how the consumer keeps a fetch in flight while it applies the
//! last one. Responses larger than [`MAX_RESPONSE`] close the connection.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response read (a fetch is asked for far less; Kafka may exceed the ask by one
/// batch).
pub const MAX_RESPONSE: usize = 128 << 20;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A broker connection.
#[derive(Debug)]
pub struct Conn {
    addr: String,
    stream: TcpStream,
    client_id: StrBytes,
    next_correlation: i32,
    /// Requests sent and not answered yet: correlation id, API key, version.
    in_flight: VecDeque<(i32, i16, i16)>,
}

impl Conn {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str, client_id: &str) -> anyhow::Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr: addr.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation: 1,
            in_flight: VecDeque::new(),
        })
    }

    /// No request is waiting for its answer (a cancelled [`Conn::call`] leaves one: such a
    /// connection is not to be used again).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The address it was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` at `version` without waiting for its answer.
    pub async fn send<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<()> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version))?;
        req.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&buf)
            .await
            .with_context(|| format!("sending to {}", self.addr))?;
        self.in_flight.push_back((correlation, R::KEY, version));
        Ok(())
    }

    /// Reads the answer to the oldest request sent, which must be an `R`.
    pub async fn recv<R: Request>(&mut self) -> anyhow::Result<R::Response> {
        let Some((correlation, key, version)) = self.in_flight.pop_front() else {
            bail!("no request in flight on {}", self.addr);
        };
        if key != R::KEY {
            bail!("the answer on {} is to API {key}, not {}", self.addr, R::KEY);
        }
        let len = self
            .stream
            .read_i32()
            .await
            .with_context(|| format!("reading from {}", self.addr))?;
        let len = usize::try_from(len).ok().filter(|&l| l <= MAX_RESPONSE);
        let Some(len) = len else {
            bail!("{} sent a response frame of a bad length", self.addr);
        };
        let mut frame = BytesMut::zeroed(len);
        self.stream
            .read_exact(&mut frame)
            .await
            .with_context(|| format!("reading from {}", self.addr))?;
        let mut frame: Bytes = frame.freeze();
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .with_context(|| format!("a response header from {}", self.addr))?;
        if header.correlation_id != correlation {
            bail!(
                "{} answered correlation id {} where {correlation} was due",
                self.addr,
                header.correlation_id
            );
        }
        R::Response::decode(&mut frame, version)
            .with_context(|| format!("a response to API {key} v{version} from {}", self.addr))
    }

    /// Sends `req` and waits at most `timeout` for its answer.
    pub async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> anyhow::Result<R::Response> {
        let addr = self.addr.clone();
        tokio::time::timeout(timeout, async {
            self.send(req, version).await?;
            self.recv::<R>().await
        })
        .await
        .with_context(|| format!("API {} to {addr}: no answer within {timeout:?}", R::KEY))?
    }
}
