//! Loopback ports for servers under test.

/// Whether a server listens on `127.0.0.1:port`. A connect to a free port in the ephemeral
/// range can succeed by connecting to itself (TCP simultaneous open: the kernel picked the
/// same port as the source), which would pass for a listening server; such a connection does
/// not count.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|s| s.local_addr())
        .is_ok_and(|local| local.port() != port)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server under test to take).
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bound_port_listens_a_freed_one_does_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        assert!(super::listening(p));
        drop(l);
        assert!(!super::listening(p));
        assert_ne!(super::free_port().unwrap(), 0);
    }
}
