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
    /// Per partition in order: records and batch bytes, counted once acknowledged.
    sizes: Vec<(u64, u64)>,
    stats: Option<std::sync::Arc<crate::api::stats::Stats>>,
}

/// Produce, first half: hands every partition's record set to the writer, **in the order the
/// requests arrived on the connection** (the caller must call this in request order; Kafka
/// keeps per-partition order for pipelined requests). Cheap: no waiting.
pub fn produce_submit(b: &Broker, r: ProduceRequest) -> PendingProduce {
    let acks = r.acks;
    let mut topics = Vec::with_capacity(r.topic_data.len());
    let mut sizes = Vec::new();
    for t in r.topic_data {
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let records = p.records.map(|r| r.to_vec()).unwrap_or_default();
            let n: i64 = crate::batch::iter(&records)
                .map(|(h, _)| i64::from(h.record_count.max(0)))
                .sum();
            sizes.push((n as u64, records.len() as u64));
            let rx = if !matches!(acks, -1..=1) || p.index < 0 {
                None
            } else {
                b.submit_produce(t.name.0.as_str(), p.index as u32, records, acks != 0)
            };
            parts.push((p.index, rx));
        }
        topics.push((t.name, parts));
    }
    PendingProduce {
        acks,
        topics,
        sizes,
        stats: Some(b.stats.clone()),
    }
}

