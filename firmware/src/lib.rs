//! # firmware — the sensor node that never forgets a reading
//!
//! A `no_std`, allocation-free library for a microcontroller that samples sensors and
//! publishes the readings over MQTT to the gateway, keeping each reading until the gateway
//! says it is on disk (hop 1 of the appliance's end-to-end guarantee).
//!
//! # Layout
//! - [`wire`] — the wire format every component decodes: [`wire::Batch`], [`wire::DeviceStatus`],
//!   [`wire::Ack`]; versioned postcard, bounded sizes, never-panicking decoders (from the
//!   `vocab` crate, shared with the gateway and the cloud).
//! - [`buffer`] — the fixed-capacity ring of unacknowledged readings and its overflow policy.
//! - [`mqtt`] — a hand-written MQTT 3.1.1 codec and the sans-I/O [`mqtt::Uplink`] state machine
//!   (connect with last will, subscribe to acks, publish batches, keep alive, resend, reconnect).
//! - [`driver`] — thin blocking (`embedded-io`) and async (`embedded-io-async`) drivers.
//! - [`receiver`] — the receiving side's rule for which readings of a batch are new (used by
//!   the gateway).
//! - [`provision`] — the provisioning record in a flash config sector: WiFi, gateway, device id
//!   and password, sampling; one binary serves a fleet.
//! - `persist` (feature `flash`) — unacked readings and the sequence counter in NOR flash.
//! - `net` (feature `embassy-net`) — the gateway over embassy-net's TCP client (WiFi boards,
//!   and the host test over a TAP device).
//!
//! # Features
//! - `async` — the async driver ([`driver::run`]).
//! - `flash` — persistence through `embedded-storage-async` and `sequential-storage`.
//! - `embassy-net` — `net::Gateway`, a connector for [`driver::run`] (implies `async`).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod buffer;
pub mod driver;
pub mod mqtt;
#[cfg(feature = "embassy-net")]
pub mod net;
#[cfg(feature = "flash")]
pub mod persist;
pub mod provision;

// The wire format and the error type live in `vocab`, which the gateway and the cloud share
// without linking the firmware.
pub use vocab::{receiver, wire, Error};
