//! Metadata, CreateTopics, DeleteTopics, CreatePartitions, DescribeLogDirs, InitProducerId.

use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Broker;
use crate::errors::Code;
use crate::storage::TopicConfig;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Creates a topic with the default replication and waits for the answer.
pub async fn create(b: &Broker, name: &str, partitions: u32, config: TopicConfig) -> Code {
    b.create_topic(name, partitions, -1, config).await
}

/// Metadata: our one broker, and the topics asked for (all when `topics` is null).
pub async fn metadata(b: &Arc<Broker>, r: MetadataRequest, version: i16, listener: &str) -> MetadataResponse {
    let brokers: Vec<MetadataResponseBroker> = b
        .brokers_on(listener)
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(s(&host))
                .with_port(port)
                .with_rack(None)
        })
        .collect();
    let names: Vec<Result<String, uuid::Uuid>> = match &r.topics {
        None => b.catalog.all().iter().map(|t| Ok(t.meta.name.clone())).collect(),
        Some(ts) => ts
            .iter()
            .map(|t| t.name.as_ref().map(|n| n.0.to_string()).ok_or(t.topic_id))
            .collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let name = match name {
            Ok(n) => n,
            Err(id) => match b
                .catalog
                .all()
                .iter()
                .find(|t| uuid::Uuid::from_bytes(t.meta.uuid) == id)
            {
                Some(t) => t.meta.name.clone(),
                None => {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_topic_id(id)
                            .with_error_code(Code::UnknownTopicId.code()),
                    );
                    continue;
                }
            },
        };
        if b.catalog.topic(&name).is_none() && b.cfg.auto_create_topics && r.allow_auto_topic_creation {
            let _ = create(b, &name, b.cfg.default_partitions, TopicConfig::default()).await;
        }
        let t = match b.catalog.topic(&name) {
            Some(t) => t,
            None => {
                let code = if crate::sm::metadata::valid_topic_name(&name) {
                    Code::UnknownTopicOrPartition
                } else {
                    Code::InvalidTopicException
                };
                topics.push(
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(s(&name))))
                        .with_error_code(code.code()),
                );
                continue;
            }
        };
        let partitions = (0..t.meta.partitions)
            .map(|p| {
                let place = b.place(&t, p);
                MetadataResponsePartition::default()
                    .with_partition_index(p as i32)
                    .with_error_code(if place.leader < 0 {
                        Code::LeaderNotAvailable.code()
                    } else {
                        0
                    })
                    .with_leader_id(BrokerId(place.leader))
                    .with_leader_epoch(place.epoch)
                    .with_isr_nodes(place.isr.into_iter().map(BrokerId).collect())
                    .with_replica_nodes(place.replicas.into_iter().map(BrokerId).collect())
            })
            .collect();
        let mut topic = MetadataResponseTopic::default()
            .with_name(Some(TopicName(s(&name))))
            .with_partitions(partitions);
        if version >= 10 {
            topic = topic.with_topic_id(uuid::Uuid::from_bytes(t.meta.uuid));
        }
        topics.push(topic);
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(s(&b.cluster_id)))
        .with_controller_id(BrokerId(b.controller()))
        .with_topics(topics)
}

fn parse_configs(configs: &[create_topics_request::CreatableTopicConfig]) -> Result<TopicConfig, String> {
    let mut c = TopicConfig::default();
    for cfg in configs {
        let v = cfg.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        match cfg.name.as_str() {
            "retention.ms" => {
                c.retention_ms =
                    Some(v.parse().map_err(|_| format!("retention.ms {v:?}"))?).filter(|x: &i64| *x >= 0)
            }
            "retention.bytes" => {
                c.retention_bytes =
                    Some(v.parse().map_err(|_| format!("retention.bytes {v:?}"))?).filter(|x: &i64| *x >= 0)
            }
            "cleanup.policy" => match v.as_str() {
                "delete" => c.compact = false,
                "compact" | "compact,delete" | "delete,compact" => c.compact = true,
                _ => return Err(format!("cleanup.policy {v:?}")),
            },
            _ => {} // other configs are accepted and ignored
        }
    }
    Ok(c)
}

/// CreateTopics.
pub async fn create_topics(b: &Arc<Broker>, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let name = t.name.0.to_string();
        tracing::debug!(topic = %name, "CreateTopics");
        let partitions = if t.num_partitions == -1 {
            b.cfg.default_partitions as i32
        } else {
            t.num_partitions
        };
        let mut res = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_error_message(None);
        let code = if partitions <= 0 {
            Code::InvalidPartitions
        } else {
            match parse_configs(&t.configs) {
                Err(msg) => {
                    res = res.with_error_message(Some(s(&msg)));
                    Code::InvalidConfig
                }
                Ok(_) if r.validate_only => Code::None,
                Ok(cfg) => {
                    b.create_topic(&name, partitions as u32, t.replication_factor, cfg)
                        .await
                }
            }
        };
        if code == Code::None && !r.validate_only {
            if let Some(t) = b.catalog.topic(&name) {
                res = res.with_topic_id(uuid::Uuid::from_bytes(t.meta.uuid)); // v7+
            }
        }
        let factor = b
            .catalog
            .topic(&name)
            .and_then(|t| t.meta.replicas.first().map(|r| r.len() as i16))
            .unwrap_or(1);
        results.push(
            res.with_error_code(code.code())
                .with_num_partitions(partitions)
                .with_replication_factor(factor),
        );
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// DeleteTopics: by name (v1–5), or by name or topic id (v6+).
pub async fn delete_topics(b: &Arc<Broker>, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<TopicName>, uuid::Uuid)> = if r.topics.is_empty() {
        r.topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    } else {
        r.topics.into_iter().map(|t| (t.name, t.topic_id)).collect()
    };
    let mut out = Vec::new();
    for (name, id) in wanted {
        let topic = match &name {
            Some(n) => b.catalog.topic(n.as_str()),
            None => b
                .catalog
                .all()
                .into_iter()
                .find(|t| uuid::Uuid::from_bytes(t.meta.uuid) == id),
        };
        let code = match (&name, &topic) {
            (None, None) => Code::UnknownTopicId,
            _ => {
                let name = topic.as_ref().map_or_else(
                    || name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    |t| t.meta.name.clone(),
                );
                b.delete_topic(&name).await
            }
        };
        out.push(
            DeletableTopicResult::default()
                .with_name(name.or_else(|| topic.as_ref().map(|t| TopicName(s(&t.meta.name)))))
                .with_topic_id(topic.as_ref().map_or(id, |t| uuid::Uuid::from_bytes(t.meta.uuid)))
                .with_error_message(None)
                .with_error_code(code.code()),
        );
    }
    DeleteTopicsResponse::default().with_responses(out)
}