/// Produce, second half: with acks=0 answers nothing; otherwise waits until the batches are
/// durable (group commit; acks=1 is served like acks=all on one node, where the leader's copy
/// is the durable one).
pub async fn produce_finish(p: PendingProduce) -> Option<ProduceResponse> {
    let acks = p.acks;
    let mut sizes = p.sizes.into_iter();
    if acks == 0 {
        return None;
    }
    let mut responses = Vec::with_capacity(p.topics.len());
    for (name, parts) in p.topics {
        let mut prs = Vec::with_capacity(parts.len());
        for (index, rx) in parts {
            let (n, bytes) = sizes.next().unwrap_or_default();
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
            if res.code == Code::None {
                if let Some(st) = &p.stats {
                    st.produced_records
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    st.produced_bytes
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                }
            }
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

/// What a fetch read of one partition.
struct Read {
    code: Code,
    hw: i64,
    lso: i64,
    log_start: i64,
    records: Bytes,
    /// For `read_committed`: the aborted transactions reaching into what was read.
    aborted: Option<Vec<(i64, i64)>>,
}

impl Read {
    fn error(code: Code, hw: i64, log_start: i64) -> Read {
        Read {
            code,
            hw,
            lso: hw,
            log_start,
            records: Bytes::new(),
            aborted: None,
        }
    }
}

/// Reads one partition for a fetch: below the high watermark, or (`committed`, Kafka's
/// `read_committed`) below the last stable offset, with the aborted transactions in the range.
fn read_partition(
    b: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    committed: bool,
) -> anyhow::Result<Read> {
    let Some(t) = b.catalog.topic(topic) else {
        return Ok(Read::error(Code::UnknownTopicOrPartition, -1, -1));
    };
    let Some(pv) = usize::try_from(partition).ok().and_then(|p| t.partitions.get(p)) else {
        return Ok(Read::error(Code::UnknownTopicOrPartition, -1, -1));
    };
    if !b.serves(t.meta.id, partition as u32) {
        return Ok(Read::error(Code::NotLeaderOrFollower, -1, -1));
    }
    let hw = pv.hw.load(Ordering::SeqCst);
    let start = pv.log_start.load(Ordering::SeqCst);
    let lso = pv.lso.load(Ordering::SeqCst).clamp(start, hw);
    if offset < start || offset > hw {
        return Ok(Read::error(Code::OffsetOutOfRange, hw, start));
    }
    let end = if committed { lso } else { hw };
    let mut out = Read {
        code: Code::None,
        hw,
        lso,
        log_start: start,
        records: Bytes::new(),
        aborted: committed.then(Vec::new),
    };
    if offset >= end || max_bytes == 0 {
        return Ok(out);
    }
    match b.read(t.meta.id, partition as u32, offset, end, max_bytes) {
        Ok(raw) => {
            if committed {
                let upper = crate::batch::iter(&raw)
                    .last()
                    .map_or(end, |(h, _)| h.last_offset() + 1);
                out.aborted = Some(pv.aborted_between(offset, upper));
            }
            out.records = Bytes::from(raw);
            Ok(out)
        }
        Err(e) if e.is::<super::backend::DamagedData>() => {
            Ok(Read::error(Code::KafkaStorageError, hw, start))
        }
        Err(e) => Err(e),
    }
}

/// Fetch with long polling: answers once `min_bytes` are there or `max_wait_ms` passed.
pub async fn fetch(b: &Arc<Broker>, r: FetchRequest, _version: i16) -> anyhow::Result<FetchResponse> {
    let deadline = Instant::now() + Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
    // Kafka's isolation levels: 0 read_uncommitted, 1 read_committed.
    let committed = r.isolation_level == 1;
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
                let read = {
                    let b2 = b.clone();
                    let name = t.topic.0.to_string();
                    let (part, off) = (p.partition, p.fetch_offset);
                    tokio::task::spawn_blocking(move || {
                        read_partition(&b2, &name, part, off, room, committed)
                    })
                    .await??
                };
                total += read.records.len();
                parts.push(
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(read.code.code())
                        .with_high_watermark(read.hw)
                        .with_last_stable_offset(read.lso)
                        .with_log_start_offset(read.log_start)
                        .with_aborted_transactions(read.aborted.map(|a| {
                            a.into_iter()
                                .map(|(pid, first)| {
                                    fetch_response::AbortedTransaction::default()
                                        .with_producer_id(ProducerId(pid))
                                        .with_first_offset(first)
                                })
                                .collect()
                        }))
                        .with_records(Some(read.records)),
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
            b.stats
                .fetched_bytes
                .fetch_add(total as u64, std::sync::atomic::Ordering::Relaxed);
            return Ok(FetchResponse::default().with_responses(responses));
        }
        let _ = tokio::time::timeout_at(deadline.into(), appended).await;
    }
}

/// `(offset, timestamp)` of every record of the batch holding `at`, at or after `from`
/// (`None`: the batch does not decode, e.g. a compression this build cannot read).
fn records_of(
    b: &Broker,
    topic_id: u32,
    partition: u32,
    at: i64,
    from: i64,
    hw: i64,
) -> anyhow::Result<Option<Vec<(i64, i64)>>> {
    let raw = b.read(topic_id, partition, at, hw, 1)?;
    let mut buf = Bytes::from(raw);
    Ok(RecordBatchDecoder::decode(&mut buf).ok().map(|set| {
        set.records
            .iter()
            .filter(|r| r.offset >= from && r.offset < hw)
            .map(|r| (r.offset, r.timestamp))
            .collect()
    }))
}

/// Kafka's answer for a timestamp `ts >= 0`: the first record in offset order, at or after
/// the log start, whose timestamp is `>= ts` (timestamps need not grow with offsets), as
/// `(offset, timestamp)`; `None` when there is none (Kafka then answers offset -1).
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
            // The batch holds a record at or after `ts`: find which (it may be one below
            // the log start, when DeleteRecords cut inside this batch: then look further).
            match records_of(b, topic_id, partition, h.base_offset, start, hw)? {
                Some(recs) => {
                    if let Some(found) = recs.into_iter().find(|r| r.1 >= ts) {
                        return Ok(Some(found));
                    }
                }
                None => return Ok(Some((h.base_offset.max(start), h.max_timestamp))),
            }
        }
        from = last.last_offset() + 1;
    }
    Ok(None)
}

/// Kafka's answer for `MAX_TIMESTAMP` (-3): the first record holding the largest timestamp
/// of the partition (at or after the log start), as `(offset, timestamp)`; `None` on an
/// empty partition.
fn max_timestamp(
    b: &Broker,
    topic_id: u32,
    partition: u32,
    start: i64,
    hw: i64,
) -> anyhow::Result<Option<(i64, i64)>> {
    // The batch with the largest timestamp (the first of equals); a batch starting below the
    // log start counts only its records from there.
    let mut best: Option<(i64, i64)> = None; // (timestamp, base offset)
    let mut from = start;
    while from < hw {
        let headers = b.headers(topic_id, partition, from, hw, 1024)?;
        let Some(last) = headers.last() else { break };
        for h in &headers {
            let top = if h.base_offset < start {
                match records_of(b, topic_id, partition, h.base_offset, start, hw)? {
                    Some(recs) => match recs.iter().map(|r| r.1).max() {
                        Some(t) => t,
                        None => continue,
                    },
                    None => h.max_timestamp,
                }
            } else {
                h.max_timestamp
            };
            if best.is_none_or(|(t, _)| top > t) {
                best = Some((top, h.base_offset));
            }
        }
        from = last.last_offset() + 1;
    }
    let Some((top, base)) = best else {
        return Ok(None);
    };
    Ok(Some(match records_of(b, topic_id, partition, base, start, hw)? {
        Some(recs) => recs
            .into_iter()
            .find(|r| r.1 == top)
            .unwrap_or((base.max(start), top)),
        None => (base.max(start), top),
    }))
}

