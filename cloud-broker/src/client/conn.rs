//! One connection to a Kafka broker: typed requests out, typed responses in, in order.
//!
//! A request may be sent before the previous response is read ([`Conn::send`], then
//! [`Conn::recv`]), which is how the consumer keeps a fetch in flight while it applies the
//! last one. Responses larger than [`MAX_RESPONSE`] close the connection. With a [`Login`] a
//! connection is TLS (rustls) and/or logs in with SASL (SCRAM-SHA-256/512 or PLAIN) before
//! its first request.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::security::scram::{Mechanism, ScramClient};

/// A connection's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a client connects and logs in (Kafka's `security.protocol` and `sasl.*`).
pub struct Login {
    tls: Option<tokio_rustls::TlsConnector>,
    sasl: Option<(Mechanism, String, String)>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Login")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|(m, u, _)| (m.name(), u.clone())))
            .finish()
    }
}

/// The librdkafka properties [`Login::from_properties`] understands.
pub const LOGIN_PROPERTIES: [&str; 6] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
];

impl Login {
    /// The login librdkafka's security properties describe (`security.protocol` plaintext,
    /// ssl, sasl_plaintext or sasl_ssl; `sasl.mechanism`, `sasl.username`, `sasl.password`;
    /// `ssl.ca.location`); None for plaintext. Any other property is an error naming it.
    pub fn from_properties(props: &[(String, String)]) -> anyhow::Result<Option<Login>> {
        let get = |k: &str| {
            props
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        if let Some((k, _)) = props
            .iter()
            .find(|(k, _)| !LOGIN_PROPERTIES.contains(&k.as_str()))
        {
            bail!(
                "the native client does not take the librdkafka property {k:?} (it takes {}): set [monitor] client = \"librdkafka\"",
                LOGIN_PROPERTIES.join(", ")
            );
        }
        let protocol = get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => bail!("security.protocol {other:?}: plaintext, ssl, sasl_plaintext or sasl_ssl"),
        };
        let ca = match (tls, get("ssl.ca.location")) {
            (true, Some(ca)) => Some(std::path::PathBuf::from(ca)),
            (true, None) => bail!(
                "security.protocol {protocol} needs ssl.ca.location (the CA to check the broker against)"
            ),
            (false, _) => None,
        };
        let sasl = if sasl {
            let name = get("sasl.mechanism")
                .or(get("sasl.mechanisms"))
                .unwrap_or("PLAIN");
            let mechanism = Mechanism::from_name(name)
                .with_context(|| format!("sasl.mechanism {name:?}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))?;
            let user = get("sasl.username").context("a SASL login needs sasl.username")?;
            let password = get("sasl.password").context("a SASL login needs sasl.password")?;
            Some((mechanism, user.to_string(), password.to_string()))
        } else {
            None
        };
        if !tls && sasl.is_none() {
            return Ok(None);
        }
        Login::new(ca.as_deref(), sasl).map(Some)
    }

    /// TLS checked against `ca` if given; a SASL login as `user` with `password` if given.
    pub fn new(
        ca: Option<&std::path::Path>,
        sasl: Option<(Mechanism, String, String)>,
    ) -> anyhow::Result<Login> {
        let tls = match ca {
            None => None,
            Some(ca) => Some(tokio_rustls::TlsConnector::from(foundation::tls::client_config(
                ca, None,
            )?)),
        };
        Ok(Login { tls, sasl })
    }
}

/// The largest response read (a fetch is asked for far less; Kafka may exceed the ask by one
/// batch).
pub const MAX_RESPONSE: usize = 128 << 20;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A broker connection.
pub struct Conn {
    addr: String,
    stream: Box<dyn Io>,
    client_id: StrBytes,
    next_correlation: i32,
    /// Requests sent and not answered yet: correlation id, API key, version.
    in_flight: VecDeque<(i32, i16, i16)>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to `addr` (`host:port`), over TLS and logged in as `login` says.
    pub async fn connect(addr: &str, client_id: &str, login: Option<&Login>) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match login.and_then(|l| l.tls.as_ref()) {
            None => Box::new(tcp),
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .with_context(|| format!("{host}: not a TLS server name"))?;
                let s = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .with_context(|| format!("TLS with {addr}: no handshake within {CONNECT_TIMEOUT:?}"))?
                    .with_context(|| format!("TLS with {addr}"))?;
                Box::new(s)
            }
        };
        let mut c = Conn {
            addr: addr.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation: 1,
            in_flight: VecDeque::new(),
        };
        if let Some((mechanism, user, password)) = login.and_then(|l| l.sasl.as_ref()) {
            tokio::time::timeout(CONNECT_TIMEOUT, c.log_in(*mechanism, user, password))
                .await
                .with_context(|| format!("SASL with {addr}: no answer within {CONNECT_TIMEOUT:?}"))??;
        }
        Ok(c)
    }

    /// SaslHandshake v1, then SaslAuthenticate v1 rounds: PLAIN in one, SCRAM in two (the
    /// server's signature checked, so a server without the credential is not believed).
    async fn log_in(&mut self, mechanism: Mechanism, user: &str, password: &str) -> anyhow::Result<()> {
        let hs =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.name().into()));
        self.send(&hs, 1).await?;
        let r = self.recv::<SaslHandshakeRequest>().await?;
        if r.error_code != 0 {
            bail!(
                "{} refused SASL mechanism {} (error {})",
                self.addr,
                mechanism.name(),
                r.error_code
            );
        }
        let round = |bytes: Vec<u8>| SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        let addr = self.addr.clone();
        let refused = |r: &kafka_protocol::messages::SaslAuthenticateResponse| {
            anyhow::anyhow!(
                "{addr} refused the login of {user}: {}",
                r.error_message
                    .as_deref()
                    .map_or("no reason given".to_string(), |m| m.to_string())
            )
        };
        if mechanism == Mechanism::Plain {
            let msg = format!("\0{user}\0{password}").into_bytes();
            self.send(&round(msg), 1).await?;
            let r = self.recv::<SaslAuthenticateRequest>().await?;
            if r.error_code != 0 {
                return Err(refused(&r));
            }
            return Ok(());
        }
        let (mut scram, first) = ScramClient::start(mechanism, user, password)?;
        self.send(&round(first), 1).await?;
        let r = self.recv::<SaslAuthenticateRequest>().await?;
        if r.error_code != 0 {
            return Err(refused(&r));
        }
        let last = scram.respond(&r.auth_bytes)?;
        self.send(&round(last), 1).await?;
        let r = self.recv::<SaslAuthenticateRequest>().await?;
        if r.error_code != 0 {
            return Err(refused(&r));
        }
        scram
            .verify(&r.auth_bytes)
            .with_context(|| format!("{}: the server's SCRAM signature does not match", self.addr))?;
        Ok(())
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
        // TLS holds what the socket did not take until flushed.
        self.stream
            .flush()
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
