//! The log's rollback watermarks (see "Rollbacks" in the module doc): checked at open,
//! raised after every append.

use std::collections::HashMap;

use tracing::error;

use super::{get_part, put_part, storage, table_missing_ok, RedbLog, CHUNKS, PARTS, QUARANTINE};
use crate::log::LogError;

/// A partition's key in the watermarks.
pub(super) fn mark_key(id: u32, p: u32) -> u64 {
    (u64::from(id) << 32) | u64::from(p)
}

impl RedbLog {
    /// Compares every partition with its watermark; see [`RedbLog::open_with`].
    pub(super) fn check_marks(&self, accept: bool) -> Result<(), LogError> {
        let marks = self.marks.marks();
        if marks.is_empty() {
            return Ok(());
        }
        let names: HashMap<u32, String> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| (r.id, r.spec.name.clone()))
            .collect();
        let behind = self.read_db(|tx| {
            let Some(parts) = table_missing_ok(tx.open_table(PARTS))? else {
                return Ok(Vec::new());
            };
            let mut behind = Vec::new();
            for (&k, &mark) in &marks {
                let (id, p) = ((k >> 32) as u32, k as u32);
                // A damaged row is rebuilt on its next write, from the chunks and this mark.
                let Ok(next) = get_part(&parts, id, p).map(|s| s.next_offset) else {
                    continue;
                };
                if next < mark {
                    behind.push((id, p, next, mark));
                }
            }
            Ok(behind)
        })?;
        if behind.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = behind
            .iter()
            .map(|(id, p, next, mark)| {
                let topic = names.get(id).map_or("?", String::as_str);
                format!("{topic:?} partition {p}: offsets {next}..{mark}")
            })
            .collect();
        if !accept {
            return Err(LogError::RolledBack(format!(
                "{} holds less than it acknowledged ({}; the marks are in {}): the file rolled back \
                 (a damaged commit slot, a disk that lost confirmed writes, or an old copy restored). \
                 Those records are gone from this gateway; if they were not yet forwarded, they are \
                 lost. Run `edge-agent log verify --accept-rollback` to go on with the offsets after \
                 them, so none is handed out twice",
                self.path().display(),
                list.join(", "),
                self.marks.path().display()
            )));
        }
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut q = tx.open_table(QUARANTINE).map_err(storage)?;
            for &(id, p, next, mark) in &behind {
                let mut s = self.part_for_write(&parts, &chunks, names.get(&id).map_or("?", |n| n), id, p)?;
                s.next_offset = mark;
                if s.records == 0 {
                    s.first_offset = mark;
                }
                put_part(&mut parts, id, p, &s)?;
                let lost = format!("offsets {next}..{mark} lost to a rollback of the file");
                q.insert(format!("rollback/{id}/{p}").as_str(), lost.as_bytes())
                    .map_err(storage)?;
            }
            Ok(())
        })?;
        for l in &list {
            error!(lost = %l, "rollback accepted: the partition goes on after its watermark");
        }
        Ok(())
    }

    /// Raises the watermarks after a commit. A failure to write them is logged once; the commit
    /// stands (it is durable), only the rollback check is weaker until they are written again.
    pub(super) fn raise_marks(&self, marks: impl IntoIterator<Item = (u64, u64)>) {
        use std::sync::atomic::Ordering;
        match self.marks.raise(marks) {
            Ok(()) => {
                if self.marks_failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the log's watermarks are written again");
                }
            }
            Err(e) => {
                if !self.marks_failing.swap(true, Ordering::Relaxed) {
                    error!(file = %self.marks.path().display(), error = %e, "writing the log's watermarks failed");
                }
            }
        }
    }
}
