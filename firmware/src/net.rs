//! The gateway over embassy-net: a [`Connector`](crate::driver::Connector) that resolves the
//! gateway's name (an IPv4 literal, else DNS, each time: a gateway that moves is found again)
//! and opens TCP connections from an embassy-net [`TcpClient`] pool. Every WiFi board image
//! uses it, and the host test runs the same code over a Linux TAP device against a real agent.

use core::fmt::Arguments;
use core::net::{Ipv4Addr, SocketAddr};

use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::client::{TcpClient, TcpConnection};
use embassy_net::Stack;
use embedded_nal_async::TcpConnect as _;

/// Opens TCP connections to the gateway at `host:port`. `N` sockets of `TX`/`RX` bytes each:
/// two let a new session open while the last one's socket closes.
pub struct Gateway<'a, const N: usize, const TX: usize, const RX: usize> {
    client: &'a TcpClient<'a, N, TX, RX>,
    stack: Stack<'a>,
    host: &'a str,
    port: u16,
    report: fn(Arguments<'_>),
}

impl<const N: usize, const TX: usize, const RX: usize> core::fmt::Debug for Gateway<'_, N, TX, RX> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gateway")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<'a, const N: usize, const TX: usize, const RX: usize> Gateway<'a, N, TX, RX> {
    /// The gateway `host:port`, reached through `client` (its timeout is the caller's to set)
    /// on `stack`. `report` gets a line for every failed lookup or connection (the serial log).
    pub fn new(
        stack: Stack<'a>,
        client: &'a TcpClient<'a, N, TX, RX>,
        host: &'a str,
        port: u16,
        report: fn(Arguments<'_>),
    ) -> Self {
        Gateway {
            client,
            stack,
            host,
            port,
            report,
        }
    }

    /// The gateway's address: the host as an IPv4 address, else resolved by DNS.
    pub async fn resolve(&self) -> Option<SocketAddr> {
        if let Ok(ip) = self.host.parse::<Ipv4Addr>() {
            return Some(SocketAddr::from((ip, self.port)));
        }
        match self.stack.dns_query(self.host, DnsQueryType::A).await {
            Ok(addrs) => match addrs.first() {
                Some(a) => Some(SocketAddr::new((*a).into(), self.port)),
                None => {
                    (self.report)(format_args!("gateway {}: DNS: no address", self.host));
                    None
                }
            },
            Err(e) => {
                (self.report)(format_args!("gateway {}: DNS: {e:?}", self.host));
                None
            }
        }
    }
}

impl<'a, const N: usize, const TX: usize, const RX: usize> crate::driver::Connector
    for Gateway<'a, N, TX, RX>
{
    type Conn = TcpConnection<'a, N, TX, RX>;

    async fn connect(&mut self) -> Option<Self::Conn> {
        let addr = self.resolve().await?;
        let client: &'a TcpClient<'a, N, TX, RX> = self.client;
        match client.connect(addr).await {
            Ok(c) => Some(c),
            Err(e) => {
                (self.report)(format_args!("gateway {addr}: {e:?}"));
                None
            }
        }
    }
}
