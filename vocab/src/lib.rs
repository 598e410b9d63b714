//! # vocab — what crosses a process boundary in the appliance
//!
//! One small crate the firmware, the edge agent, the bridge and the cloud broker share, with
//! no heavy dependencies (`no_std`; heapless, serde and postcard), so that any of them can
//! decode what another wrote without linking it:
//! - [`wire`] — the device wire format: [`wire::Batch`], [`wire::DeviceStatus`],
//!   [`wire::Ack`], [`wire::ReadingRecord`]; versioned postcard, bounded sizes,
//!   never-panicking decoders; [`receiver`] — which readings of a batch are new;
//! - [`headers`] — the record headers (a record's edge identity, a reading's boot and seq,
//!   replays, device status, dead letters);
//! - [`topics`] — topic names, at the edge, in the cloud and on MQTT;
//! - [`heartbeat`] (feature `alloc`) — the gateway heartbeat;
//! - [`json`] (feature `alloc`) — readings as JSON and their JSON Schema (the bridge's
//!   `json` and `registry` value formats).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod error;
pub mod headers;
#[cfg(feature = "alloc")]
pub mod heartbeat;
#[cfg(feature = "alloc")]
pub mod json;
pub mod receiver;
pub mod topics;
pub mod wire;

pub use error::Error;