/// InitProducerId: a new id for an idempotent producer, or (with a transactional id) the
/// transaction coordinator's answer.
pub async fn init_producer_id(
    b: &Arc<Broker>,
    r: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if let Some(id) = r.transactional_id.clone() {
        return super::txn::init_producer_id(b, r, version, id.as_str()).await;
    }
    let (code, pid, epoch) = b.init_producer_id().await;
    InitProducerIdResponse::default()
        .with_error_code(code.code())
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
}

/// CreatePartitions: grows topics, the new partitions placed as creation places them (or as
/// the request assigns them).
pub async fn create_partitions(b: &Arc<Broker>, r: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut seen = std::collections::BTreeSet::new();
    let duplicates: std::collections::BTreeSet<String> = r
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let mut results = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let name = t.name.to_string();
        let (code, msg) = if duplicates.contains(&name) {
            (
                Code::InvalidRequest,
                Some("the topic is named twice in the request".to_string()),
            )
        } else {
            match b.catalog.topic(&name) {
                None => (Code::UnknownTopicOrPartition, None),
                Some(have) => {
                    let now = have.meta.partitions as i32;
                    let assignment: Option<Vec<Vec<i32>>> = t.assignments.map(|a| {
                        a.into_iter()
                            .map(|x| x.broker_ids.into_iter().map(|id| id.0).collect())
                            .collect()
                    });
                    if t.count < now {
                        (
                            Code::InvalidPartitions,
                            Some(format!("Topic currently has {now} partitions, which is higher than the requested {}.", t.count)),
                        )
                    } else if t.count == now {
                        (
                            Code::InvalidPartitions,
                            Some(format!("Topic already has {now} partitions.")),
                        )
                    } else if t.count as u32 > crate::sm::metadata::MAX_PARTITIONS {
                        (
                            Code::InvalidPartitions,
                            Some(format!(
                                "at most {} partitions",
                                crate::sm::metadata::MAX_PARTITIONS
                            )),
                        )
                    } else if assignment
                        .as_ref()
                        .is_some_and(|a| a.len() != (t.count - now) as usize)
                    {
                        (
                            Code::InvalidReplicaAssignment,
                            Some(format!(
                                "{} assignments for {} new partitions",
                                assignment.as_ref().map_or(0, Vec::len),
                                t.count - now
                            )),
                        )
                    } else if r.validate_only {
                        (Code::None, None)
                    } else {
                        let code = b.add_partitions(&name, t.count as u32, assignment).await;
                        if code == Code::None {
                            tracing::info!(topic = %name, from = now, to = t.count, "partitions added");
                        }
                        (code, None)
                    }
                }
            }
        };
        results.push(
            create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(code.code())
                .with_error_message(msg.map(|m| s(&m))),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DescribeLogDirs: the one data directory, with the size of each partition this node
/// holds (on a cluster, the replicas it hosts), and (v4) the disk's size and free bytes.
pub fn describe_log_dirs(
    b: &Arc<Broker>,
    r: DescribeLogDirsRequest,
    _version: i16,
) -> DescribeLogDirsResponse {
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
    };
    let wanted: Option<std::collections::BTreeMap<String, Vec<i32>>> = r.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect()
    });
    let mut topics = Vec::new();
    for t in b.catalog.all() {
        let parts_wanted = match &wanted {
            None => None,
            Some(w) => match w.get(&t.meta.name) {
                Some(p) => Some(p),
                None => continue,
            },
        };
        let partitions: Vec<DescribeLogDirsPartition> = t
            .partitions
            .iter()
            .enumerate()
            .filter(|(p, _)| parts_wanted.is_none_or(|w| w.contains(&(*p as i32))))
            .filter(|(p, _)| b.hosts(t.meta.id, *p as u32))
            .map(|(p, v)| {
                DescribeLogDirsPartition::default()
                    .with_partition_index(p as i32)
                    .with_partition_size(v.bytes.load(std::sync::atomic::Ordering::SeqCst) as i64)
                    .with_offset_lag(0)
                    .with_is_future_key(false)
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(s(&t.meta.name)))
                    .with_partitions(partitions),
            );
        }
    }
    let (total, usable) =
        foundation::redb::fs_space(&b.cfg.data_dir).map_or((-1, -1), |(t, a)| (t as i64, a as i64));
    let dir = DescribeLogDirsResult::default()
        .with_error_code(0)
        .with_log_dir(s(&b.cfg.data_dir.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(total)
        .with_usable_bytes(usable);
    DescribeLogDirsResponse::default().with_results(vec![dir])
}
