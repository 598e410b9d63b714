//! # bridge — edge log to cloud, exactly once per `(gateway, partition, offset)`
//!
//! Hop 3 of the appliance's guarantee. The edge agent hosts this library in-process.
//!
//! # Layout
//! - [`checkpoint`] — per edge partition: which offsets are in flight, which the cloud
//!   acknowledged, and the checkpoint (the end of the contiguous acknowledged prefix), plus
//!   reconciliation after a crash (skip what the cloud already has).
#![warn(missing_docs)]

pub mod checkpoint;
