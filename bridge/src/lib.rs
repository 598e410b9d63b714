//! # bridge — edge log to cloud, exactly once per `(gateway, partition, offset)`
//!
//! Hop 3 of the appliance's guarantee. The edge agent hosts this library in-process: it reads
//! the agent's redb log through [`source::EdgeLog`] and produces to any Kafka-compatible
//! cluster with librdkafka (idempotent producer, acks=all).
//!
//! # Layout
//! - [`engine`] — every rule, without I/O of its own: sessions and reconciliation,
//!   live-first, the drain, the bandwidth cap, the disk quota, replays, delivery reports and
//!   checkpoints, persistence, heartbeat, status. Driven by calls; reads through
//!   [`source::EdgeLog`], sends through [`cloud::CloudSession`], tells time by [`clock::Clock`].
//! - [`bridge`] — the shell: the thread that drives the engine with librdkafka
//!   ([`cloud::kafka`]), waits and backs off; the [`Bridge`] handle the agent holds.
//! - [`cloud`] — the cloud as the engine sees it, over librdkafka or the in-memory
//!   [`cloud::twin`] with injectable faults.
//! - [`checkpoint`] — per edge partition: which offsets are in flight, which the cloud
//!   acknowledged, and the checkpoint (the end of the contiguous acknowledged prefix), plus
//!   reconciliation after a crash (skip what the cloud already has).
//! - [`source`] — what the bridge needs of the edge log (and an in-memory twin, [`source::mem`]).
//! - [`format`](mod@format) — readings in the cloud as postcard, JSON or Confluent-framed JSON with a
//!   registered schema.
//! - [`headers`] — the identity headers; [`config`] — the `[bridge]` section; [`state`] — what
//!   is persisted in the edge log; [`status`] — what is reported; [`error`] — the error type.
//!
//! # Cloud records
//! Key = the edge key (the device id); partition = the edge partition's number when the cloud
//! topic has the edge's partition count (what murmur2 picks for the key), else librdkafka's murmur2;
//! value unchanged (readings rewritten to JSON when `value_format` says so), timestamp = edge ingest time, headers = the edge record's headers plus
//! `edge: <gateway>/<edge topic>/<edge partition>/<edge offset>`, for readings
//! `reading: <boot>/<seq>`, and on replays `replay: <job id>` (see [`headers`]).
#![warn(missing_docs)]

pub mod bridge;
pub mod checkpoint;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod engine;
pub mod error;
pub mod format;
pub use vocab::headers;
pub mod source;
pub mod state;
pub mod status;

pub use bridge::Bridge;
pub use cloud::kafka::librdkafka_version;
pub use config::BridgeConfig;
pub use engine::{Engine, ReplayStart};
pub use error::{Error, Result};
pub use source::{EdgeLog, EdgePartition, EdgeRecord, EdgeRecordRef, EdgeTopic};
