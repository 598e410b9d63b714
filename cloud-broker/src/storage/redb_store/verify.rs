//! `cloud-broker storage verify [--quarantine]`: every stored row and batch checked, damage
//! listed with what it costs, and put aside so the broker goes on.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use tracing::warn;

use super::{
    check_batch, keys, mark_key, missing_ok, open_row, rebuild_head, unseal, RedbStorage, BATCHES, HEADS,
    META, OFFSETS, PRODUCERS, QUARANTINE, TOPICS, TXNS, TXN_OFFSETS, TXN_STATES,
};
use crate::batch;
use crate::storage::{CommittedOffset, PartitionHead, ProducerState, StoreError, TopicMeta};

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

/// One damaged item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedItem {
    /// Its name in the store (and in the `quarantine` table once put aside), e.g.
    /// `batches/3/0/1200`, `heads/3/0`, `producers/3/0/17`, `offsets/group/topic/0`, `meta/k`.
    pub key: String,
    /// What it is, and what putting it aside costs.
    pub what: String,
    /// The topic it belongs to, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The partition, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The offsets of the records it held, `[from, to)`, for a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<[i64; 2]>,
    /// Why it failed.
    pub error: String,
}

/// What a scan of the whole store found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Topic rows read.
    pub topics: u64,
    /// Partition heads read.
    pub partitions: u64,
    /// Batches read.
    pub batches: u64,
    /// Bytes of batches read.
    pub bytes: u64,
    /// Idempotent-producer states read.
    pub producers: u64,
    /// Committed group offsets read.
    pub offsets: u64,
    /// Metadata values read.
    pub meta: u64,
    /// Transaction rows read (partitions' transactions, transactional ids' states, pending
    /// group offsets).
    pub transactions: u64,
    /// What is damaged.
    pub damaged: Vec<DamagedItem>,
    /// Items already in the quarantine table.
    pub quarantined: Vec<String>,
    /// What redb's own check of its pages found, if they are damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_damage: Option<String>,
}

impl VerifyReport {
    /// Whether nothing damaged was found.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.page_damage.is_none()
    }
}

fn item(
    key: String,
    what: String,
    topic: Option<&String>,
    partition: Option<u32>,
    error: String,
) -> DamagedItem {
    DamagedItem {
        key,
        what,
        topic: topic.cloned(),
        partition,
        offsets: None,
        error,
    }
}

