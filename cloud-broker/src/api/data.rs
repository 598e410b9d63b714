//! Produce, Fetch, ListOffsets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::oneshot;

use super::Broker;
use crate::errors::Code;
use crate::state::ProduceResult;

/// Per partition: its index and where its result arrives (None: refused before the writer).
type PartitionWaits = Vec<(i32, Option<oneshot::Receiver<ProduceResult>>)>;

/// A produce request handed to the writer, waiting for its results.
#[derive(Debug)]
pub struct PendingProduce {
    acks: i16,
    topics: Vec<(TopicName, PartitionWaits)>,
}

/// Produce, first half: hands every partition's record set to the writer, **in the order the
/// requests arrived on the connection** (the caller must call this in request order; Kafka
/// keeps per-partition order for pipelined requests). Cheap: no waiting.
pub fn produce_submit(b: &Broker, r: ProduceRequest) -> PendingProduce {
    let acks = r.acks;
    let mut topics = Vec::with_capacity(r.topic_data.len());
    for t in r.topic_data {
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let records = p.records.map(|r| r.to_vec()).unwrap_or_default();
            let rx = if !matches!(acks, -1..=1) || p.index < 0 {
                None
            } else {
                b.submit_produce(t.name.0.as_str(), p.index as u32, records, acks != 0)
            };
            parts.push((p.index, rx));
        }
        topics.push((t.name, parts));
    }
    PendingProduce { acks, topics }
}

/// Produce, second half: with acks=0 answers nothing; otherwise waits until the batches are
/// durable (group commit; acks=1 is served like acks=all on one node, where the leader's copy
/// is the durable one).
pub async fn produce_finish(p: PendingProduce) -> Option<ProduceResponse> {
    let acks = p.acks;
    if acks == 0 {
        return None;
    }
    let mut responses = Vec::with_capacity(p.topics.len());
    for (name, parts) in p.topics {
        let mut prs = Vec::with_capacity(parts.len());
        for (index, rx) in parts {
            let res = match rx {
                None if !matches!(acks, -1..=1) => ProduceResult {
                    code: Code::InvalidRequiredAcks,
                    base_offset: -1,
                    log_start: -1,
                },
                None => ProduceResult {
                    code: Code::KafkaStorageError,
                    base_offset: -1,
                    log_start: -1,
                },
                Some(rx) => rx.await.unwrap_or(ProduceResult {
                    code: Code::KafkaStorageError,
                    base_offset: -1,
                    log_start: -1,
                }),
            };
            prs.push(
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(res.code.code())
                    .with_base_offset(res.base_offset)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(res.log_start),
            );
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(prs),
        );
    }
    Some(ProduceResponse::default().with_responses(responses))
}

/// Reads one partition for a fetch: `(code, hw, log_start, records)`.
fn read_partition(
    b: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
) -> anyhow::Result<(Code, i64, i64, Bytes)> {
    let Some(t) = b.catalog.topic(topic) else {
        return Ok((Code::UnknownTopicOrPartition, -1, -1, Bytes::new()));
    };
    let Some(pv) = usize::try_from(partition).ok().and_then(|p| t.partitions.get(p)) else {
        return Ok((Code::UnknownTopicOrPartition, -1, -1, Bytes::new()));
    };
    if !b.serves(t.meta.id, partition as u32) {
        return Ok((Code::NotLeaderOrFollower, -1, -1, Bytes::new()));
    }
    let hw = pv.hw.load(Ordering::SeqCst);
    let start = pv.log_start.load(Ordering::SeqCst);
    if offset < start || offset > hw {
        return Ok((Code::OffsetOutOfRange, hw, start, Bytes::new()));
    }
    if offset == hw || max_bytes == 0 {
        return Ok((Code::None, hw, start, Bytes::new()));
    }
    match b.read(t.meta.id, partition as u32, offset, hw, max_bytes) {
        Ok(raw) => Ok((Code::None, hw, start, Bytes::from(raw))),
        Err(e) if e.is::<super::backend::DamagedData>() => {
            Ok((Code::KafkaStorageError, hw, start, Bytes::new()))
        }
        Err(e) => Err(e),
    }
}

