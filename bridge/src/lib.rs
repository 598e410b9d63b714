//! # bridge — edge log to cloud, exactly once per `(gateway, partition, offset)`
//!
//! Hop 3 of the appliance's guarantee. The edge agent hosts this library in-process: it reads
//! the agent's redb log through [`source::EdgeLog`] and produces to any Kafka-compatible
//! cluster with librdkafka (idempotent producer, acks=all).
//!
//! # Layout
//! - [`config`] — the `[bridge]` section: bootstrap servers, topic mapping, batching,
//!   compression, bandwidth cap, backlog quota, librdkafka pass-through.
//! - [`checkpoint`] — per edge partition: which offsets are in flight, which the cloud
//!   acknowledged, and the checkpoint (the end of the contiguous acknowledged prefix), plus
//!   reconciliation after a crash (skip what the cloud already has).
//! - [`run`] — the forwarding loop: reconcile, live-first drain, heartbeat, quota, replay.
//! - [`state`] — what is persisted in the edge log; [`status`] — what is reported.
//!
//! # Cloud records
//! Key = the edge key (the device id); partition = the edge partition's number when the cloud
//! topic has the edge's partition count (what murmur2 picks for the key), else librdkafka's murmur2;
//! value unchanged, timestamp = edge ingest time, headers = the edge record's headers plus
//! `edge: <gateway>/<edge topic>/<edge partition>/<edge offset>`, for readings
//! `reading: <boot>/<seq>`, and on replays `replay: <job id>`
//! (see [`run::headers`]).
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod run;
pub mod source;
pub mod state;
pub mod status;

pub use config::BridgeConfig;
pub use run::{Bridge, ReplayStart};
pub use source::{EdgeLog, EdgePartition, EdgeRecord, EdgeRecordRef, EdgeTopic};
