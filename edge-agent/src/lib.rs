//! # edge-agent — the gateway
//!
//! Devices publish readings over MQTT to an embedded rumqttd; every reading lands in a
//! durable, Kafka-like partitioned log (redb), and only then is the device told, with an
//! application Ack, that it may forget it. Hop 2 of the appliance's guarantee.
//!
//! # Layout
//! - [`config`] — `edge.toml`, environment and flags.
//! - [`log`] — the partitioned log: the [`log::LogStore`] trait, its redb store and in-memory
//!   twin, the chunk format, retention and compaction, and the conformance suite.
//! - [`partitioner`] — Kafka's murmur2 partitioner (device → partition, same as the cloud).
#![warn(missing_docs)]

pub mod config;
pub mod log;
pub mod partitioner;
