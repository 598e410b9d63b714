//! Topic and broker configs: DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.
//!
//! A topic has three configs that can be changed: `retention.ms`, `retention.bytes` and
//! `cleanup.policy`. Others the broker honours at fixed values (`max.message.bytes`,
//! `min.insync.replicas`, ...) are described read-only: setting one to its value is accepted
//! (admin UIs send a topic's whole config back), to another value refused with
//! `INVALID_CONFIG` saying why. Broker configs are what the process was started with, read-only.

use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Broker;
use crate::errors::Code;
use crate::storage::TopicConfig;

/// Resource types.
pub const RESOURCE_TOPIC: i8 = 2;
/// A broker.
pub const RESOURCE_BROKER: i8 = 4;

/// `DYNAMIC_TOPIC_CONFIG`: set on the topic.
const SOURCE_TOPIC: i8 = 1;
/// `STATIC_BROKER_CONFIG`: what the broker was started with.
const SOURCE_STATIC_BROKER: i8 = 4;
/// `DEFAULT_CONFIG`: nobody set it.
const SOURCE_DEFAULT: i8 = 5;

/// Config types (DescribeConfigs v3+).
const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;
const LIST: i8 = 7;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One config as DescribeConfigs shows it.
struct Entry {
    name: &'static str,
    value: String,
    /// Set on the topic (else the default).
    set: bool,
    read_only: bool,
    kind: i8,
    doc: &'static str,
}

/// Every topic config this broker honours, with its value for `c` on `b`.
fn topic_entries(b: &Broker, c: &TopicConfig) -> Vec<Entry> {
    let replicas = b.replication_factor();
    vec![
        Entry {
            name: "retention.ms",
            value: c.retention_ms.unwrap_or(-1).to_string(),
            set: c.retention_ms.is_some(),
            read_only: false,
            kind: LONG,
            doc: "Batches older than this (by their newest record's timestamp) are deleted; -1 keeps them.",
        },
        Entry {
            name: "retention.bytes",
            value: c.retention_bytes.unwrap_or(-1).to_string(),
            set: c.retention_bytes.is_some(),
            read_only: false,
            kind: LONG,
            doc: "The oldest batches of a partition are deleted while it holds more than this; -1: no limit.",
        },
        Entry {
            name: "cleanup.policy",
            value: if c.compact { "compact" } else { "delete" }.to_string(),
            set: c.compact,
            read_only: false,
            kind: LIST,
            doc: "delete: retention by time and size; compact: the latest record per key is kept.",
        },
        Entry {
            name: "max.message.bytes",
            value: crate::sm::partition::MAX_BATCH_BYTES.to_string(),
            set: false,
            read_only: true,
            kind: INT,
            doc: "The largest record batch accepted.",
        },
        Entry {
            name: "min.insync.replicas",
            value: (replicas / 2 + 1).to_string(),
            set: false,
            read_only: true,
            kind: INT,
            doc: "Writes are acknowledged once a majority of the replicas holds them (Raft).",
        },
        Entry {
            name: "message.timestamp.type",
            value: "CreateTime".to_string(),
            set: false,
            read_only: true,
            kind: STRING,
            doc: "Records keep the timestamps their producer gave them.",
        },
        Entry {
            name: "compression.type",
            value: "producer".to_string(),
            set: false,
            read_only: true,
            kind: STRING,
            doc: "Batches are stored as their producer compressed them.",
        },
        Entry {
            name: "unclean.leader.election.enable",
            value: "false".to_string(),
            set: false,
            read_only: true,
            kind: BOOLEAN,
            doc: "Only a replica holding every committed record can lead.",
        },
    ]
}

