//! Loopback ports for servers under test.
//!
//! [`free_port`] hands out ports **outside the kernel's ephemeral range** and **never the same
//! port twice in a process**. A port taken from the ephemeral range (bind to port 0) can be
//! handed to another test of the same binary as soon as its server stops — a test that
//! restarts a server on its old port then finds it taken (seen: a cloud broker restarted after
//! a 60 s outage could not bind its HTTP port) — and outgoing connections can take it as their
//! source port meanwhile.

use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a server listens on `127.0.0.1:port`. A connect to a free port in the ephemeral
/// range can succeed by connecting to itself (TCP simultaneous open: the kernel picked the
/// same port as the source), which would pass for a listening server; such a connection does
/// not count.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|s| s.local_addr())
        .is_ok_and(|local| local.port() != port)
}

/// The kernel's ephemeral port range (Linux's default if unreadable).
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// The ports [`free_port`] draws from: below the ephemeral range (from 10,000) when there is
/// room, else above it.
fn pool() -> (u32, u32) {
    let (lo, hi) = ephemeral_range();
    if lo >= 12_000 {
        (10_000, lo)
    } else {
        (hi + 1, 65_536)
    }
}

/// A TCP port on 127.0.0.1 that nothing has bound, for a server under test; never one this
/// process was given before (so a server can be restarted on its port). Processes start at
/// different points of the pool, so concurrent test runs rarely meet either.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (start, end) = pool();
    let size = end.saturating_sub(start).max(1);
    let offset = std::process::id().wrapping_mul(2_654_435_761) % size;
    loop {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        if i >= size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "every port of the test pool was handed out",
            ));
        }
        let Ok(port) = u16::try_from(start + (offset + i) % size) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_listens_a_freed_one_does_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        assert!(listening(p));
        drop(l);
        assert!(!listening(p));
    }

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let (lo, hi) = ephemeral_range();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = free_port().unwrap();
            assert!(u32::from(p) < lo || u32::from(p) > hi, "{p} in {lo}..={hi}");
            assert!(seen.insert(p), "{p} handed out twice");
        }
    }
}
