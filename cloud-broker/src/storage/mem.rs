//! The in-memory twin of the redb storage. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Snapshot, Storage, StoreError, WriteSet};
use crate::batch::{self, BatchHeader};

/// In-memory storage.
#[derive(Debug, Default)]
pub struct MemStorage {
    snap: Mutex<Snapshot>,
    batches: Mutex<BTreeMap<(u32, u32, i64), Vec<u8>>>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Storage for MemStorage {
    fn apply(&self, w: &WriteSet) -> Result<(), StoreError> {
        let mut snap = lock(&self.snap);
        let mut batches = lock(&self.batches);
        for t in &w.delete_topics {
            snap.topics.retain(|x| x.id != t.id);
            snap.heads.retain(|k, _| k.0 != t.id);
            snap.producers.retain(|k, _| k.0 != t.id);
            snap.txns.retain(|k, _| k.0 != t.id);
            snap.offsets.retain(|k, _| k.1 != t.name);
            batches.retain(|k, _| k.0 != t.id);
        }
        for t in &w.put_topics {
            snap.topics.retain(|x| x.id != t.id);
            snap.topics.push(t.clone());
        }
        for k in &w.remove_batches {
            batches.remove(k);
        }
        for (t, p, base, bytes) in &w.batches {
            batches.insert((*t, *p, *base), bytes.clone());
        }
        for (t, p, before) in &w.truncate {
            batches.retain(|k, v| {
                !(k.0 == *t && k.1 == *p && k.2 < *before)
                    || crate::batch::header(v).is_ok_and(|h| h.last_offset() >= *before)
            });
        }
        for (t, p, h) in &w.heads {
            snap.heads.insert((*t, *p), *h);
        }
        for (id, st) in &w.txn_states {
            match st {
                Some(st) => drop(snap.txn_states.insert(id.clone(), st.clone())),
                None => drop(snap.txn_states.remove(id)),
            }
        }
        for (g, pid, o) in &w.txn_offsets {
            match o {
                Some(o) => drop(snap.txn_offsets.insert((g.clone(), *pid), o.clone())),
                None => drop(snap.txn_offsets.remove(&(g.clone(), *pid))),
            }
        }
        for (t, p, x) in &w.txns {
            if x.is_empty() {
                snap.txns.remove(&(*t, *p));
            } else {
                snap.txns.insert((*t, *p), x.clone());
            }
        }
        for (t, p, pid, s) in &w.producers {
            snap.producers.insert((*t, *p, *pid), s.clone());
        }
        for (g, t, p, o) in &w.offsets {
            match o {
                Some(o) => snap.offsets.insert((g.clone(), t.clone(), *p), o.clone()),
                None => snap.offsets.remove(&(g.clone(), t.clone(), *p)),
            };
        }
        for (k, v) in &w.meta {
            snap.meta.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(lock(&self.snap).clone())
    }

    fn read(&self, topic: u32, partition: u32, from: i64, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        let batches = lock(&self.batches);
        let start = batches
            .range((topic, partition, i64::MIN)..=(topic, partition, from))
            .next_back()
            .map(|(k, _)| k.2);
        let mut out = Vec::new();
        for (_, b) in batches.range((topic, partition, start.unwrap_or(from))..=(topic, partition, i64::MAX))
        {
            if !super::gather_batch(&mut out, b, from, max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    fn headers(
        &self,
        topic: u32,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<BatchHeader>, StoreError> {
        let batches = lock(&self.batches);
        let start = batches
            .range((topic, partition, i64::MIN)..=(topic, partition, from))
            .next_back()
            .map(|(k, _)| k.2);
        batches
            .range((topic, partition, start.unwrap_or(from))..=(topic, partition, i64::MAX))
            .take(limit)
            .map(|(_, b)| batch::header(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
}
