//! The wire format's and the firmware's one error type: flat and `Copy`, so it costs nothing
//! to pass around on an MCU.

/// Everything that can go wrong in the firmware library.
///
/// Retryable conditions (`Io`, `Timeout`, `Refused`, `BufferFull`) leave all state intact;
/// decoding errors mean the offending bytes were rejected and nothing else was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before a complete value.
    Truncated,
    /// The bytes do not form a valid value (bad varint, bad UTF-8, over capacity, ...).
    Malformed,
    /// The leading format-version byte is not one this build understands.
    UnsupportedVersion(u8),
    /// A value was followed by bytes that belong to no field.
    TrailingBytes,
    /// An output buffer is too small for the encoded value.
    BufferTooSmall,
    /// A device id is empty, too long, or contains characters not allowed in an MQTT topic level.
    InvalidDeviceId,
    /// The reading buffer is full and the policy is to refuse new readings.
    BufferFull,
    /// An MQTT packet violates the protocol (or is one this client never expects).
    Protocol,
    /// An MQTT packet is larger than this client can hold; it is skipped.
    PacketTooLarge,
    /// The broker refused the connection with this CONNACK return code.
    Refused(u8),
    /// The broker stopped answering (no CONNACK, SUBACK, PUBACK or PINGRESP in time).
    Timeout,
    /// The transport failed; reconnect.
    Io,
    /// Flash storage failed or holds data this build cannot read.
    Storage,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Error::Truncated => "input truncated",
            Error::Malformed => "malformed input",
            Error::UnsupportedVersion(_) => "unsupported format version",
            Error::TrailingBytes => "trailing bytes after value",
            Error::BufferTooSmall => "output buffer too small",
            Error::InvalidDeviceId => "invalid device id",
            Error::BufferFull => "reading buffer full",
            Error::Protocol => "MQTT protocol violation",
            Error::PacketTooLarge => "MQTT packet too large",
            Error::Refused(_) => "connection refused by broker",
            Error::Timeout => "broker did not answer in time",
            Error::Io => "transport error",
            Error::Storage => "flash storage error",
        };
        match self {
            Error::UnsupportedVersion(v) => write!(f, "{s} ({v})"),
            Error::Refused(c) => write!(f, "{s} (code {c})"),
            _ => f.write_str(s),
        }
    }
}

impl core::error::Error for Error {}
