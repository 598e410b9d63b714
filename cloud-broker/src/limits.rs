//! What one client can make the Kafka listener hold (issue 11, bounded resources): connections
//! in all and per address, how long a connection may stay silent, how long a frame once begun
//! may take to arrive, requests in flight per connection, the largest frame, and the request
//! bytes held at once over all connections. Each limit is configuration (`[limits]`), counted
//! on `/metrics` (`kafka_connections*`, `kafka_request_memory_bytes`), and logged when hit.
//!
//! Memory: a frame's bytes are reserved from one pool as they arrive (never ahead of them, so a
//! client that announces a large frame and sends a little holds a little), and released when
//! its request has been answered. Frames up to [`SMALL_FRAME`] bytes (every request but large
//! produce batches) take nothing from the pool, so a client that fills it slows only the other
//! large produce requests, and only until its frames' deadline. What request bytes the broker
//! holds is at most `request_memory_mb` + `max_connections` × [`SMALL_FRAME`] ×
//! `max_in_flight`.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Frames up to this size take nothing from the request memory pool.
pub const SMALL_FRAME: usize = 16 << 10;

/// The `[limits]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections open at once (Kafka's `max.connections`).
    pub max_connections: usize,
    /// Connections open at once from one address (`max.connections.per.ip`).
    pub max_connections_per_ip: usize,
    /// A connection that sends no request for this long is closed, seconds
    /// (`connections.max.idle.ms`).
    pub idle_timeout_s: u64,
    /// A frame begun must have arrived whole within this, seconds; else its connection is
    /// closed (a client that sends half a request and goes silent).
    pub frame_timeout_s: u64,
    /// Requests read from one connection and not answered yet (the connection is not read
    /// while this many are pending).
    pub max_in_flight: usize,
    /// The largest request frame, bytes (`socket.request.max.bytes`).
    pub max_frame_bytes: usize,
    /// Request bytes held at once over every connection, MiB (`queued.max.request.bytes`),
    /// frames of up to 16 KiB aside.
    pub request_memory_mb: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            idle_timeout_s: 600,
            frame_timeout_s: 30,
            max_in_flight: 32,
            max_frame_bytes: crate::protocol::MAX_FRAME,
            request_memory_mb: 512,
        }
    }
}

impl Limits {
    /// Checks what parsing cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_connections > 0, "limits.max_connections must be > 0");
        anyhow::ensure!(
            self.max_connections_per_ip > 0,
            "limits.max_connections_per_ip must be > 0"
        );
        anyhow::ensure!(self.idle_timeout_s > 0, "limits.idle_timeout_s must be > 0");
        anyhow::ensure!(self.frame_timeout_s > 0, "limits.frame_timeout_s must be > 0");
        anyhow::ensure!(self.max_in_flight > 0, "limits.max_in_flight must be > 0");
        anyhow::ensure!(
            (1024..=crate::protocol::MAX_FRAME).contains(&self.max_frame_bytes),
            "limits.max_frame_bytes must be within 1024..={}",
            crate::protocol::MAX_FRAME
        );
        anyhow::ensure!(
            self.request_memory_mb.saturating_mul(1 << 20) >= self.max_frame_bytes,
            "limits.request_memory_mb must hold at least one frame of max_frame_bytes"
        );
        Ok(())
    }

    /// [`Limits::idle_timeout_s`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    /// [`Limits::frame_timeout_s`] as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_s)
    }
}

/// Why a connection was refused or closed, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Refused: `max_connections` open.
    MaxConnections,
    /// Refused: `max_connections_per_ip` open from its address.
    MaxPerIp,
    /// Closed: silent past `idle_timeout_s`.
    Idle,
    /// Closed: a frame not whole within `frame_timeout_s`.
    FrameTimeout,
    /// Closed: a frame longer than `max_frame_bytes`.
    FrameTooLarge,
    /// Closed: the TLS handshake failed (no or a bad client certificate, not TLS at all).
    TlsHandshake,
}

impl Closed {
    const ALL: [Closed; 6] = [
        Closed::MaxConnections,
        Closed::MaxPerIp,
        Closed::Idle,
        Closed::FrameTimeout,
        Closed::FrameTooLarge,
        Closed::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Closed::MaxConnections => "max_connections",
            Closed::MaxPerIp => "max_connections_per_ip",
            Closed::Idle => "idle_timeout",
            Closed::FrameTimeout => "frame_timeout",
            Closed::FrameTooLarge => "frame_too_large",
            Closed::TlsHandshake => "tls_handshake",
        }
    }
}

/// The listener's admission and accounting, shared by its connections.
#[derive(Debug)]
pub struct Gate {
    /// The limits.
    pub limits: Limits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    memory: Arc<Semaphore>,
    memory_total: usize,
    counts: [AtomicU64; Closed::ALL.len()],
    accepted: AtomicU64,
    /// When a refusal was last logged (ms since the Unix epoch): at most one a second.
    last_log_ms: AtomicU64,
}

/// A connection's place; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Relaxed);
        let mut m = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Request bytes taken from the pool; returned when dropped.
#[derive(Debug, Default)]
pub struct Reserved(Vec<OwnedSemaphorePermit>);

