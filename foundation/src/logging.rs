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