/// The scan, over tables of a read or a write transaction.
fn scan(
    topics_t: &impl ReadableTable<u32, &'static [u8]>,
    heads_t: &impl ReadableTable<(u32, u32), &'static [u8]>,
    batches_t: &impl ReadableTable<(u32, u32, i64), &'static [u8]>,
    producers_t: &impl ReadableTable<(u32, u32, i64), &'static [u8]>,
    offsets_t: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
    meta_t: &impl ReadableTable<&'static str, &'static [u8]>,
    marks: &BTreeMap<u64, u64>,
) -> Result<VerifyReport, StoreError> {
    let mut r = VerifyReport::default();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for e in topics_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let id = k.value();
        r.topics += 1;
        match open_row::<TopicMeta>(&keys::topic(id), v.value(), &format!("topic row #{id}")) {
            Ok(t) => drop(names.insert(id, t.name)),
            Err(e) => r.damaged.push(item(
                format!("topics/{id}"),
                format!("the row of topic #{id} (the topic is left out; its batches stay)"),
                None,
                None,
                e,
            )),
        }
    }
    let mut heads: BTreeMap<(u32, u32), Option<PartitionHead>> = BTreeMap::new();
    for e in heads_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let (t, p) = k.value();
        r.partitions += 1;
        let what = format!("head of topic #{t} partition {p}");
        match open_row::<PartitionHead>(&keys::head(t, p), v.value(), &what) {
            Ok(h) => drop(heads.insert((t, p), Some(h))),
            Err(e) => {
                heads.insert((t, p), None);
                r.damaged.push(item(
                    format!("heads/{t}/{p}"),
                    format!(
                        "the offsets of {} partition {p} (rebuilt from its batches)",
                        topic_name(&names, t)
                    ),
                    names.get(&t),
                    Some(p),
                    e,
                ));
            }
        }
    }
    for (&(t, p), head) in &heads {
        let mut bad_here = false;
        let mut rows = batches_t
            .range((t, p, i64::MIN)..=(t, p, i64::MAX))
            .map_err(io)?
            .peekable();
        while let Some(e) = rows.next() {
            let (k, v) = e.map_err(io)?;
            let base = k.value().2;
            r.batches += 1;
            r.bytes += v.value().len() as u64;
            let checked = check_batch(base, v.value()).and_then(|_| match batch::check_stored(v.value()) {
                (_, None) => Ok(()),
                _ => Err(format!("batch at offset {base}: CRC-32C mismatch")),
            });
            if let Err(e) = checked {
                bad_here = true;
                let to = match rows.peek() {
                    Some(Ok((k, _))) => k.value().2,
                    _ => head.map_or(base + 1, |h| h.next_offset.max(base + 1)),
                };
                r.damaged.push(DamagedItem {
                    key: format!("batches/{t}/{p}/{base}"),
                    what: format!(
                        "the records of {} partition {p} at offsets {base}..{to}",
                        topic_name(&names, t)
                    ),
                    topic: names.get(&t).cloned(),
                    partition: Some(p),
                    offsets: Some([base, to]),
                    error: e,
                });
            }
        }
        if let (Some(h), false) = (head, bad_here) {
            let floor = marks.get(&mark_key(t, p)).map_or(0, |&m| m as i64);
            let rb = rebuild_head(batches_t, t, p, 0)?;
            let agrees = h.bytes == rb.bytes
                && h.next_offset >= rb.next_offset
                && h.next_offset >= floor
                && (rb.bytes == 0 || h.log_start <= rb.log_start);
            if !agrees {
                r.damaged.push(item(
                    format!("heads/{t}/{p}"),
                    format!(
                        "the offsets of {} partition {p} (rebuilt from its batches)",
                        topic_name(&names, t)
                    ),
                    names.get(&t),
                    Some(p),
                    format!(
                        "head says offsets {}..{} bytes {}, the batches hold offsets {}..{} bytes {}",
                        h.log_start, h.next_offset, h.bytes, rb.log_start, rb.next_offset, rb.bytes
                    ),
                ));
            }
        }
    }
    for e in producers_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let (t, p, pid) = k.value();
        r.producers += 1;
        let what = format!("producer {pid} state on topic #{t} partition {p}");
        if let Err(e) = open_row::<ProducerState>(&keys::producer(t, p, pid), v.value(), &what) {
            r.damaged.push(item(
                format!("producers/{t}/{p}/{pid}"),
                format!("idempotent producer {pid}'s state on {} partition {p} (it is fenced into a new sequence)", topic_name(&names, t)),
                names.get(&t),
                Some(p),
                e,
            ));
        }
    }
    for e in offsets_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let (g, topic, p) = k.value();
        r.offsets += 1;
        let what = format!("group {g:?} offset of {topic} partition {p}");
        if let Err(e) = open_row::<CommittedOffset>(&keys::offset(g, topic, p), v.value(), &what) {
            r.damaged.push(item(
                format!("offsets/{g}/{topic}/{p}"),
                format!("group {g:?}'s committed offset of {topic} partition {p} (its consumers reset)"),
                Some(&topic.to_string()),
                Some(p),
                e,
            ));
        }
    }
    for e in meta_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        r.meta += 1;
        if unseal(k.value().as_bytes(), v.value()).is_none() {
            r.damaged.push(item(
                format!("meta/{}", k.value()),
                format!("the metadata value {:?}", k.value()),
                None,
                None,
                "checksum mismatch".into(),
            ));
        }
    }
    Ok(r)
}