impl Gate {
    /// A gate enforcing `limits`.
    pub fn new(limits: Limits) -> Arc<Gate> {
        let memory_total = limits
            .request_memory_mb
            .saturating_mul(1 << 20)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Gate {
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            memory: Arc::new(Semaphore::new(memory_total)),
            memory_total,
            counts: Default::default(),
            accepted: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
        })
    }

    /// Admits a connection from `ip`, or says why not (counted and logged).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Closed> {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let why = if self.open.load(Relaxed) >= self.limits.max_connections {
            Some(Closed::MaxConnections)
        } else if m.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_ip {
            Some(Closed::MaxPerIp)
        } else {
            None
        };
        if let Some(why) = why {
            drop(m);
            self.count(why, Some(ip));
            return Err(why);
        }
        *m.entry(ip).or_insert(0) += 1;
        self.open.fetch_add(1, Relaxed);
        self.accepted.fetch_add(1, Relaxed);
        Ok(Admitted {
            gate: self.clone(),
            ip,
        })
    }

    /// Counts (and logs, at most once a second) a refusal or a closing.
    pub fn count(&self, why: Closed, ip: Option<IpAddr>) {
        self.counts[why as usize].fetch_add(1, Relaxed);
        let now = foundation::time::now_ms().max(0) as u64;
        let last = self.last_log_ms.load(Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .last_log_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            warn!(
                ?ip,
                limit = why.label(),
                "kafka connection refused or closed by a limit (counted in kafka_connections_closed_total; further ones this second not logged)"
            );
        }
    }

    /// Takes `bytes` more of a frame's bytes from the pool, waiting while it is exhausted.
    /// Frames of up to [`SMALL_FRAME`] bytes (`frame_len`) take nothing.
    pub async fn reserve(&self, r: &mut Reserved, frame_len: usize, bytes: usize) {
        if frame_len <= SMALL_FRAME || bytes == 0 {
            return;
        }
        let n = u32::try_from(bytes.min(self.memory_total)).unwrap_or(u32::MAX);
        if let Ok(p) = self.memory.clone().acquire_many_owned(n).await {
            r.0.push(p);
        }
    }

    /// `kafka_connections*` and `kafka_request_memory_bytes` for `/metrics`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP kafka_connections Kafka client connections open\n# TYPE kafka_connections gauge\nkafka_connections {}",
            self.open.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kafka_connections_accepted_total Kafka client connections accepted\n# TYPE kafka_connections_accepted_total counter\nkafka_connections_accepted_total {}",
            self.accepted.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kafka_connections_closed_total Kafka connections refused or closed by a limit\n# TYPE kafka_connections_closed_total counter"
        );
        for c in Closed::ALL {
            let _ = writeln!(
                out,
                "kafka_connections_closed_total{{limit=\"{}\"}} {}",
                c.label(),
                self.counts[c as usize].load(Relaxed)
            );
        }
        let used = self.memory_total - self.memory.available_permits().min(self.memory_total);
        let _ = writeln!(
            out,
            "# HELP kafka_request_memory_bytes Request bytes held from the pool (limits.request_memory_mb)\n# TYPE kafka_request_memory_bytes gauge\nkafka_request_memory_bytes {used}"
        );
    }

    /// Connections closed or refused for `why` so far.
    pub fn closed(&self, why: Closed) -> u64 {
        self.counts[why as usize].load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_counts_per_address_and_in_all() {
        let g = Gate::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).unwrap_err(), Closed::MaxPerIp);
        let _b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(b).unwrap_err(), Closed::MaxConnections);
        drop(a1);
        let _b2 = g.admit(b).unwrap();
        assert_eq!(
            (g.closed(Closed::MaxPerIp), g.closed(Closed::MaxConnections)),
            (1, 1)
        );
        let mut m = String::new();
        g.render(&mut m);
        assert!(m.contains("kafka_connections 3\n"), "{m}");
        assert!(m.contains("kafka_connections_closed_total{limit=\"max_connections_per_ip\"} 1"));
    }

    #[tokio::test]
    async fn large_frames_share_the_pool_and_small_ones_bypass_it() {
        let g = Gate::new(Limits {
            request_memory_mb: 1,
            max_frame_bytes: 1 << 20,
            ..Limits::default()
        });
        let mut big = Reserved::default();
        g.reserve(&mut big, 1 << 20, 1 << 20).await;
        // The pool is empty: a small frame still goes through, a large one waits.
        let mut small = Reserved::default();
        g.reserve(&mut small, 100, 100).await;
        let mut other = Reserved::default();
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            g.reserve(&mut other, 64 << 10, 64 << 10),
        )
        .await;
        assert!(waited.is_err(), "a large frame waits for the pool");
        drop(big);
        tokio::time::timeout(Duration::from_secs(1), g.reserve(&mut other, 64 << 10, 64 << 10))
            .await
            .expect("the pool is free again");
        let mut m = String::new();
        g.render(&mut m);
        assert!(
            m.contains(&format!("kafka_request_memory_bytes {}\n", 64 << 10)),
            "{m}"
        );
    }
}
