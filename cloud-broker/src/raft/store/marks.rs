//! A node store's rollback marks (see "Never a rolled-back log" in the store's doc): raised
//! after every durable commit, checked at open.

use std::io;
use std::path::Path;

use foundation::watermarks::Watermarks;
use openraft::alias::{LogIdOf, VoteOf};

use super::{dec, NodeStore, Op, Slot};
use crate::raft::TypeConfig;

/// The rollback marks of a node store (see the module doc).
#[derive(Debug)]
pub(super) struct Marks {
    /// Per group: the end of the log it acknowledged (last index + 1).
    acked: Watermarks,
    /// Per group: the term of its last durable vote + 1.
    voted: Watermarks,
}

impl Marks {
    pub(super) fn open(path: &Path) -> io::Result<Marks> {
        let beside = |ext: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            std::path::PathBuf::from(p)
        };
        Ok(Marks {
            acked: Watermarks::open(&beside(".acked"))?,
            voted: Watermarks::open(&beside(".voted"))?,
        })
    }

    /// After a durable commit of `ops`.
    pub(super) fn committed(&self, ops: &[&Op]) -> io::Result<()> {
        let mut acked = self.acked.marks();
        let mut voted = self.voted.marks();
        let (a0, v0) = (acked.clone(), voted.clone());
        for op in ops {
            match op {
                Op::Append { group, entries } => {
                    if let Some(end) = entries.iter().map(|(i, _, _)| i + 1).max() {
                        let m = acked.entry(*group).or_insert(0);
                        *m = (*m).max(end);
                    }
                }
                // Raft's own truncation of entries no quorum has: the end moves back.
                Op::TruncateAfter { group, after } => {
                    let end = after.map_or(0, |a| a + 1);
                    if let Some(m) = acked.get_mut(group) {
                        *m = (*m).min(end);
                    }
                }
                // The entries up to `upto` are replaced by a snapshot written separately.
                Op::Seal { group, upto, .. } => {
                    let end = upto.map_or(0, |u| u + 1);
                    if let Some(m) = acked.get_mut(group) {
                        *m = (*m).min(end);
                    }
                }
                Op::Put {
                    group,
                    slot: Slot::Vote,
                    value,
                } => {
                    let vote: VoteOf<TypeConfig> = dec(value)?;
                    let m = voted.entry(*group).or_insert(0);
                    *m = (*m).max(vote.leader_id.term + 1);
                }
                Op::Drop { group } => {
                    acked.remove(group);
                    voted.remove(group);
                }
                _ => {}
            }
        }
        if acked != a0 {
            self.acked.reset(acked)?;
        }
        if voted != v0 {
            self.voted.reset(voted)?;
        }
        Ok(())
    }
}

impl NodeStore {
    /// Refuses a store that holds less than it acknowledged (see the module doc).
    pub(super) fn check_marks(&self, path: &Path, marks: &Marks) -> io::Result<()> {
        let mut lost = Vec::new();
        for (group, mark) in marks.acked.marks() {
            let end = self.held_end(group)?;
            if end < mark {
                lost.push(format!(
                    "group {group:#x}: log ends at {end}, {mark} acknowledged"
                ));
            }
        }
        for (group, mark) in marks.voted.marks() {
            let term = match self.get(group, Slot::Vote)? {
                Some(b) => dec::<VoteOf<TypeConfig>>(&b)?.leader_id.term + 1,
                None => 0,
            };
            if term < mark {
                lost.push(format!(
                    "group {group:#x}: vote of term {}, term {} was voted in",
                    term.saturating_sub(1),
                    mark - 1
                ));
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{} holds less than this node acknowledged ({}): the file rolled back (a damaged \
             commit slot, a disk that lost confirmed writes, or an old copy restored). With this \
             log the node could vote for a leader that lacks committed records, so it does not \
             start. Replace it: start a new node with an empty data directory and --join, then \
             `cloud-broker cluster replace ... OLD NEW=HOST:PORT`; it catches up from its peers",
            path.display(),
            lost.join("; ")
        )))
    }

    /// The end of a group's log as stored: past its last entry, its purged id and its
    /// snapshot's last entry.
    fn held_end(&self, group: u64) -> io::Result<u64> {
        let last = self.last_entry(group)?.map(|e| e.log_id.index + 1);
        let purged = self
            .get(group, Slot::Purged)?
            .map(|b| dec::<LogIdOf<TypeConfig>>(&b))
            .transpose()?
            .map(|l| l.index + 1);
        // A snapshot is postcard `(meta, state)`: its meta decodes from the front.
        let snap = match self.get(group, Slot::Snapshot)? {
            Some(b) => postcard::take_from_bytes::<openraft::alias::SnapshotMetaOf<TypeConfig>>(&b)
                .ok()
                .and_then(|(m, _)| m.last_log_id)
                .map(|l| l.index + 1),
            None => None,
        };
        Ok([last, purged, snap].into_iter().flatten().max().unwrap_or(0))
    }
}