/// `EARLIEST`.
const EARLIEST: i64 = -2;
/// `LATEST`.
const LATEST: i64 = -1;
/// `MAX_TIMESTAMP` (ListOffsets v7+).
const MAX_TIMESTAMP: i64 = -3;
/// `EARLIEST_LOCAL_TIMESTAMP` (v8+).
const EARLIEST_LOCAL: i64 = -4;
/// `LATEST_TIERED_TIMESTAMP` (v9+).
const LATEST_TIERED: i64 = -5;

/// ListOffsets, as Kafka answers it: earliest (-2) is the log start and latest (-1) the high
/// watermark (also the last stable offset: there are no open transactions), both with
/// timestamp -1; max timestamp (-3) and a timestamp give the exact record, or offset and
/// timestamp -1 when there is none (an empty partition, or a time after the last record).
/// Only a partition's leader answers (`NOT_LEADER_OR_FOLLOWER` elsewhere), as clients send
/// it there. The leader epoch is not tracked per offset: it is answered -1 (unknown).
pub async fn list_offsets(
    b: &Arc<Broker>,
    r: ListOffsetsRequest,
    _version: i16,
) -> anyhow::Result<ListOffsetsResponse> {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let out = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_leader_epoch(-1);
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
            let (id, part) = (view.meta.id, p.partition_index as u32);
            if !b.serves(id, part) {
                parts.push(out.with_error_code(Code::NotLeaderOrFollower.code()));
                continue;
            }
            let hw = pv.hw.load(Ordering::SeqCst);
            let start = pv.log_start.load(Ordering::SeqCst);
            // read_committed asks for the last stable offset as the latest.
            let latest = if r.isolation_level == 1 {
                pv.lso.load(Ordering::SeqCst).clamp(start, hw)
            } else {
                hw
            };
            let found = match p.timestamp {
                LATEST => Some((latest, -1)),
                EARLIEST => Some((start, -1)),
                MAX_TIMESTAMP => {
                    let b2 = b.clone();
                    tokio::task::spawn_blocking(move || max_timestamp(&b2, id, part, start, hw)).await??
                }
                // Without tiered storage the local log start is the log start, and nothing
                // is tiered (v8 and v9 ask these; Kafka answers them so at any version).
                EARLIEST_LOCAL => Some((start, -1)),
                LATEST_TIERED => None,
                // Any other time, negative ones too, as Kafka: the first record at or after it.
                ts => {
                    let b2 = b.clone();
                    tokio::task::spawn_blocking(move || offset_for_timestamp(&b2, id, part, ts, start, hw))
                        .await??
                }
            };
            let (offset, ts) = found.unwrap_or((-1, -1));
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

/// DeleteRecords: each partition's log start moves up to the offset given (-1: the high
/// watermark), on the partition's leader; the answer is the log start after. Batches wholly
/// below it are removed; records below it in the batch holding it are no longer served. A
/// topic whose `cleanup.policy` is compact only refuses (`POLICY_VIOLATION`), as in Kafka.
pub async fn delete_records(b: &Arc<Broker>, r: DeleteRecordsRequest) -> DeleteRecordsResponse {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let view = b.catalog.topic(t.name.as_str());
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let out = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let (code, low) = match &view {
                Some(v) if p.partition_index >= 0 && (p.partition_index as u32) < v.meta.partitions => {
                    let part = p.partition_index as u32;
                    if v.meta.config.compact {
                        (Code::PolicyViolation, -1)
                    } else if !b.serves(v.meta.id, part) {
                        (Code::NotLeaderOrFollower, -1)
                    } else {
                        b.delete_records(t.name.as_str(), part, p.offset).await
                    }
                }
                _ => (Code::UnknownTopicOrPartition, -1),
            };
            if code == Code::None {
                tracing::info!(topic = %t.name.as_str(), partition = p.partition_index, log_start = low, "records deleted");
            }
            parts.push(out.with_error_code(code.code()).with_low_watermark(low));
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests;
