//! The crate's one error type.

/// What went wrong. [`Error::is_retryable`] tells a failed session (try again after a
/// backoff) from a mistake no retry fixes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid (fatal).
    #[error("bridge configuration: {0}")]
    Config(String),
    /// The state saved in the edge log cannot be read (fatal: the bridge refuses to guess).
    #[error("the bridge state in the edge log is damaged: {0}")]
    State(String),
    /// A request named something that does not exist (a replay of an unknown topic).
    #[error("{0}")]
    Request(String),
    /// The edge log failed (retryable).
    #[error("edge log: {0}")]
    Log(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The cloud failed or refused (retryable: a new session tries again).
    #[error("{0}")]
    Cloud(String),
    /// An operator asked for a new session (not a failure).
    #[error("a new session was requested")]
    RestartRequested,
    /// The bridge is stopping.
    #[error("stopping")]
    Stopping,
}

impl Error {
    /// A failure a new session may not meet again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Log(_) | Error::Cloud(_) | Error::RestartRequested)
    }

    /// An edge log error.
    pub fn log(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Log(e.into())
    }

    /// A cloud error, with what was being done.
    pub fn cloud(doing: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::Cloud(format!("{doing}: {e}"))
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