/// The broker's own configs (read-only: what it was started with).
fn broker_entries(b: &Broker) -> Vec<Entry> {
    let fixed = |name, value: String, kind, doc| Entry {
        name,
        value,
        set: true,
        read_only: true,
        kind,
        doc,
    };
    vec![
        fixed("broker.id", b.cfg.node_id.to_string(), INT, "This node's id."),
        fixed(
            "log.dirs",
            b.cfg.data_dir.display().to_string(),
            STRING,
            "Where the broker keeps its data.",
        ),
        fixed(
            "auto.create.topics.enable",
            b.cfg.auto_create_topics.to_string(),
            BOOLEAN,
            "Metadata for an unknown topic creates it.",
        ),
        fixed(
            "num.partitions",
            b.cfg.default_partitions.to_string(),
            INT,
            "Partitions of a topic created without a count.",
        ),
        fixed(
            "default.replication.factor",
            b.replication_factor().to_string(),
            INT,
            "Replicas of each partition.",
        ),
        fixed(
            "min.insync.replicas",
            (b.replication_factor() / 2 + 1).to_string(),
            INT,
            "Replicas that must hold a write before it is acknowledged.",
        ),
        fixed(
            "message.max.bytes",
            crate::sm::partition::MAX_BATCH_BYTES.to_string(),
            INT,
            "The largest record batch accepted.",
        ),
        fixed(
            "socket.request.max.bytes",
            crate::protocol::MAX_FRAME.to_string(),
            INT,
            "The largest request accepted.",
        ),
        fixed(
            "offsets.topic.num.partitions",
            crate::sm::offsets::OFFSETS_PARTITIONS.to_string(),
            INT,
            "Logs the committed group offsets are spread over.",
        ),
        fixed(
            "log.retention.ms",
            "-1".into(),
            LONG,
            "Topics keep their records unless they set retention.",
        ),
        fixed(
            "log.cleanup.policy",
            "delete".into(),
            LIST,
            "The cleanup policy of a topic that sets none.",
        ),
        fixed(
            "transaction.state.log.num.partitions",
            crate::sm::offsets::OFFSETS_PARTITIONS.to_string(),
            INT,
            "Logs the transaction states are spread over (the offsets logs).",
        ),
        fixed(
            "transaction.max.timeout.ms",
            crate::sm::txn::MAX_TIMEOUT_MS.to_string(),
            INT,
            "The longest transaction timeout a producer may ask for.",
        ),
    ]
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// DescribeConfigs for topics and for this broker.
pub fn describe(b: &Arc<Broker>, r: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
    let results = r
        .resources
        .into_iter()
        .map(|res| {
            let out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_message(None);
            let (entries, source_if_set) = match res.resource_type {
                RESOURCE_TOPIC => match b.catalog.topic(res.resource_name.as_str()) {
                    Some(t) => (topic_entries(b, &t.meta.config), SOURCE_TOPIC),
                    None => return out.with_error_code(Code::UnknownTopicOrPartition.code()),
                },
                RESOURCE_BROKER => match broker_named(b, res.resource_name.as_str()) {
                    Ok(()) => (broker_entries(b), SOURCE_STATIC_BROKER),
                    Err(msg) => {
                        return out
                            .with_error_code(Code::InvalidRequest.code())
                            .with_error_message(Some(s(&msg)))
                    }
                },
                other => {
                    return out
                        .with_error_code(Code::InvalidRequest.code())
                        .with_error_message(Some(s(&format!("resource type {other} has no configs here"))))
                }
            };
            let wanted = |n: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|ks| ks.iter().any(|k| k.as_str() == n))
            };
            let configs = entries
                .iter()
                .filter(|e| wanted(e.name))
                .map(|e| {
                    let source = if e.set { source_if_set } else { SOURCE_DEFAULT };
                    let mut c = DescribeConfigsResourceResult::default()
                        .with_name(s(e.name))
                        .with_value(Some(s(&e.value)))
                        .with_read_only(e.read_only)
                        .with_is_sensitive(false)
                        .with_config_source(source)
                        .with_config_type(e.kind);
                    if r.include_synonyms && version >= 1 {
                        c = c.with_synonyms(vec![DescribeConfigsSynonym::default()
                            .with_name(s(e.name))
                            .with_value(Some(s(&e.value)))
                            .with_source(source)]);
                    }
                    if r.include_documentation && version >= 3 {
                        c = c.with_documentation(Some(s(e.doc)));
                    }
                    c
                })
                .collect();
            out.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Whether `name` names this broker ("" is the cluster-wide default, which is ours too).
fn broker_named(b: &Broker, name: &str) -> Result<(), String> {
    if name.is_empty() || name.parse::<i32>().ok() == Some(b.cfg.node_id) {
        Ok(())
    } else {
        Err(format!(
            "broker {name}'s configs are asked of broker {name}, not of broker {}",
            b.cfg.node_id
        ))
    }
}

/// Why a change to a broker's configs is refused.
fn broker_read_only(b: &Broker, name: &str) -> (Code, String) {
    match broker_named(b, name) {
        Err(msg) => (Code::InvalidRequest, msg),
        Ok(()) => (
            Code::InvalidConfig,
            "broker configs are read-only here: they are set in the broker's configuration and flags".into(),
        ),
    }
}

/// One change to a topic config: `SET`, `DELETE` (back to the default), `APPEND` and
/// `SUBTRACT` (list configs: `cleanup.policy`).
pub fn change(
    c: &mut TopicConfig,
    b: &Broker,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), String> {
    let v = value.unwrap_or_default();
    let long = |v: &str| -> Result<Option<i64>, String> {
        let n: i64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{name}: {v:?} is not a number"))?;
        match n {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(n)),
            _ => Err(format!("{name}: {n} is below -1")),
        }
    };
    match (name, op) {
        ("retention.ms", OP_SET) => c.retention_ms = long(v)?,
        ("retention.ms", OP_DELETE) => c.retention_ms = None,
        ("retention.bytes", OP_SET) => c.retention_bytes = long(v)?,
        ("retention.bytes", OP_DELETE) => c.retention_bytes = None,
        ("cleanup.policy", OP_DELETE) => c.compact = false,
        ("cleanup.policy", OP_SET | OP_APPEND | OP_SUBTRACT) => {
            let mut policies: Vec<&str> = if op == OP_SET {
                Vec::new()
            } else if c.compact {
                vec!["compact"]
            } else {
                vec!["delete"]
            };
            for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !matches!(p, "delete" | "compact") {
                    return Err(format!("cleanup.policy: {p:?} is neither delete nor compact"));
                }
                match op {
                    OP_SUBTRACT => policies.retain(|x| *x != p),
                    _ if !policies.contains(&p) => policies.push(p),
                    _ => {}
                }
            }
            // compact,delete compacts and also applies retention; retention applies to a
            // compacted topic here anyway, so any list naming compact compacts.
            c.compact = policies.contains(&"compact");
            if policies.is_empty() {
                return Err("cleanup.policy: an empty policy".into());
            }
        }
        (_, OP_APPEND | OP_SUBTRACT) => return Err(format!("{name} is not a list config")),
        _ => {
            let fixed = topic_entries(b, c).into_iter().find(|e| e.name == name);
            return match fixed {
                Some(_) if op == OP_DELETE => Ok(()),
                Some(e) if e.value == v => Ok(()),
                Some(e) => Err(format!(
                    "{name} is fixed at {} on this broker: {}",
                    e.value, e.doc
                )),
                None => Err(format!("unknown or unsupported topic config {name}")),
            };
        }
    }
    Ok(())
}

