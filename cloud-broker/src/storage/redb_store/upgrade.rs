//! Layout 1 → 2: every row sealed with its checksum, in the transaction that records layout 2
//! ([`foundation::redb::Reopening::open_migrating`]), so a crash leaves the layout 1 file as it
//! was. A row layout 1 already held damaged (its JSON does not decode) goes to `quarantine`
//! instead of being sealed as good; batches are kept as they are (they carry Kafka's CRC).

use redb::{ReadableTable, Table, WriteTransaction};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{keys, seal, HEADS, META, OFFSETS, PRODUCERS, QUARANTINE, TOPICS};
use crate::storage::{CommittedOffset, PartitionHead, ProducerState, StoreError, TopicMeta};

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The migration hook: a layout 1 file has its rows sealed; a layout 2 file needs nothing
/// (it has no transactions, and the `txns` table is made at the first write).
pub fn migrate(tx: &redb::WriteTransaction, found: u64) -> Result<(), String> {
    match found {
        1 => from_v1(tx, found),
        2 => Ok(()),
        other => Err(format!("no upgrade from layout {other}")),
    }
}

/// The migration hook for layout 1 files.
pub fn from_v1(tx: &WriteTransaction, found: u64) -> Result<(), String> {
    if found != 1 {
        return Err(format!("no upgrade from layout {found}"));
    }
    upgrade(tx).map_err(|e| e.to_string())
}

/// The sealed form of a layout 1 JSON row, or `None` (and the row quarantined as `name`) when
/// it does not decode as `T`.
fn sealed<T: DeserializeOwned>(
    q: &mut Table<'_, &'static str, &'static [u8]>,
    name: String,
    key: &[u8],
    v: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    if serde_json::from_slice::<T>(v).is_ok() {
        return Ok(Some(seal(key, v)));
    }
    warn!(item = %name, "damaged in the layout 1 file: quarantined by the upgrade");
    q.insert(name.as_str(), v).map_err(io)?;
    Ok(None)
}

fn upgrade(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut q = tx.open_table(QUARANTINE).map_err(io)?;
    let mut n = 0usize;

    let mut t = tx.open_table(TOPICS).map_err(io)?;
    let rows: Vec<(u32, Vec<u8>)> = t
        .iter()
        .map_err(io)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(io))
        .collect::<Result<_, _>>()?;
    n += rows.len();
    for (id, v) in rows {
        match sealed::<TopicMeta>(&mut q, format!("topics/{id}"), &keys::topic(id), &v)? {
            Some(s) => drop(t.insert(id, s.as_slice()).map_err(io)?),
            None => drop(t.remove(id).map_err(io)?),
        }
    }

    let mut t = tx.open_table(HEADS).map_err(io)?;
    let rows: Vec<((u32, u32), Vec<u8>)> = t
        .iter()
        .map_err(io)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(io))
        .collect::<Result<_, _>>()?;
    n += rows.len();
    for ((tid, p), v) in rows {
        // A head that does not decode is rebuilt from the batches at load.
        match sealed::<PartitionHead>(&mut q, format!("heads/{tid}/{p}"), &keys::head(tid, p), &v)? {
            Some(s) => drop(t.insert((tid, p), s.as_slice()).map_err(io)?),
            None => drop(t.insert((tid, p), &b""[..]).map_err(io)?),
        }
    }

    let mut t = tx.open_table(PRODUCERS).map_err(io)?;
    let rows: Vec<((u32, u32, i64), Vec<u8>)> = t
        .iter()
        .map_err(io)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(io))
        .collect::<Result<_, _>>()?;
    n += rows.len();
    for ((tid, p, pid), v) in rows {
        let name = format!("producers/{tid}/{p}/{pid}");
        match sealed::<ProducerState>(&mut q, name, &keys::producer(tid, p, pid), &v)? {
            Some(s) => drop(t.insert((tid, p, pid), s.as_slice()).map_err(io)?),
            None => drop(t.remove((tid, p, pid)).map_err(io)?),
        }
    }

    let mut t = tx.open_table(OFFSETS).map_err(io)?;
    let rows: Vec<((String, String, u32), Vec<u8>)> = t
        .iter()
        .map_err(io)?
        .map(|e| {
            e.map(|(k, v)| {
                let (g, topic, p) = k.value();
                ((g.to_string(), topic.to_string(), p), v.value().to_vec())
            })
            .map_err(io)
        })
        .collect::<Result<_, _>>()?;
    n += rows.len();
    for ((g, topic, p), v) in rows {
        let name = format!("offsets/{g}/{topic}/{p}");
        match sealed::<CommittedOffset>(&mut q, name, &keys::offset(&g, &topic, p), &v)? {
            Some(s) => drop(
                t.insert((g.as_str(), topic.as_str(), p), s.as_slice())
                    .map_err(io)?,
            ),
            None => drop(t.remove((g.as_str(), topic.as_str(), p)).map_err(io)?),
        }
    }

    let mut t = tx.open_table(META).map_err(io)?;
    let rows: Vec<(String, Vec<u8>)> = t
        .iter()
        .map_err(io)?
        .map(|e| {
            e.map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                .map_err(io)
        })
        .collect::<Result<_, _>>()?;
    n += rows.len();
    for (k, v) in rows {
        t.insert(k.as_str(), seal(k.as_bytes(), &v).as_slice())
            .map_err(io)?;
    }
    info!(
        rows = n,
        "broker store upgraded to layout 2 (a checksum on every row)"
    );
    Ok(())
}
