//! Retention and compaction decisions, shared by every store so they cannot disagree.

use std::collections::HashMap;

use super::chunk::{self, ChunkHeader};
use super::{LogError, NewRecord, Record, RetentionReport, TopicSpec};

/// A chunk as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInfo {
    /// Base offset (the chunk's key).
    pub base: u64,
    /// Its header.
    pub header: ChunkHeader,
    /// Encoded size in bytes.
    pub bytes: u64,
}

/// Which chunks retention removes from a partition holding `total_bytes`, given its chunks
/// oldest first (`chunks` may be lazy: it is read only as far as something is removed, plus
/// one). The newest chunk always stays, so a partition never loses its last record to
/// retention. Returns the base offsets to remove, oldest first.
pub fn retention<I>(
    spec: &TopicSpec,
    now_ms: i64,
    chunks: I,
    total_bytes: u64,
) -> Result<(Vec<u64>, RetentionReport), LogError>
where
    I: IntoIterator<Item = Result<ChunkInfo, LogError>>,
{
    let mut out = Vec::new();
    let mut report = RetentionReport::default();
    if spec.retention_ms.is_none() && spec.retention_bytes.is_none() {
        return Ok((out, report));
    }
    let mut bytes = total_bytes;
    let cutoff = spec
        .retention_ms
        .map(|ms| now_ms.saturating_sub(ms.min(i64::MAX as u64) as i64));
    let mut iter = chunks.into_iter().peekable();
    while let Some(c) = iter.next() {
        let c = c?;
        if iter.peek().is_none() {
            break; // the newest chunk stays
        }
        let expired = cutoff.is_some_and(|cut| c.header.max_ts < cut);
        let over = spec.retention_bytes.is_some_and(|max| bytes > max);
        if !(expired || over) {
            break;
        }
        out.push(c.base);
        bytes -= c.bytes.min(bytes);
        report.chunks += 1;
        report.records += c.header.count;
        report.bytes += c.bytes;
    }
    Ok((out, report))
}

/// Which chunks a truncation below `below` removes: every chunk, oldest first, whose records
/// all lie below `below` (a disk quota making room; unlike retention the newest chunk may go).
/// `chunks` is read only as far as something is removed, plus one.
pub fn truncate<I>(below: u64, chunks: I) -> Result<(Vec<u64>, RetentionReport), LogError>
where
    I: IntoIterator<Item = Result<ChunkInfo, LogError>>,
{
    let mut out = Vec::new();
    let mut report = RetentionReport::default();
    for c in chunks {
        let c = c?;
        if c.base.saturating_add(c.header.last_delta) >= below {
            break;
        }
        out.push(c.base);
        report.chunks += 1;
        report.records += c.header.count;
        report.bytes += c.bytes;
    }
    Ok((out, report))
}

/// A chunk rewrite decided by compaction.
#[derive(Debug)]
pub struct Rewrite {
    /// Base offset of the chunk.
    pub base: u64,
    /// New encoded chunk, or `None` to delete it.
    pub bytes: Option<Vec<u8>>,
    /// Records dropped from it.
    pub removed: u64,
}

/// Compaction of one partition given all its chunks `(base, bytes)`, oldest first: every record
/// whose key appears again later is dropped, except in the newest chunk.
pub fn compact(chunks: &[(u64, Vec<u8>)]) -> Result<Vec<Rewrite>, LogError> {
    let mut decoded = Vec::with_capacity(chunks.len());
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for (base, bytes) in chunks {
        let mut recs = Vec::new();
        chunk::decode(*base, bytes, 0, &mut recs, usize::MAX)?;
        for r in &recs {
            if let Some(k) = &r.key {
                latest.insert(k.clone(), r.offset);
            }
        }
        decoded.push((*base, recs));
    }
    let mut out = Vec::new();
    let last = decoded.len().saturating_sub(1);
    for (i, (base, recs)) in decoded.into_iter().enumerate() {
        if i == last {
            break;
        }
        let before = recs.len();
        let kept: Vec<Record> = recs
            .into_iter()
            .filter(|r| r.key.as_ref().is_none_or(|k| latest.get(k) == Some(&r.offset)))
            .collect();
        let removed = (before - kept.len()) as u64;
        if removed == 0 {
            continue;
        }
        let bytes = (!kept.is_empty()).then(|| {
            let news: Vec<(u64, NewRecord)> = kept
                .into_iter()
                .map(|r| {
                    (
                        r.offset - base,
                        NewRecord {
                            timestamp_ms: r.timestamp_ms,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                        },
                    )
                })
                .collect();
            chunk::encode(base, news.iter().map(|(d, r)| (*d, r)))
        });
        out.push(Rewrite { base, bytes, removed });
    }
    Ok(out)
}
