//! Kafka transactions: InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, TxnOffsetCommit. The coordinator of a transactional id is the
//! node leading the offsets log the id hashes to (FindCoordinator with key type 1 names it,
//! as for a group); the rules are [`crate::sm::txn`]. Fetch with `read_committed` and
//! ListOffsets then read below each partition's last stable offset.

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

use super::Broker;
use crate::errors::Code;
use crate::sm::txn::Caller;

/// Kafka answers `PRODUCER_FENCED` only to request versions that know it (KIP-588); older
/// ones get `INVALID_PRODUCER_EPOCH`.
fn fenced(code: Code, version: i16, knows_from: i16) -> i16 {
    match code {
        Code::ProducerFenced if version < knows_from => Code::InvalidProducerEpoch.code(),
        c => c.code(),
    }
}

/// Why a transactional id cannot be served here (`None`: it can).
fn refused(b: &Broker, id: &str) -> Option<Code> {
    if id.is_empty() {
        Some(Code::InvalidRequest)
    } else if !b.coordinates(id) {
        Some(Code::NotCoordinator)
    } else {
        None
    }
}

/// InitProducerId with a transactional id.
pub async fn init_producer_id(
    b: &Arc<Broker>,
    r: InitProducerIdRequest,
    version: i16,
    id: &str,
) -> InitProducerIdResponse {
    let out = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(c) = refused(b, id) {
        return out.with_error_code(c.code());
    }
    let expected = (r.producer_id.0 >= 0 && r.producer_epoch >= 0).then_some(Caller {
        producer_id: r.producer_id.0,
        epoch: r.producer_epoch,
    });
    let (code, pid, epoch) = b.txn_init(id, r.transaction_timeout_ms, expected).await;
    if code == Code::None {
        tracing::debug!(
            transactional_id = id,
            producer_id = pid,
            epoch,
            "transactional producer initialised"
        );
    }
    out.with_error_code(fenced(code, version, 4))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
}