/// Fetch with long polling: answers once `min_bytes` are there or `max_wait_ms` passed.
pub async fn fetch(b: &Arc<Broker>, r: FetchRequest, _version: i16) -> anyhow::Result<FetchResponse> {
    let deadline = Instant::now() + Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
    let max_total = if r.max_bytes > 0 {
        r.max_bytes as usize
    } else {
        50 << 20
    };
    loop {
        let appended = b.catalog.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let mut total = 0usize;
        let mut responses = Vec::with_capacity(r.topics.len());
        for t in &r.topics {
            let mut parts = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let room = (p.partition_max_bytes.max(0) as usize).min(max_total.saturating_sub(total));
                // Kafka returns at least one batch for the first partition even over the limits.
                let room = if total == 0 { room.max(1) } else { room };
                let (code, hw, start, records) = {
                    let b2 = b.clone();
                    let name = t.topic.0.to_string();
                    let (part, off) = (p.partition, p.fetch_offset);
                    tokio::task::spawn_blocking(move || read_partition(&b2, &name, part, off, room)).await??
                };
                total += records.len();
                parts.push(
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(code.code())
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(start)
                        .with_records(Some(records)),
                );
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(parts),
            );
        }
        let errors = responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        if total >= (r.min_bytes.max(1) as usize) || errors || Instant::now() >= deadline {
            return Ok(FetchResponse::default().with_responses(responses));
        }
        let _ = tokio::time::timeout_at(deadline.into(), appended).await;
    }
}

/// The first offset whose record timestamp is `>= ts` (the exact record, not just its batch).
fn offset_for_timestamp(
    b: &Broker,
    topic_id: u32,
    partition: u32,
    ts: i64,
    start: i64,
    hw: i64,
) -> anyhow::Result<Option<(i64, i64)>> {
    let mut from = start;
    while from < hw {
        let headers = b.headers(topic_id, partition, from, hw, 1024)?;
        let Some(last) = headers.last() else {
            return Ok(None);
        };
        for h in &headers {
            if h.max_timestamp < ts || h.base_offset >= hw {
                continue;
            }
            // The batch holds a record at or after `ts`: find which.
            let raw = b.read(topic_id, partition, h.base_offset, hw, 1)?;
            let mut buf = Bytes::from(raw);
            if let Ok(set) = RecordBatchDecoder::decode(&mut buf) {
                if let Some(rec) = set.records.iter().find(|r| r.timestamp >= ts) {
                    return Ok(Some((rec.offset, rec.timestamp)));
                }
            }
            return Ok(Some((h.base_offset, h.max_timestamp)));
        }
        from = last.last_offset() + 1;
    }
    Ok(None)
}

/// ListOffsets: earliest (-2), latest (-1), max timestamp (-3), or by timestamp.
pub async fn list_offsets(
    b: &Arc<Broker>,
    r: ListOffsetsRequest,
    _version: i16,
) -> anyhow::Result<ListOffsetsResponse> {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let out = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let view = b.catalog.topic(t.name.as_str());
            let pv = view.as_ref().and_then(|v| {
                usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| v.partitions.get(i))
            });
            let (Some(view), Some(pv)) = (view.as_ref(), pv) else {
                parts.push(out.with_error_code(Code::UnknownTopicOrPartition.code()));
                continue;
            };
            let hw = pv.hw.load(Ordering::SeqCst);
            let start = pv.log_start.load(Ordering::SeqCst);
            let (offset, ts) = match p.timestamp {
                -1 => (hw, -1),
                -2 => (start, -1),
                -3 => {
                    let (b2, id, part) = (b.clone(), view.meta.id, p.partition_index as u32);
                    let hs = tokio::task::spawn_blocking(move || b2.headers(id, part, start, hw, usize::MAX))
                        .await??;
                    hs.iter()
                        .max_by_key(|h| h.max_timestamp)
                        .map_or((hw, -1), |h| (h.last_offset(), h.max_timestamp))
                }
                ts => {
                    let (b2, id, part) = (b.clone(), view.meta.id, p.partition_index as u32);
                    let found = tokio::task::spawn_blocking(move || {
                        offset_for_timestamp(&b2, id, part, ts, start, hw)
                    })
                    .await??;
                    found.unwrap_or((hw, -1))
                }
            };
            parts.push(out.with_offset(offset).with_timestamp(ts));
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    Ok(ListOffsetsResponse::default().with_topics(topics))
}
