//! # cloud-broker — a Kafka-protocol broker
//!
//! Every Kafka client and tool (kcat, librdkafka, kafka-python, confluent-kafka, the rdkafka
//! crate) works against it unmodified. One node today; the log sits behind
//! [`storage::Storage`] and a single deterministic writer ([`state`]) so that replication (one
//! Raft group per partition) slots in under it without touching the protocol layer.
//!
//! # Layout
//! - [`server`] — the TCP listener and per-connection loop (frames in, frames out).
//! - [`protocol`] — request framing, header decode, version negotiation, response encode.
//! - [`api`] — one module per Kafka API (ApiVersions, Metadata, Produce, Fetch, ...).
//! - [`coordinator`] — the consumer-group coordinator: a sans-I/O state machine per group.
//! - [`raft`] — replication: a Raft group per partition (openraft), one node-wide store.
//! - [`sm`] — the state machines (partition, metadata, group offsets): deterministic, no I/O.
//! - [`state`] — the single-node shell: one writer applies them to storage, group commit.
//! - [`storage`] — durable storage (redb) and its in-memory twin, one conformance suite.
//! - [`batch`] — record batches as opaque bytes: header parsing, CRC, offset rewrite.
//! - [`client`] — a lean Kafka consumer (group member, batches walked in place): the monitor's.
//! - [`config`] — `cloud.toml`, `CLOUD_*` environment, flags.
//! - [`errors`] — Kafka error codes.
//! - [`limits`] — what one client can make the Kafka listener hold (connections, timeouts, memory).
//! - [`monitor`] — monitoring devices from the cloud: the device registry, gateways, the
//!   dashboard and its JSON API, fed by a Kafka consumer of the cloud topics.
//! - [`schemas`] — a schema registry (the Confluent REST subset clients use), kept in a topic.
//! - [`cli`] — the command line (`cloud-broker run`).
//! - [`alloc`] — the global allocator that keeps hostile array counts from aborting the process.
#![warn(missing_docs)]

pub mod alloc;
pub mod api;
pub mod batch;
pub mod cli;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod errors;
pub mod limits;
pub mod monitor;
pub mod protocol;
pub mod raft;
pub mod schemas;
pub mod security;
pub mod server;
pub mod sm;
pub mod state;
pub mod storage;
