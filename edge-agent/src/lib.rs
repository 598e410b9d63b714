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
//! - [`broker`] — the embedded rumqttd and the link the pipeline reads.
//! - [`credentials`] — device passwords (Argon2id hashes) for `[mqtt] auth = "password"`.
//! - [`front`] — the authorizing front before rumqttd: each device uses its own topics only.
//! - [`ingest`] — decode, validate, dedup, group commit, then ack (sans-I/O besides the store).
//! - [`agent`] — `edge-agent run`: threads, housekeeping, graceful shutdown.
//! - [`forward`] — the log as the hosted bridge (the `bridge` crate) reads it.
//! - [`cli`] — the command line (`run`, `replay`, `log stats`, `log tail`, `devices`).
//! - [`admin`] — the admin HTTP API; [`metrics`] its counters; [`devices`] the device registry;
//!   [`render`] records as JSON.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod broker;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod devices;
pub mod forward;
pub mod front;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod partitioner;
pub mod render;
