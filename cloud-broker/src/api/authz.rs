//! Authorization of every request against its principal's rights ([`crate::security`]).
//!
//! A request is checked before its handler runs. What the principal may not touch is taken
//! out of it and answered with Kafka's own code (`TOPIC_AUTHORIZATION_FAILED`,
//! `GROUP_AUTHORIZATION_FAILED`, `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`,
//! `CLUSTER_AUTHORIZATION_FAILED`) beside the handler's answer for the rest, as Kafka does; a
//! request with nothing left it may do is answered at once without reaching its handler.
//! Lists (all topics in Metadata, ListGroups, ListTransactions) show only what the principal
//! may see. A principal may create the topics it may produce to; the rest of administration
//! (deleting and configuring topics, deleting records, log directories) is all or nothing: the
//! `admin` right.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Broker;
use crate::errors::Code;
use crate::protocol::Request;
use crate::security::Access;

/// What the checks decided.
#[derive(Debug)]
pub enum Verdict {
    /// Serve the (possibly narrowed) request, then apply the patch to its response.
    Serve(Box<Request>, Patch),
    /// Answer this, without serving anything.
    Refused(Box<ResponseKind>),
}

/// What goes back into a response for the parts of its request that were taken out.
#[derive(Debug, Default)]
pub enum Patch {
    /// Nothing.
    #[default]
    None,
    /// Produce: partitions refused, with their code.
    Produce(Vec<(TopicName, Vec<i32>, Code)>),
    /// Fetch: partitions refused.
    Fetch(Vec<(TopicName, Vec<i32>)>),
    /// ListOffsets: partitions refused.
    ListOffsets(Vec<(TopicName, Vec<i32>)>),
    /// Metadata: topics named and refused; topics the principal may not see are dropped.
    Metadata(Vec<TopicName>),
    /// OffsetCommit: partitions refused.
    OffsetCommit(Vec<(TopicName, Vec<i32>)>),
    /// OffsetFetch v8: groups refused.
    OffsetFetch(Vec<GroupId>),
    /// FindCoordinator v4: keys refused, with their code.
    FindCoordinator(Vec<(StrBytes, Code)>),
    /// DescribeGroups: groups refused.
    DescribeGroups(Vec<GroupId>),
    /// DeleteGroups: groups refused.
    DeleteGroups(Vec<GroupId>),
    /// ListGroups: only the groups the principal may use.
    ListGroups,
    /// ListTransactions: only the transactional ids the principal may use.
    ListTransactions,
    /// DescribeTransactions: ids refused.
    DescribeTransactions(Vec<TransactionalId>),
    /// CreateTopics: topics refused.
    CreateTopics(Vec<TopicName>),
    /// DescribeConfigs: resources refused (type, name, code).
    DescribeConfigs(Vec<(i8, StrBytes, Code)>),
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Takes out of `items` those `allowed` refuses, returning them.
fn split<T>(items: &mut Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> Vec<T> {
    let (keep, refused): (Vec<T>, Vec<T>) = std::mem::take(items).into_iter().partition(|t| allowed(t));
    *items = keep;
    refused
}

fn refused(r: ResponseKind) -> Verdict {
    Verdict::Refused(Box::new(r))
}

/// The code for a config resource refused: topics' or the cluster's.
fn resource_code(resource_type: i8) -> Code {
    if resource_type == super::configs::RESOURCE_TOPIC {
        Code::TopicAuthorizationFailed
    } else {
        Code::ClusterAuthorizationFailed
    }
}

/// Checks `req` against its principal's rights.
pub fn check(b: &Broker, mut req: Box<Request>) -> Verdict {
    if !b.guard.enabled() {
        return Verdict::Serve(req, Patch::None);
    }
    let who = req.principal.clone();
    let may = |a: Access<'_>| b.guard.allows(&who, a);
    let version = req.version;
    let patch = match &mut req.body {
        RequestKind::ApiVersions(_) => Patch::None,
        RequestKind::Produce(r) => {
            let txn_ok = r
                .transactional_id
                .as_ref()
                .is_none_or(|id| may(Access::Transaction(id)));
            let refused = split(&mut r.topic_data, |t| txn_ok && may(Access::Produce(&t.name)));
            let code = if txn_ok {
                Code::TopicAuthorizationFailed
            } else {
                Code::TransactionalIdAuthorizationFailed
            };
            Patch::Produce(
                refused
                    .into_iter()
                    .map(|t| (t.name, t.partition_data.iter().map(|p| p.index).collect(), code))
                    .collect(),
            )
        }
        RequestKind::Fetch(r) => {
            let refused: Vec<_> = split(&mut r.topics, |t| may(Access::Consume(&t.topic)))
                .into_iter()
                .map(|t| (t.topic, t.partitions.iter().map(|p| p.partition).collect()))
                .collect();
            if r.topics.is_empty() && !refused.is_empty() {
                // Nothing left to wait for: answered now, not after max_wait_ms.
                let mut resp = FetchResponse::default();
                patch_fetch(&mut resp, refused);
                return refused_fetch(resp);
            }
            Patch::Fetch(refused)
        }
        RequestKind::ListOffsets(r) => Patch::ListOffsets(
            split(&mut r.topics, |t| may(Access::Describe(&t.name)))
                .into_iter()
                .map(|t| (t.name, t.partitions.iter().map(|p| p.partition_index).collect()))
                .collect(),
        ),
        RequestKind::Metadata(r) => match &mut r.topics {
            None => Patch::Metadata(Vec::new()),
            Some(topics) => Patch::Metadata(
                split(topics, |t| {
                    t.name.as_ref().is_none_or(|n| may(Access::Describe(n)))
                })
                .into_iter()
                .filter_map(|t| t.name)
                .collect(),
            ),
        },
        RequestKind::OffsetCommit(r) => {
            if !may(Access::Group(&r.group_id)) {
                let topics = r
                    .topics
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.partitions.iter().map(|p| p.partition_index).collect(),
                        )
                    })
                    .collect();
                let mut resp = OffsetCommitResponse::default();
                patch_offset_commit(&mut resp, topics, Code::GroupAuthorizationFailed);
                return refused(ResponseKind::OffsetCommit(resp));
            }
            Patch::OffsetCommit(
                split(&mut r.topics, |t| may(Access::Consume(&t.name)))
                    .into_iter()
                    .map(|t| (t.name, t.partitions.iter().map(|p| p.partition_index).collect()))
                    .collect(),
            )
        }
        RequestKind::OffsetFetch(r) if version < 8 => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::OffsetFetch(
                    OffsetFetchResponse::default().with_error_code(Code::GroupAuthorizationFailed.code()),
                ));
            }
            Patch::None
        }
        RequestKind::OffsetFetch(r) => Patch::OffsetFetch(
            split(&mut r.groups, |g| may(Access::Group(&g.group_id)))
                .into_iter()
                .map(|g| g.group_id)
                .collect(),
        ),
        RequestKind::FindCoordinator(r) => {
            let txn = r.key_type == 1;
            let allowed = |k: &str| {
                may(if txn {
                    Access::Transaction(k)
                } else {
                    Access::Group(k)
                })
            };
            let code = if txn {
                Code::TransactionalIdAuthorizationFailed
            } else {
                Code::GroupAuthorizationFailed
            };
            if version < 4 {
                if !allowed(&r.key) {
                    let mut resp = FindCoordinatorResponse::default()
                        .with_error_code(code.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1);
                    if version >= 1 {
                        resp = resp.with_error_message(Some(s("not authorized")));
                    }
                    return refused(ResponseKind::FindCoordinator(resp));
                }
                Patch::None
            } else {
                Patch::FindCoordinator(
                    split(&mut r.coordinator_keys, |k| allowed(k))
                        .into_iter()
                        .map(|k| (k, code))
                        .collect(),
                )
            }
        }
        RequestKind::JoinGroup(r) => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(Code::GroupAuthorizationFailed.code())
                        .with_generation_id(-1)
                        .with_protocol_name(Some(Default::default())),
                ));
            }
            Patch::None
        }
        RequestKind::SyncGroup(r) => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(Code::GroupAuthorizationFailed.code()),
                ));
            }
            Patch::None
        }
        RequestKind::Heartbeat(r) => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(Code::GroupAuthorizationFailed.code()),
                ));
            }
            Patch::None
        }
        RequestKind::LeaveGroup(r) => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(Code::GroupAuthorizationFailed.code()),
                ));
            }
            Patch::None
        }
        RequestKind::OffsetDelete(r) => {
            if !may(Access::Group(&r.group_id)) {
                return refused(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(Code::GroupAuthorizationFailed.code()),
                ));
            }
            Patch::None
        }
        RequestKind::DescribeGroups(r) => {
            Patch::DescribeGroups(split(&mut r.groups, |g| may(Access::Group(g))))
        }
        RequestKind::DeleteGroups(r) => {
            Patch::DeleteGroups(split(&mut r.groups_names, |g| may(Access::Group(g))))
        }
        RequestKind::ListGroups(_) => Patch::ListGroups,
        RequestKind::InitProducerId(r) => {
            let (ok, code) = match &r.transactional_id {
                Some(id) => (
                    may(Access::Transaction(id)),
                    Code::TransactionalIdAuthorizationFailed,
                ),
                None => (may(Access::IdempotentWrite), Code::ClusterAuthorizationFailed),
            };
            if !ok {
                return refused(ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code.code())
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ));
            }
            Patch::None
        }
        RequestKind::AddPartitionsToTxn(r) => {
            let txn_ok = may(Access::Transaction(&r.v3_and_below_transactional_id));
            let topic_ok = |t: &add_partitions_to_txn_request::AddPartitionsToTxnTopic| {
                txn_ok && may(Access::Produce(&t.name))
            };
            let oks: Vec<bool> = r.v3_and_below_topics.iter().map(topic_ok).collect();
            if oks.iter().any(|ok| !ok) {
                // Kafka: refused topics get their code, the others OPERATION_NOT_ATTEMPTED.
                let results = r
                    .v3_and_below_topics
                    .iter()
                    .zip(oks)
                    .map(|(t, ok)| {
                        let code = match (txn_ok, ok) {
                            (false, _) => Code::TransactionalIdAuthorizationFailed,
                            (true, false) => Code::TopicAuthorizationFailed,
                            (true, true) => Code::OperationNotAttempted,
                        };
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(*p)
                                            .with_partition_error_code(code.code())
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refused(ResponseKind::AddPartitionsToTxn(
                    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
                ));
            }
            Patch::None
        }
        RequestKind::AddOffsetsToTxn(r) => {
            let code = if !may(Access::Transaction(&r.transactional_id)) {
                Code::TransactionalIdAuthorizationFailed
            } else if !may(Access::Group(&r.group_id)) {
                Code::GroupAuthorizationFailed
            } else {
                Code::None
            };
            if code != Code::None {
                return refused(ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(code.code()),
                ));
            }
            Patch::None
        }
        RequestKind::EndTxn(r) => {
            if !may(Access::Transaction(&r.transactional_id)) {
                return refused(ResponseKind::EndTxn(
                    EndTxnResponse::default()
                        .with_error_code(Code::TransactionalIdAuthorizationFailed.code())
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ));
            }
            Patch::None
        }
        RequestKind::TxnOffsetCommit(r) => {
            let code = if !may(Access::Transaction(&r.transactional_id)) {
                Code::TransactionalIdAuthorizationFailed
            } else if !may(Access::Group(&r.group_id)) {
                Code::GroupAuthorizationFailed
            } else {
                Code::None
            };
            if code != Code::None {
                let topics = r
                    .topics
                    .iter()
                    .map(|t| {
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default(
                                        )
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code.code())
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refused(ResponseKind::TxnOffsetCommit(
                    TxnOffsetCommitResponse::default().with_topics(topics),
                ));
            }
            Patch::None
        }
        RequestKind::ListTransactions(_) => Patch::ListTransactions,
        RequestKind::DescribeTransactions(r) => {
            Patch::DescribeTransactions(split(&mut r.transactional_ids, |id| may(Access::Transaction(id))))
        }
        RequestKind::DescribeConfigs(r) => Patch::DescribeConfigs(
            split(&mut r.resources, |c| {
                if c.resource_type == super::configs::RESOURCE_TOPIC {
                    may(Access::Describe(&c.resource_name))
                } else {
                    may(Access::Admin)
                }
            })
            .into_iter()
            .map(|c| (c.resource_type, c.resource_name, resource_code(c.resource_type)))
            .collect(),
        ),
        // A principal may create the topics it may produce to (Kafka's CREATE on a topic).
        RequestKind::CreateTopics(r) => Patch::CreateTopics(
            split(&mut r.topics, |t| may(Access::Produce(&t.name)))
                .into_iter()
                .map(|t| t.name)
                .collect(),
        ),
        // Administration: all or nothing.
        body if may(Access::Admin) => {
            let _ = body;
            Patch::None
        }
        RequestKind::DeleteTopics(r) => {
            let named = r
                .topic_names
                .iter()
                .map(|n| (Some(n.clone()), Default::default()));
            let by_state = r.topics.iter().map(|t| (t.name.clone(), t.topic_id));
            let responses = named
                .chain(by_state)
                .map(|(name, id)| {
                    delete_topics_response::DeletableTopicResult::default()
                        .with_name(name)
                        .with_topic_id(id)
                        .with_error_code(Code::TopicAuthorizationFailed.code())
                })
                .collect();
            return refused(ResponseKind::DeleteTopics(
                DeleteTopicsResponse::default().with_responses(responses),
            ));
        }
        RequestKind::CreatePartitions(r) => {
            let results = r
                .topics
                .iter()
                .map(|t| {
                    create_partitions_response::CreatePartitionsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(Code::TopicAuthorizationFailed.code())
                })
                .collect();
            return refused(ResponseKind::CreatePartitions(
                CreatePartitionsResponse::default().with_results(results),
            ));
        }
        RequestKind::DeleteRecords(r) => {
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    delete_records_response::DeleteRecordsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    delete_records_response::DeleteRecordsPartitionResult::default()
                                        .with_partition_index(p.partition_index)
                                        .with_low_watermark(-1)
                                        .with_error_code(Code::TopicAuthorizationFailed.code())
                                })
                                .collect(),
                        )
                })
                .collect();
            return refused(ResponseKind::DeleteRecords(
                DeleteRecordsResponse::default().with_topics(topics),
            ));
        }
        RequestKind::AlterConfigs(r) => {
            let responses = r
                .resources
                .iter()
                .map(|c| {
                    alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(resource_code(c.resource_type).code())
                        .with_resource_type(c.resource_type)
                        .with_resource_name(c.resource_name.clone())
                })
                .collect();
            return refused(ResponseKind::AlterConfigs(
                AlterConfigsResponse::default().with_responses(responses),
            ));
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            let responses = r
                .resources
                .iter()
                .map(|c| {
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(resource_code(c.resource_type).code())
                        .with_resource_type(c.resource_type)
                        .with_resource_name(c.resource_name.clone())
                })
                .collect();
            return refused(ResponseKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsResponse::default().with_responses(responses),
            ));
        }
        RequestKind::DescribeLogDirs(_) => {
            return refused(ResponseKind::DescribeLogDirs(
                DescribeLogDirsResponse::default().with_error_code(Code::ClusterAuthorizationFailed.code()),
            ));
        }
        // Nothing else is decoded (protocol::SUPPORTED); `handle` refuses what it does not know.
        _ => Patch::None,
    };
    Verdict::Serve(req, patch)
}