/// AlterConfigs: each topic's configs become exactly those given (the rest their defaults).
pub async fn alter(b: &Arc<Broker>, r: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut out = Vec::with_capacity(r.resources.len());
    for res in r.resources {
        let changes: Vec<(String, i8, Option<String>)> = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    OP_SET,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let (code, msg) = apply(
            b,
            res.resource_type,
            res.resource_name.as_str(),
            true,
            changes,
            r.validate_only,
        )
        .await;
        out.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name)
                .with_error_code(code.code())
                .with_error_message(msg.map(|m| s(&m))),
        );
    }
    AlterConfigsResponse::default().with_responses(out)
}

/// IncrementalAlterConfigs: each change applied to the topic's current configs.
pub async fn alter_incremental(
    b: &Arc<Broker>,
    r: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut out = Vec::with_capacity(r.resources.len());
    for res in r.resources {
        let changes: Vec<(String, i8, Option<String>)> = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let (code, msg) = apply(
            b,
            res.resource_type,
            res.resource_name.as_str(),
            false,
            changes,
            r.validate_only,
        )
        .await;
        out.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name)
                .with_error_code(code.code())
                .with_error_message(msg.map(|m| s(&m))),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(out)
}

/// Applies `changes` to one resource (from the defaults when `replace`, else from its
/// current configs), all or nothing.
async fn apply(
    b: &Arc<Broker>,
    kind: i8,
    name: &str,
    replace: bool,
    changes: Vec<(String, i8, Option<String>)>,
    validate_only: bool,
) -> (Code, Option<String>) {
    match kind {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            let (code, msg) = broker_read_only(b, name);
            return (code, Some(msg));
        }
        other => {
            return (
                Code::InvalidRequest,
                Some(format!("resource type {other} has no configs here")),
            )
        }
    }
    let Some(t) = b.catalog.topic(name) else {
        return (Code::UnknownTopicOrPartition, None);
    };
    let mut c = if replace {
        TopicConfig::default()
    } else {
        t.meta.config.clone()
    };
    for (n, op, v) in &changes {
        if !(OP_SET..=OP_SUBTRACT).contains(op) {
            return (Code::InvalidRequest, Some(format!("{n}: unknown operation {op}")));
        }
        if let Err(msg) = change(&mut c, b, n, *op, v.as_deref()) {
            tracing::info!(topic = name, "config change refused: {msg}");
            return (Code::InvalidConfig, Some(msg));
        }
    }
    if validate_only || c == t.meta.config {
        return (Code::None, None);
    }
    let code = b.set_topic_config(name, c).await;
    if code == Code::None {
        tracing::info!(topic = name, "topic configs changed");
    }
    (code, None)
}
