//! Layout 1 → 2: every row and chunk gets its checksum.
//!
//! Runs inside the transaction that records layout 2 ([`foundation::redb::Reopening::open_migrating`]),
//! so a crash leaves the layout 1 file as it was. A row or chunk that layout 1 already held
//! damaged (it does not decode) is not sealed as good: it goes to the `quarantine` table, as
//! `log verify --quarantine` would put it, and the partition row is rebuilt around it.

use std::ops::Bound;

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};
use tracing::{info, warn};

use super::{chunk, rows, verify, CHUNKS, META, PARTS, QUARANTINE, STREAMS, TOPICS};
use crate::log::LogError;

/// Layout 1's stream table: the next expected sequence, no checksum.
const STREAMS_V1: TableDefinition<(&str, u32), u64> = TableDefinition::new("streams");

/// How many chunk bytes one step of the upgrade holds in memory.
const STEP_BYTES: usize = 16 << 20;

/// The migration hook for layout 1 files.
pub fn from_v1(tx: &WriteTransaction, found: u64) -> Result<(), String> {
    if found != 1 {
        return Err(format!("no upgrade from layout {found}"));
    }
    upgrade(tx).map_err(|e| e.to_string())
}

fn storage<E: std::fmt::Display>(e: E) -> LogError {
    LogError::Storage(e.to_string())
}

/// Every row of a table keyed by strings, copied out (small tables: topics, metadata).
fn string_rows(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, LogError> {
    t.iter()
        .map_err(storage)?
        .map(|e| {
            e.map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                .map_err(storage)
        })
        .collect()
}

fn upgrade(tx: &WriteTransaction) -> Result<(), LogError> {
    let mut quarantine = tx.open_table(QUARANTINE).map_err(storage)?;
    let mut put_aside = |key: String, bytes: &[u8], why: &str| -> Result<(), LogError> {
        warn!(item = %key, why, "damaged in the layout 1 file: quarantined by the upgrade");
        quarantine.insert(key.as_str(), bytes).map_err(storage)?;
        Ok(())
    };

    let mut topics = tx.open_table(TOPICS).map_err(storage)?;
    for (name, json) in &string_rows(&topics)? {
        if serde_json::from_slice::<super::TopicRow>(json).is_ok() {
            topics
                .insert(name.as_str(), rows::seal(name.as_bytes(), json).as_slice())
                .map_err(storage)?;
        } else {
            put_aside(format!("topics/{name}"), json, "topic row does not decode")?;
            topics.remove(name.as_str()).map_err(storage)?;
        }
    }

    let mut meta = tx.open_table(META).map_err(storage)?;
    for (k, v) in &string_rows(&meta)? {
        meta.insert(k.as_str(), rows::seal(k.as_bytes(), v).as_slice())
            .map_err(storage)?;
    }

    match tx.open_table(STREAMS_V1) {
        Ok(old) => {
            let mut streams = tx.open_table(STREAMS).map_err(storage)?;
            for e in old.iter().map_err(storage)? {
                let (k, v) = e.map_err(storage)?;
                let (device, boot) = k.value();
                streams
                    .insert(
                        (device, boot),
                        rows::stream_encode(device, boot, v.value()).as_slice(),
                    )
                    .map_err(storage)?;
            }
            drop(old);
            tx.delete_table(STREAMS_V1).map_err(storage)?;
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }

    // Partition rows: the old ones are read for their next offset (offsets are never reused),
    // and rebuilt from the chunks afterwards.
    let mut parts = tx.open_table(PARTS).map_err(storage)?;
    let all: Vec<((u32, u32), Vec<u8>)> = parts
        .iter()
        .map_err(storage)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(storage))
        .collect::<Result<_, _>>()?;
    let mut old_next = std::collections::HashMap::new();
    let mut rebuild = std::collections::BTreeSet::new();
    for ((id, p), v) in &all {
        match rows::part_decode(*id, *p, v, false) {
            Ok(s) => {
                old_next.insert((*id, *p), s.next_offset);
                parts
                    .insert((*id, *p), rows::part_encode(*id, *p, &s).as_slice())
                    .map_err(storage)?;
            }
            Err(_) => {
                put_aside(format!("partitions/{id}/{p}"), v, "partition row does not decode")?;
                rebuild.insert((*id, *p));
            }
        }
    }

    let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
    let mut after = Bound::Unbounded;
    let mut count = 0u64;
    loop {
        let mut step = Vec::new();
        let mut held = 0;
        for e in chunks
            .range::<(u32, u32, u64)>((after, Bound::Unbounded))
            .map_err(storage)?
        {
            let (k, v) = e.map_err(storage)?;
            held += v.value().len();
            step.push((k.value(), v.value().to_vec()));
            if held >= STEP_BYTES {
                break;
            }
        }
        let Some(&(last, _)) = step.last() else {
            break;
        };
        for ((id, p, base), v1) in step {
            count += 1;
            match chunk::upgrade_v1(base, &v1) {
                Ok(v2) => {
                    chunks.insert((id, p, base), v2.as_slice()).map_err(storage)?;
                }
                Err(e) => {
                    put_aside(format!("chunks/{id}/{p}/{base}"), &v1, &e.to_string())?;
                    chunks.remove((id, p, base)).map_err(storage)?;
                    rebuild.insert((id, p));
                }
            }
        }
        after = Bound::Excluded(last);
    }
    // Every row is worked out again from its chunks: each chunk grew by its checksum.
    rebuild.extend(old_next.keys().copied());
    for (id, p) in rebuild {
        let s = verify::rebuild_part(&chunks, id, p, old_next.get(&(id, p)).copied())?.stats;
        parts
            .insert((id, p), rows::part_encode(id, p, &s).as_slice())
            .map_err(storage)?;
    }
    info!(
        chunks = count,
        "log upgraded to layout 2 (checksums on every row and chunk)"
    );
    Ok(())
}
