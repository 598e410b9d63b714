//! The broker's state machines: deterministic, fed serializable commands (the payloads of
//! their logs), with time and random ids passed in, and no channels or I/O. The single-node
//! shell ([`crate::state`]) applies them straight to storage; replication puts a Raft log in
//! front of each.
//!
//! - [`partition`] — one partition: offsets, idempotent producers, retention and compaction.
//! - [`metadata`] — the topic catalog and producer-id blocks.
//! - [`offsets`] — committed consumer-group offsets, spread over a few logs by group, and
//!   the transactions whose ids hash to each log.
//! - [`txn`] — the transaction coordinator's rules.

pub mod metadata;
pub mod offsets;
pub mod partition;
pub mod txn;