/// What the quarantine table holds.
fn quarantined(q: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<String>, StoreError> {
    q.iter()
        .map_err(io)?
        .map(|e| e.map(|(k, _)| k.value().to_string()).map_err(io))
        .collect()
}

fn topic_name(names: &BTreeMap<u32, String>, t: u32) -> String {
    names
        .get(&t)
        .map_or_else(|| format!("topic #{t}"), |n| format!("{n:?}"))
}

/// The transaction tables' rows, checked like the others (added to `r`).
fn scan_txns(
    txns_t: &impl ReadableTable<(u32, u32), &'static [u8]>,
    states_t: &impl ReadableTable<&'static str, &'static [u8]>,
    offsets_t: &impl ReadableTable<(&'static str, i64), &'static [u8]>,
    r: &mut VerifyReport,
) -> Result<(), StoreError> {
    for e in txns_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let (t, p) = k.value();
        r.transactions += 1;
        let what = format!("transactions of topic #{t} partition {p}");
        if let Err(e) = open_row::<crate::sm::partition::TxnIndex>(&keys::txns(t, p), v.value(), &what) {
            r.damaged.push(item(
                format!("txns/{t}/{p}"),
                format!("the open and aborted transactions of topic #{t} partition {p} (read_committed consumers may read aborted records)"),
                None,
                Some(p),
                e,
            ));
        }
    }
    for e in states_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let id = k.value();
        r.transactions += 1;
        let what = format!("transactional id {id:?}'s state");
        if let Err(e) = open_row::<crate::sm::txn::TxnState>(&keys::txn_state(id), v.value(), &what) {
            r.damaged.push(item(
                format!("txn_states/{id}"),
                format!("transactional id {id:?}'s state (its producer is fenced at its next request)"),
                None,
                None,
                e,
            ));
        }
    }
    for e in offsets_t.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        let (g, pid) = k.value();
        r.transactions += 1;
        let what = format!("group {g:?} offsets pending in producer {pid}'s transaction");
        type List = Vec<((String, u32), CommittedOffset)>;
        if let Err(e) = open_row::<List>(&keys::txn_offsets(g, pid), v.value(), &what) {
            r.damaged.push(item(
                format!("txn_offsets/{pid}/{g}"),
                format!(
                    "group {g:?}'s offsets pending in producer {pid}'s transaction (it commits none of them)"
                ),
                None,
                None,
                e,
            ));
        }
    }
    Ok(())
}