/// AddPartitionsToTxn (v0–3: one transaction, from its producer).
pub async fn add_partitions(
    b: &Arc<Broker>,
    r: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let id = r.v3_and_below_transactional_id.to_string();
    let caller = Caller {
        producer_id: r.v3_and_below_producer_id.0,
        epoch: r.v3_and_below_producer_epoch,
    };
    // Every partition is checked first: one unknown fails the request, the rest are then
    // OPERATION_NOT_ATTEMPTED, as in Kafka.
    let mut wanted = Vec::new();
    let mut unknown = false;
    for t in &r.v3_and_below_topics {
        let known = b.catalog.topic(t.name.as_str());
        for p in &t.partitions {
            let ok = known
                .as_ref()
                .is_some_and(|k| *p >= 0 && (*p as u32) < k.meta.partitions);
            unknown |= !ok;
            wanted.push((t.name.clone(), *p, ok));
        }
    }
    let code = if let Some(c) = refused(b, &id) {
        c
    } else if unknown {
        Code::OperationNotAttempted
    } else {
        let partitions = wanted
            .iter()
            .map(|(t, p, _)| (t.to_string(), *p as u32))
            .collect();
        b.txn_add(&id, caller, partitions, Vec::new()).await
    };
    let mut by_topic: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (t, p, ok) in wanted {
        let c = if !ok && code == Code::OperationNotAttempted {
            Code::UnknownTopicOrPartition
        } else {
            code
        };
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(p)
            .with_partition_error_code(fenced(c, version, 2));
        match by_topic.iter_mut().find(|x| x.name == t) {
            Some(x) => x.results_by_partition.push(result),
            None => by_topic.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t)
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(by_topic)
}

/// AddOffsetsToTxn: the transaction will commit offsets of a group.
pub async fn add_offsets(
    b: &Arc<Broker>,
    r: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let id = r.transactional_id.to_string();
    let code = match refused(b, &id) {
        Some(c) => c,
        None if r.group_id.is_empty() => Code::InvalidGroupId,
        None => {
            let caller = Caller {
                producer_id: r.producer_id.0,
                epoch: r.producer_epoch,
            };
            b.txn_add(&id, caller, Vec::new(), vec![r.group_id.to_string()])
                .await
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(fenced(code, version, 2))
}

/// EndTxn: commit or abort. Answered once every marker is written and the groups' offsets
/// are committed (or dropped).
pub async fn end(b: &Arc<Broker>, r: EndTxnRequest, version: i16) -> EndTxnResponse {
    let id = r.transactional_id.to_string();
    let code = match refused(b, &id) {
        Some(c) => c,
        None => {
            let caller = Caller {
                producer_id: r.producer_id.0,
                epoch: r.producer_epoch,
            };
            let code = b.txn_end(&id, caller, r.committed).await;
            if code == Code::None {
                tracing::debug!(transactional_id = %id, committed = r.committed, "transaction ended");
            }
            code
        }
    };
    EndTxnResponse::default().with_error_code(fenced(code, version, 2))
}

/// TxnOffsetCommit, on the group's coordinator: offsets pending until the transaction ends.
pub async fn offset_commit(
    b: &Arc<Broker>,
    r: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group = r.group_id.to_string();
    let check = if group.is_empty() {
        Code::InvalidGroupId
    } else if !b.coordinates(&group) {
        Code::NotCoordinator
    } else if r.generation_id >= 0 || !r.member_id.is_empty() {
        // v3 carries the member: a zombie of an older generation is fenced (KIP-447).
        b.groups
            .lock()
            .core
            .commit(Instant::now(), &group, r.member_id.as_str(), r.generation_id)
    } else {
        Code::None
    };
    let mut codes = Vec::new();
    let mut entries = Vec::new();
    for t in &r.topics {
        let known = b.catalog.topic(t.name.as_str());
        for p in &t.partitions {
            let ok = known
                .as_ref()
                .is_some_and(|k| p.partition_index >= 0 && (p.partition_index as u32) < k.meta.partitions);
            codes.push((t.name.clone(), p.partition_index, ok));
            if ok {
                entries.push((
                    t.name.to_string(),
                    p.partition_index as u32,
                    p.committed_offset,
                    p.committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                ));
            }
        }
    }
    let written = if check != Code::None {
        check
    } else if entries.is_empty() {
        Code::None
    } else {
        b.txn_offsets(&group, r.producer_id.0, entries).await
    };
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = Vec::new();
    for (t, p, ok) in codes {
        let c = if ok {
            written
        } else {
            Code::UnknownTopicOrPartition
        };
        let part = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(p)
            .with_error_code(fenced(c, version, 3));
        match topics.iter_mut().find(|x| x.name == t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t)
                    .with_partitions(vec![part]),
            ),
        }
    }
    TxnOffsetCommitResponse::default().with_topics(topics)
}

/// Kafka's names of the transaction states a ListTransactions filter may give.
const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

/// ListTransactions: the transactional ids this node coordinates, filtered by state, producer
/// id and (v1) how long they have been running.
pub async fn list(b: &Arc<Broker>, r: ListTransactionsRequest) -> ListTransactionsResponse {
    use kafka_protocol::messages::list_transactions_response::TransactionState;
    let unknown: Vec<_> = r
        .state_filters
        .iter()
        .filter(|f| !STATES.contains(&f.as_str()))
        .cloned()
        .collect();
    let now = foundation::time::now_ms();
    let states = b
        .txn_list()
        .await
        .into_iter()
        .filter(|(_, s)| {
            r.state_filters.is_empty() || r.state_filters.iter().any(|f| f.as_str() == s.status.name())
        })
        .filter(|(_, s)| {
            r.producer_id_filters.is_empty() || r.producer_id_filters.contains(&ProducerId(s.producer_id))
        })
        .filter(|(_, s)| {
            r.duration_filter < 0
                || (s.status == crate::sm::txn::Status::Ongoing && now - s.started_ms >= r.duration_filter)
        })
        .map(|(id, s)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(kafka_protocol::protocol::StrBytes::from_string(
                    id,
                )))
                .with_producer_id(ProducerId(s.producer_id))
                .with_transaction_state(kafka_protocol::protocol::StrBytes::from_static_str(
                    s.status.name(),
                ))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

/// DescribeTransactions: each transactional id's state, on its coordinator.
pub async fn describe(b: &Arc<Broker>, r: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
    let all = b.txn_list().await;
    let states = r
        .transactional_ids
        .into_iter()
        .map(|id| {
            let out = TransactionState::default().with_transactional_id(id.clone());
            if !b.coordinates(id.as_str()) {
                return out.with_error_code(Code::NotCoordinator.code());
            }
            let Some((_, s)) = all.iter().find(|(x, _)| x.as_str() == id.as_str()) else {
                return out.with_error_code(Code::TransactionalIdNotFound.code());
            };
            let mut topics: Vec<TopicData> = Vec::new();
            for (t, p) in &s.partitions {
                match topics.iter_mut().find(|x| x.topic.as_str() == t) {
                    Some(x) => x.partitions.push(*p as i32),
                    None => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_string(
                                t.clone(),
                            )))
                            .with_partitions(vec![*p as i32]),
                    ),
                }
            }
            out.with_transaction_state(kafka_protocol::protocol::StrBytes::from_static_str(
                s.status.name(),
            ))
            .with_transaction_timeout_ms(s.timeout_ms)
            .with_transaction_start_time_ms(if s.status == crate::sm::txn::Status::Ongoing {
                s.started_ms
            } else {
                -1
            })
            .with_producer_id(ProducerId(s.producer_id))
            .with_producer_epoch(s.epoch)
            .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
