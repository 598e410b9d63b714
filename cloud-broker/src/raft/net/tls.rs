//! Mutual TLS on Raft links: each node's certificate and the cluster's CA, and a link's halves
//! over TCP or TLS alike.

/// Mutual TLS between nodes (`[cluster.tls]`): every link is TLS, each side presents its
/// node certificate, and each checks the other's against the cluster's CA.
pub struct RaftTls {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for RaftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftTls").finish_non_exhaustive()
    }
}

impl RaftTls {
    /// From this node's certificate and key and the cluster's CA (PEM files).
    pub fn new(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> anyhow::Result<RaftTls> {
        let server =
            foundation::tls::server_config(cert, key, Some(ca), foundation::tls::ClientAuth::Required)?;
        let client = foundation::tls::client_config(ca, Some((cert, key)))?;
        Ok(RaftTls {
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            connector: tokio_rustls::TlsConnector::from(client),
        })
    }
}

/// A Raft link's halves, over TCP or TLS.
pub(super) type Halves = (
    Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
);

pub(super) fn halves<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
) -> Halves {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}
