//! Damaged data: sealed rows, and a damaged newest commit slot.

use std::path::{Path, PathBuf};

use super::{OpenError, Reopening};

/// A stored value sealed with its checksum: `value ‖ CRC-32C(key ‖ value)`, `key` being the
/// bytes of the row's key (so a flipped bit in either is caught, and a row is never taken for
/// another key's). redb does not check its pages on read; stores seal their rows with this.
pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&seal_crc(key, value).to_le_bytes());
    out
}

/// The value of a row written by [`seal`] under `key`, or `None` if its checksum does not
/// match.
pub fn unseal<'a>(key: &[u8], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let split = bytes.len().checked_sub(4)?;
    let (value, tail) = bytes.split_at(split);
    let stored = u32::from_le_bytes(tail.try_into().ok()?);
    (seal_crc(key, value) == stored).then_some(value)
}

fn seal_crc(key: &[u8], value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), value)
}

/// Whether an open failed because redb's primary commit slot is damaged (with two-phase
/// commit, redb refuses the file rather than fall back to the other slot).
pub fn is_damaged_header(error: &str) -> bool {
    error.contains("Primary is corrupted despite 2-phase commit")
}

/// Makes a file whose primary commit slot is damaged ([`is_damaged_header`]) open at the commit
/// before, as redb does for a file written without two-phase commit: a copy of the file is
/// kept beside it first (returned), then the header's two-phase-commit mark (byte 9, bit 0x04)
/// is cleared, so redb takes the newest slot whose checksum holds. What the lost commit held
/// is gone: the store's watermarks then tell exactly what, and the operator accepts it. redb
/// cannot always open the commit before (measured: not after a clean close shrank the file
/// past pages it refers to); the caller then puts the copy back.
pub fn recover_header(path: &Path) -> std::io::Result<PathBuf> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut backup = path.as_os_str().to_owned();
    backup.push(format!(".damaged-{}", crate::ids::unique_tag()));
    let backup = PathBuf::from(backup);
    std::fs::copy(path, &backup)?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut god = [0u8; 1];
    f.seek(SeekFrom::Start(9))?;
    f.read_exact(&mut god)?;
    god[0] &= !0x04;
    f.seek(SeekFrom::Start(9))?;
    f.write_all(&god)?;
    f.sync_all()?;
    Ok(backup)
}

/// Why [`open_or_recover`] did not open a store.
#[derive(Debug)]
pub enum Unopened {
    /// The open failed for another reason.
    Open(OpenError),
    /// The newest commit is damaged and recovery was not asked for: the message says so.
    DamagedHeader(String),
    /// Recovery was asked for, and redb cannot open the commit before either; the file is as
    /// it was found.
    Unrecoverable(String),
}

/// Opens a store with `open`; a file whose newest commit slot is damaged
/// ([`is_damaged_header`]) is refused with a message naming `accept_flag` (the command option
/// that accepts losing that commit), or, with `accept` set, opened at the commit before
/// ([`recover_header`]) — and put back exactly as found when redb cannot open that either.
pub fn open_or_recover(
    path: &Path,
    accept: bool,
    accept_flag: &str,
    open: impl Fn() -> Result<Reopening, OpenError>,
) -> Result<Reopening, Unopened> {
    let e = match open() {
        Ok(db) => return Ok(db),
        Err(e) if is_damaged_header(&e.to_string()) => e,
        Err(e) => return Err(Unopened::Open(e)),
    };
    if !accept {
        return Err(Unopened::DamagedHeader(format!(
            "{e}: the newest commit of {} is damaged. `{accept_flag}` opens it at the commit \
             before (a copy of the file is kept) and goes on after the offsets handed out",
            path.display()
        )));
    }
    let unrecoverable = |why: String| Unopened::Unrecoverable(why);
    let backup = recover_header(path).map_err(|e| unrecoverable(format!("{}: {e}", path.display())))?;
    tracing::error!(file = %path.display(), copy = %backup.display(), "damaged newest commit: opening the commit before");
    match open() {
        Ok(db) => Ok(db),
        Err(e2) => {
            // redb could not open the commit before either (e.g. the file was shrunk since):
            // the file goes back to how it was found.
            std::fs::rename(&backup, path).map_err(|e| unrecoverable(format!("{}: {e}", path.display())))?;
            Err(unrecoverable(format!(
                "{}: its newest commit is damaged ({e}) and the commit before cannot be opened \
                 either ({e2}); the file is left as it was found: restore the data directory from \
                 a backup",
                path.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::Database;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    const T: redb::TableDefinition<u32, u32> = redb::TableDefinition::new("t");

    fn put(db: &Database, k: u32) {
        let mut tx = db.begin_write().unwrap();
        tx.set_quick_repair(true);
        tx.open_table(T).unwrap().insert(k, k).unwrap();
        tx.commit().unwrap();
    }

    /// With quick repair (two-phase commit) a damaged primary commit slot is an error, not a
    /// silent fall back; [`recover_header`] makes the file open at the commit before.
    #[test]
    fn a_damaged_primary_slot_is_refused_then_recovered_to_the_commit_before() {
        let dir = std::env::temp_dir().join(format!("foundation-slot-{}", crate::ids::unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.redb");
        let db = Database::create(&path).unwrap();
        for k in 0..5 {
            put(&db, k);
        }
        drop(db);
        let mut bytes = std::fs::read(&path).unwrap();
        let primary = usize::from(bytes[9] & 0x01);
        bytes[64 + primary * 128 + 40] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = Database::create(&path).expect_err("refused").to_string();
        assert!(e.contains("Primary is corrupted despite 2-phase commit"), "{e}");
        assert!(is_damaged_header(&e));
        let backup = recover_header(&path).unwrap();
        assert!(backup.exists());
        let db = Database::create(&path).unwrap();
        let n = db.begin_read().unwrap().open_table(T).unwrap().len().unwrap();
        assert!((4..=5).contains(&n), "the commit before (or the same data): {n}");
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
