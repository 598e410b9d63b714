//! The tracing subscriber every binary installs.

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by the variable `env_var` (tracing's filter syntax, e.g.
/// `warn,edge_agent=debug`) or else `default_directives`. A second call does nothing.
pub fn init(env_var: &str, default_directives: &str) {
    let filter = EnvFilter::try_from_env(env_var).unwrap_or_else(|_| EnvFilter::new(default_directives));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Text a client sent, made safe for a log line: printable ASCII and spaces (anything else is
/// `?`), at most 80 characters.
pub fn client_text(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// Lets a repeated log line through at most once per interval (a flood of refused clients
/// must not become a flood of log lines); what it holds back is still counted in metrics.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    start: std::time::Instant,
    /// Milliseconds since `start` of the last line let through, plus one (0: none yet).
    last: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// At most one line per `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Throttle {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log now.
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= self.interval_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for Throttle {
    /// Once a second.
    fn default() -> Self {
        Throttle::new(std::time::Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_interval() {
        let hourly = Throttle::new(std::time::Duration::from_secs(3600));
        assert!(hourly.ready());
        assert!(!hourly.ready() && !hourly.ready());
        let always = Throttle::new(std::time::Duration::ZERO);
        assert!(always.ready() && always.ready());
        assert_eq!(client_text("a\u{1b}[31mb"), "a?[31mb");
    }
}
