//! `cloud-broker storage verify` on a cluster node's data directory: every Raft log entry,
//! group state value, offset-index row and snapshot batch of `node.redb` checked. Nothing is
//! quarantined on a node: its peers hold the data, and a node with damaged data is replaced
//! (`cluster replace`), after which it catches up from them.

use redb::ReadableTable;
use serde::Serialize;

use super::store::{dec_entry, first_offset, state_key, NodeStore, GROUP_STATE, LOG, OFFSET_INDEX, SEALED};
use super::GroupId;
use crate::batch;
use crate::storage::redb_store::DamagedItem;

/// What a scan of a node's store found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeVerifyReport {
    /// Raft groups with anything stored.
    pub groups: u64,
    /// Log entries read.
    pub entries: u64,
    /// Group state values read.
    pub states: u64,
    /// Offset-index rows checked.
    pub index_rows: u64,
    /// Batches from installed snapshots read.
    pub sealed_batches: u64,
    /// What is damaged.
    pub damaged: Vec<DamagedItem>,
    /// What redb's own check of its pages found, if they are damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_damage: Option<String>,
}

impl NodeVerifyReport {
    /// Whether nothing damaged was found.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.page_damage.is_none()
    }
}

/// A group in words, with its partition when it is one.
fn group_name(g: u64) -> (String, Option<u32>) {
    match GroupId::from_key(g) {
        Some(GroupId::Metadata) => ("the metadata group".into(), None),
        Some(GroupId::Offsets(i)) => (format!("group-offsets log {i}"), None),
        Some(GroupId::Partition { topic, partition }) => {
            (format!("topic #{topic} partition {partition}"), Some(partition))
        }
        None => (format!("group {g:#x}"), None),
    }
}

fn item(key: String, group: u64, what: &str, error: String) -> DamagedItem {
    let (name, partition) = group_name(group);
    DamagedItem {
        key,
        what: format!("{what} of {name} (its other replicas hold it: replace this node)"),
        topic: None,
        partition,
        offsets: None,
        error,
    }
}

impl NodeStore {
    /// Reads and checks everything the node stores; changes nothing.
    pub fn verify(&self) -> std::io::Result<NodeVerifyReport> {
        let io = |e: redb::Error| std::io::Error::other(e.to_string());
        let mut r = self.read_tx(|tx| {
            let mut r = NodeVerifyReport::default();
            let mut groups = std::collections::BTreeSet::new();
            let log = tx.open_table(LOG).map_err(|e| io(e.into()))?;
            for e in log.iter().map_err(|e| io(e.into()))? {
                let (k, v) = e.map_err(|e| io(e.into()))?;
                let (g, i) = k.value();
                groups.insert(g);
                r.entries += 1;
                let checked = dec_entry((g, i), v.value()).and_then(|entry| {
                    if entry.log_id.index == i {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(format!(
                            "entry {i} holds log id {}",
                            entry.log_id.index
                        )))
                    }
                });
                if let Err(e) = checked {
                    r.damaged.push(item(
                        format!("raft_log/{g:#x}/{i}"),
                        g,
                        &format!("log entry {i}"),
                        e.to_string(),
                    ));
                }
            }
            let state = tx.open_table(GROUP_STATE).map_err(|e| io(e.into()))?;
            for e in state.iter().map_err(|e| io(e.into()))? {
                let (k, v) = e.map_err(|e| io(e.into()))?;
                let (g, slot) = k.value();
                groups.insert(g);
                r.states += 1;
                if foundation::redb::unseal(&state_key(g, slot), v.value()).is_none() {
                    r.damaged.push(item(
                        format!("group_state/{g:#x}/{slot}"),
                        g,
                        &format!("state value {slot} (vote, commit, purge, machine or snapshot)"),
                        "checksum mismatch".into(),
                    ));
                }
            }
            let index = tx.open_table(OFFSET_INDEX).map_err(|e| io(e.into()))?;
            for e in index.iter().map_err(|e| io(e.into()))? {
                let (k, v) = e.map_err(|e| io(e.into()))?;
                let (g, offset) = k.value();
                let i = v.value();
                r.index_rows += 1;
                let ok = match log.get((g, i)).map_err(|e| io(e.into()))? {
                    Some(bytes) => dec_entry((g, i), bytes.value())
                        .ok()
                        .is_some_and(|entry| first_offset(&entry) == Some(offset)),
                    None => false,
                };
                if !ok {
                    r.damaged.push(item(
                        format!("offset_index/{g:#x}/{offset}"),
                        g,
                        &format!("the offset index row of offset {offset}"),
                        format!("points at entry {i}, which does not start at offset {offset}"),
                    ));
                }
            }
            let sealed = tx.open_table(SEALED).map_err(|e| io(e.into()))?;
            for e in sealed.iter().map_err(|e| io(e.into()))? {
                let (k, v) = e.map_err(|e| io(e.into()))?;
                let (g, base) = k.value();
                r.sealed_batches += 1;
                let ok = batch::header(v.value())
                    .is_ok_and(|h| h.base_offset == base && h.size == v.value().len())
                    && batch::check_stored(v.value()).1.is_none();
                if !ok {
                    r.damaged.push(item(
                        format!("sealed/{g:#x}/{base}"),
                        g,
                        &format!("the snapshot batch at offset {base}"),
                        "header or CRC-32C mismatch".into(),
                    ));
                }
            }
            r.groups = groups.len() as u64;
            Ok(r)
        })?;
        r.page_damage = self.check_pages().err();
        Ok(r)
    }
}
