//! Acknowledged positions kept beside a store, where a rollback of the store cannot also
//! erase them.
//!
//! A store that reopens with less than it had acknowledged (a damaged commit slot that made
//! redb fall back to the commit before, a disk that lost writes it had confirmed, a file
//! restored from an old copy) looks healthy, and would hand out the lost offsets again. So
//! after each commit the store raises its marks here (per key, e.g. per partition: the next
//! offset), and on open compares: a store below its marks has rolled back.
//!
//! The file holds two slots, written in turn, each `magic seq:u64 slot_size:u32 n:u32
//! (key:u64 value:u64)* crc32c:u32`; reading takes the valid slot with the highest `seq`, so a
//! write torn by a crash leaves the other. Writes are `pwrite`s without fsync (one per commit
//! costs a few microseconds): after a power cut the marks may be older than the store, which
//! only weakens the check, never raises a false alarm; [`Watermarks::sync`] makes them durable
//! at a clean close.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &[u8; 4] = b"WMK1";
const UNIT: usize = 64 << 10;
const HEAD: usize = 4 + 8 + 4 + 4;

#[derive(Debug)]
struct State {
    marks: BTreeMap<u64, u64>,
    seq: u64,
    slot: usize,
}

/// The marks of one store (see the module doc).
#[derive(Debug)]
pub struct Watermarks {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

fn encode(seq: u64, slot: usize, marks: &BTreeMap<u64, u64>) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD + marks.len() * 16 + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(slot as u32).to_le_bytes());
    b.extend_from_slice(&(marks.len() as u32).to_le_bytes());
    for (k, v) in marks {
        b.extend_from_slice(&k.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    let c = crc32c::crc32c(&b);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

/// A valid slot at the start of `b`: (seq, slot size, marks).
fn decode(b: &[u8]) -> Option<(u64, usize, BTreeMap<u64, u64>)> {
    if b.len() < HEAD + 4 || &b[..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default()) as usize;
    let (seq, slot, n) = (u64_at(4), u32_at(12), u32_at(16));
    let end = HEAD.checked_add(n.checked_mul(16)?)?;
    if end + 4 > b.len() || end + 4 > slot {
        return None;
    }
    if crc32c::crc32c(&b[..end]) != u32_at(end) as u32 {
        return None;
    }
    let marks = (0..n)
        .map(|i| (u64_at(HEAD + i * 16), u64_at(HEAD + i * 16 + 8)))
        .collect();
    Some((seq, slot, marks))
}

impl Watermarks {
    /// Opens (or creates, empty) the marks at `path`. A file with no valid slot (new, or both
    /// slots damaged) reads as no marks.
    pub fn open(path: &Path) -> io::Result<Watermarks> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let bytes = std::fs::read(path)?;
        let mut best: Option<(u64, usize, BTreeMap<u64, u64>)> = None;
        for at in (0..bytes.len()).step_by(UNIT) {
            if let Some(s) = decode(&bytes[at..]) {
                if best.as_ref().is_none_or(|b| s.0 > b.0) {
                    best = Some(s);
                }
            }
        }
        let (seq, slot, marks) = best.unwrap_or((0, UNIT, BTreeMap::new()));
        Ok(Watermarks {
            path: path.into(),
            file,
            state: Mutex::new(State { marks, seq, slot }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The marks.
    pub fn marks(&self) -> BTreeMap<u64, u64> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).marks.clone()
    }

    /// Raises each `key`'s mark to `value` (a mark never goes down here) and writes the marks.
    pub fn raise(&self, updates: impl IntoIterator<Item = (u64, u64)>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (k, v) in updates {
            let m = st.marks.entry(k).or_insert(0);
            if v > *m {
                *m = v;
                changed = true;
            }
        }
        if changed {
            self.write(&mut st)?;
        }
        Ok(())
    }

    /// Sets the marks to exactly `marks` (an operator accepting a rollback, or a store that
    /// dropped keys) and writes them.
    pub fn reset(&self, marks: BTreeMap<u64, u64>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.marks = marks;
        self.write(&mut st)
    }

    fn write(&self, st: &mut State) -> io::Result<()> {
        st.seq += 1;
        let need = HEAD + st.marks.len() * 16 + 4;
        let mut grew = false;
        while need > st.slot {
            st.slot += UNIT;
            grew = true;
        }
        let b = encode(st.seq, st.slot, &st.marks);
        if grew {
            // Both slots move: the new size goes to slot 0 first; a crash in between leaves
            // slot 0 valid and newest.
            self.file.write_all_at(&b, 0)?;
            st.seq += 1;
            let b = encode(st.seq, st.slot, &st.marks);
            return self.file.write_all_at(&b, st.slot as u64);
        }
        self.file.write_all_at(&b, (st.seq % 2) * st.slot as u64)
    }

    /// Makes the marks durable (a clean close).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("wm-{}", crate::ids::unique_tag()))
    }

    #[test]
    fn marks_survive_reopen_a_torn_slot_and_growth() {
        let p = scratch();
        let w = Watermarks::open(&p).unwrap();
        assert!(w.marks().is_empty());
        w.raise([(1, 10), (2, 20)]).unwrap();
        w.raise([(1, 5), (2, 25)]).unwrap();
        assert_eq!(w.marks(), BTreeMap::from([(1, 10), (2, 25)]), "marks only rise");
        drop(w);
        let w = Watermarks::open(&p).unwrap();
        assert_eq!(w.marks(), BTreeMap::from([(1, 10), (2, 25)]));
        // The newest slot torn: the one before is read.
        w.raise([(3, 30)]).unwrap();
        let seq = w.state.lock().unwrap().seq;
        drop(w);
        let mut b = std::fs::read(&p).unwrap();
        b[(seq % 2) as usize * UNIT + 25] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let w = Watermarks::open(&p).unwrap();
        assert_eq!(w.marks(), BTreeMap::from([(1, 10), (2, 25)]));
        // Many keys: the slots grow.
        w.raise((0..10_000).map(|k| (k, k + 1))).unwrap();
        w.raise([(7, 1_000)]).unwrap();
        drop(w);
        let w = Watermarks::open(&p).unwrap();
        let m = w.marks();
        assert_eq!((m.len(), m[&7], m[&9_999]), (10_000, 1_000, 10_000));
        w.reset(BTreeMap::from([(1, 1)])).unwrap();
        drop(w);
        assert_eq!(Watermarks::open(&p).unwrap().marks(), BTreeMap::from([(1, 1)]));
        std::fs::remove_file(&p).unwrap();
    }
}