impl RedbStorage {
    /// Reads every row and batch and checks it (checksums, decoding, each head against its
    /// batches), then runs redb's check of its pages. Changes nothing.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let marks = self.marks.marks();
        let mut r = self.with_db(|db| {
            let tx = db.begin_read().map_err(io)?;
            let mut r = scan(
                &tx.open_table(TOPICS).map_err(io)?,
                &tx.open_table(HEADS).map_err(io)?,
                &tx.open_table(BATCHES).map_err(io)?,
                &tx.open_table(PRODUCERS).map_err(io)?,
                &tx.open_table(OFFSETS).map_err(io)?,
                &tx.open_table(META).map_err(io)?,
                &marks,
            )?;
            if let (Some(a), Some(b), Some(c)) = (
                missing_ok(tx.open_table(TXNS))?,
                missing_ok(tx.open_table(TXN_STATES))?,
                missing_ok(tx.open_table(TXN_OFFSETS))?,
            ) {
                scan_txns(&a, &b, &c, &mut r)?;
            }
            r.quarantined = quarantined(&tx.open_table(QUARANTINE).map_err(io)?)?;
            Ok(r)
        })?;
        r.page_damage = self.db.check_pages().err();
        Ok(r)
    }

    /// [`RedbStorage::verify`], then, in one transaction, moves every damaged item to the
    /// `quarantine` table (its bytes as found) and rebuilds the heads that counted it: reads
    /// go on past the hole, offsets are never reused. For a stopped broker (its state is loaded
    /// at start). Returns what was found and put aside.
    pub fn quarantine(&self) -> Result<VerifyReport, StoreError> {
        let marks = self.marks.marks();
        let mut report = self.with_db(|db| {
            let tx = db.begin_write().map_err(io)?;
            let mut report;
            {
                let mut topics = tx.open_table(TOPICS).map_err(io)?;
                let mut heads = tx.open_table(HEADS).map_err(io)?;
                let mut batches = tx.open_table(BATCHES).map_err(io)?;
                let mut producers = tx.open_table(PRODUCERS).map_err(io)?;
                let mut offsets = tx.open_table(OFFSETS).map_err(io)?;
                let mut meta = tx.open_table(META).map_err(io)?;
                let mut q = tx.open_table(QUARANTINE).map_err(io)?;
                let mut txns = tx.open_table(TXNS).map_err(io)?;
                let mut txn_states = tx.open_table(TXN_STATES).map_err(io)?;
                let mut txn_offsets = tx.open_table(TXN_OFFSETS).map_err(io)?;
                report = scan(&topics, &heads, &batches, &producers, &offsets, &meta, &marks)?;
                scan_txns(&txns, &txn_states, &txn_offsets, &mut report)?;
                report.quarantined = quarantined(&q)?;
                let mut touched = std::collections::BTreeSet::new();
                for d in &report.damaged {
                    let f: Vec<&str> = d.key.split('/').collect();
                    let n = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
                    let bytes = match f[0] {
                        "batches" => {
                            touched.insert((n(1) as u32, n(2) as u32));
                            let v = batches
                                .remove((n(1) as u32, n(2) as u32, n(3)))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "heads" => {
                            touched.insert((n(1) as u32, n(2) as u32));
                            let v = heads
                                .get((n(1) as u32, n(2) as u32))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "producers" => {
                            let v = producers
                                .remove((n(1) as u32, n(2) as u32, n(3)))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "offsets" => {
                            // Group and topic names may hold '/': the partition is last.
                            let rest = &d.key["offsets/".len()..];
                            let (gt, p) = rest.rsplit_once('/').unwrap_or((rest, "0"));
                            let topic = d.topic.clone().unwrap_or_default();
                            let g = gt.strip_suffix(&format!("/{topic}")).unwrap_or(gt);
                            let p = p.parse::<u32>().unwrap_or(0);
                            let v = offsets
                                .remove((g, topic.as_str(), p))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "meta" => {
                            let k = &d.key["meta/".len()..];
                            let v = meta.remove(k).map_err(io)?.map(|v| v.value().to_vec());
                            v
                        }
                        "txns" => {
                            let v = txns
                                .remove((n(1) as u32, n(2) as u32))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "txn_states" => {
                            let id = &d.key["txn_states/".len()..];
                            let v = txn_states.remove(id).map_err(io)?.map(|v| v.value().to_vec());
                            v
                        }
                        "txn_offsets" => {
                            // The producer id first: a group name may hold '/'.
                            let rest = &d.key["txn_offsets/".len()..];
                            let (pid, g) = rest.split_once('/').unwrap_or((rest, ""));
                            let v = txn_offsets
                                .remove((g, pid.parse::<i64>().unwrap_or(-1)))
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        "topics" => {
                            let v = topics
                                .remove(n(1) as u32)
                                .map_err(io)?
                                .map(|v| v.value().to_vec());
                            v
                        }
                        _ => None,
                    };
                    if let Some(b) = bytes {
                        q.insert(d.key.as_str(), b.as_slice()).map_err(io)?;
                    }
                    warn!(item = %d.key, what = %d.what, error = %d.error, "quarantined");
                }
                for (t, p) in touched {
                    let old = heads
                        .get((t, p))
                        .map_err(io)?
                        .and_then(|v| open_row::<PartitionHead>(&keys::head(t, p), v.value(), "").ok());
                    let floor = old
                        .map_or(0, |h| h.next_offset)
                        .max(marks.get(&mark_key(t, p)).map_or(0, |&m| m as i64));
                    let h = rebuild_head(&batches, t, p, floor)?;
                    let sealed = super::seal(&keys::head(t, p), &super::json(&h)?);
                    heads.insert((t, p), sealed.as_slice()).map_err(io)?;
                }
            }
            tx.commit().map_err(io)?;
            Ok(report)
        })?;
        self.damage.lock().unwrap_or_else(|e| e.into_inner()).clear();
        report.page_damage = self.db.check_pages().err();
        Ok(report)
    }
}
