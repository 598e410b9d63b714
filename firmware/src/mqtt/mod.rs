//! MQTT 3.1.1 for a sensor node: a hand-written [`codec`] for the nine packet types a node
//! needs, and the sans-I/O [`uplink`] state machine that runs the session.
//!
//! Hand-written rather than a no_std MQTT crate because of image size: the whole node with
//! this codec fits the 24 KiB flash target (see BENCHMARKS.md), a general client did not.

pub mod codec;
pub mod uplink;

pub use uplink::{Action, Config, Uplink};