fn refused_fetch(resp: FetchResponse) -> Verdict {
    refused(ResponseKind::Fetch(resp))
}

fn patch_fetch(resp: &mut FetchResponse, refused: Vec<(TopicName, Vec<i32>)>) {
    for (name, parts) in refused {
        resp.responses.push(
            fetch_response::FetchableTopicResponse::default()
                .with_topic(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|p| {
                            fetch_response::PartitionData::default()
                                .with_partition_index(p)
                                .with_error_code(Code::TopicAuthorizationFailed.code())
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
}

fn patch_offset_commit(resp: &mut OffsetCommitResponse, refused: Vec<(TopicName, Vec<i32>)>, code: Code) {
    for (name, parts) in refused {
        resp.topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code.code())
                        })
                        .collect(),
                ),
        );
    }
}

impl Patch {
    /// Puts the refused parts back into `resp`, and drops from lists what the principal may
    /// not see.
    pub fn apply(self, b: &Broker, principal: &str, resp: &mut ResponseKind) {
        let sees = |a: Access<'_>| b.guard.may(principal, a);
        match (self, resp) {
            (Patch::None, _) => {}
            (Patch::Produce(refused), ResponseKind::Produce(r)) => {
                for (name, parts, code) in refused {
                    r.responses.push(
                        produce_response::TopicProduceResponse::default()
                            .with_name(name)
                            .with_partition_responses(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(p)
                                            .with_error_code(code.code())
                                            .with_base_offset(-1)
                                            .with_log_append_time_ms(-1)
                                            .with_log_start_offset(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Patch::Fetch(refused), ResponseKind::Fetch(r)) => patch_fetch(r, refused),
            (Patch::ListOffsets(refused), ResponseKind::ListOffsets(r)) => {
                for (name, parts) in refused {
                    r.topics.push(
                        list_offsets_response::ListOffsetsTopicResponse::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        list_offsets_response::ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p)
                                            .with_error_code(Code::TopicAuthorizationFailed.code())
                                            .with_timestamp(-1)
                                            .with_offset(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Patch::Metadata(refused), ResponseKind::Metadata(r)) => {
                r.topics
                    .retain(|t| t.name.as_ref().is_some_and(|n| sees(Access::Describe(n))));
                for name in refused {
                    r.topics.push(
                        metadata_response::MetadataResponseTopic::default()
                            .with_name(Some(name))
                            .with_error_code(Code::TopicAuthorizationFailed.code()),
                    );
                }
            }
            (Patch::OffsetCommit(refused), ResponseKind::OffsetCommit(r)) => {
                patch_offset_commit(r, refused, Code::TopicAuthorizationFailed)
            }
            (Patch::OffsetFetch(refused), ResponseKind::OffsetFetch(r)) => {
                for g in refused {
                    r.groups.push(
                        offset_fetch_response::OffsetFetchResponseGroup::default()
                            .with_group_id(g)
                            .with_error_code(Code::GroupAuthorizationFailed.code()),
                    );
                }
            }
            (Patch::FindCoordinator(refused), ResponseKind::FindCoordinator(r)) => {
                for (key, code) in refused {
                    r.coordinators.push(
                        find_coordinator_response::Coordinator::default()
                            .with_key(key)
                            .with_error_code(code.code())
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_message(Some(s("not authorized"))),
                    );
                }
            }
            (Patch::DescribeGroups(refused), ResponseKind::DescribeGroups(r)) => {
                for g in refused {
                    r.groups.push(
                        describe_groups_response::DescribedGroup::default()
                            .with_group_id(g)
                            .with_error_code(Code::GroupAuthorizationFailed.code()),
                    );
                }
            }
            (Patch::DeleteGroups(refused), ResponseKind::DeleteGroups(r)) => {
                for g in refused {
                    r.results.push(
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g)
                            .with_error_code(Code::GroupAuthorizationFailed.code()),
                    );
                }
            }
            (Patch::ListGroups, ResponseKind::ListGroups(r)) => {
                r.groups.retain(|g| sees(Access::Group(&g.group_id)));
            }
            (Patch::ListTransactions, ResponseKind::ListTransactions(r)) => {
                r.transaction_states
                    .retain(|t| sees(Access::Transaction(&t.transactional_id)));
            }
            (Patch::DescribeTransactions(refused), ResponseKind::DescribeTransactions(r)) => {
                for id in refused {
                    r.transaction_states.push(
                        describe_transactions_response::TransactionState::default()
                            .with_transactional_id(id)
                            .with_error_code(Code::TransactionalIdAuthorizationFailed.code())
                            .with_producer_id(ProducerId(-1))
                            .with_producer_epoch(-1),
                    );
                }
            }
            (Patch::CreateTopics(refused), ResponseKind::CreateTopics(r)) => {
                for name in refused {
                    r.topics.push(
                        create_topics_response::CreatableTopicResult::default()
                            .with_name(name)
                            .with_error_code(Code::TopicAuthorizationFailed.code())
                            .with_error_message(Some(s(
                                "not authorized: produce rights on the topic, or admin",
                            )))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1),
                    );
                }
            }
            (Patch::DescribeConfigs(refused), ResponseKind::DescribeConfigs(r)) => {
                for (resource_type, name, code) in refused {
                    r.results.push(
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_error_code(code.code())
                            .with_error_message(Some(s("not authorized")))
                            .with_resource_type(resource_type)
                            .with_resource_name(name),
                    );
                }
            }
            (patch, resp) => {
                tracing::error!(?patch, kind = ?std::mem::discriminant(resp), "an authorization patch for another response");
            }
        }
    }
}
