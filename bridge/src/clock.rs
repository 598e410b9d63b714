//! Time, behind a trait so the engine's tests choose it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic clock and a wall clock. MUST: `now` never goes backwards.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> i64;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> i64 {
        foundation::time::now_ms()
    }
}

/// A clock that moves only when told ([`ManualClock::advance`]).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    base_wall_ms: i64,
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    /// Starts at the system's time now.
    pub fn new() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            base_wall_ms: SystemClock.wall_ms(),
            elapsed_ms: AtomicU64::new(0),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.elapsed_ms.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }

    fn wall_ms(&self) -> i64 {
        self.base_wall_ms + self.elapsed_ms.load(Ordering::SeqCst) as i64
    }
}
