//! Monitoring devices from the cloud (issue 10): what the `telemetry`, `device-status` and
//! `gateways` topics say about every device and gateway.
//!
//! - [`registry`] — the rules, sans I/O: per device and boot the readings that arrived, the
//!   gaps, duplicates, the device's own overflow count, online or not.

pub mod registry;
