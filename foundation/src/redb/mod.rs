//! A redb database that reopens itself after a failed write.
//!
//! # What redb does with damage (measured, redb 4.6.0)
//! - **Data pages.** redb checksums every B-tree page (XXH3, kept in the parent) but checks
//!   them only when it walks the file: a repair after a crash, `check_integrity`, or an open
//!   with the integrity check. A read never does: a flipped bit in a value is returned as data,
//!   in a key it makes the row unfindable or found under another key, in a leaf header it can
//!   panic (caught here, see [`Reopening::with`]). Hence the stores' own checksums on every row.
//! - **After a crash** (no clean close), an open without a saved allocator state walks the
//!   file; one damaged page anywhere and the whole file is refused ("All roots are corrupted"),
//!   with no public way to read the good rows. Damage in the last commit's pages instead rolls
//!   the file back silently to the commit before. Stores that commit with quick repair
//!   (allocator state saved, two-phase commit) open after a crash without the walk.
//! - **Header.** The two commit slots carry checksums; without two-phase commit a damaged
//!   newest slot makes redb fall back to the older one: a silent rollback of the last commit.
//!   With two-phase commit (quick repair) a damaged primary slot is an error instead. The magic
//!   number, page size and region fields are checked for range and refused with an error.
//! - `check_integrity` finds a damaged page ([`Reopening::check_pages`]); after it fails, redb
//!   refuses writes on that handle until it is reopened.
//!
//! After an I/O error in a commit, redb refuses further writes on that handle; the store
//! marks it ([`Reopening::poison`]) and the next use closes and reopens the file (redb
//! allows one open handle per file, so the old one is dropped first). A disk that filled up
//! and was freed, or a transient I/O error, is thereby recovered without a restart.
//!
//! # Layout versions
//! A store opened with [`Reopening::open_versioned`] records the version of its layout (its
//! tables and their encodings) in the table [`LAYOUT`], key `"version"`, a `u64`:
//! - a file without tables is new and gets the version this build writes;
//! - a file with tables but no record predates the record: it is version
//!   [`UNRECORDED_LAYOUT`], and is stamped with it when that is the version this build reads;
//! - a version the caller says it can still read ([`Reopening::open_upgrading`]) opens and is
//!   recorded as the current one: the caller reads the older records and writes only current
//!   ones from then on, and a build that reads only the older layout refuses the file after;
//! - any other version is refused ([`OpenError::Layout`]): the file is never read as a layout
//!   it is not, and never changed. The check reads the file through a read-only handle first,
//!   because a read-write handle commits when it closes even when nothing changed. Only a file a
//!   crash left needing redb's own recovery is recovered (by redb, at the file level) before
//!   its version is checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

mod damage;
mod reserve;

pub use damage::{is_damaged_header, open_or_recover, recover_header, seal, unseal, Unopened};
pub use reserve::{fs_available, fs_space, Reserve};

/// The table holding a file's layout version, under the key `"version"`.
pub const LAYOUT: TableDefinition<&str, u64> = TableDefinition::new("layout");

const LAYOUT_KEY: &str = "version";

/// The layout version of a file that has tables but no version record: every file written
/// before versions were recorded.
pub const UNRECORDED_LAYOUT: u64 = 1;

/// Whether the redb file at `path` carries redb's "recovery required" mark (byte 9, bit
/// 0x02): set while a handle is open, written off when the last handle is dropped. A file
/// left with it (a crash, or an exit with the database still open) is repaired at its next
/// open, which reads the whole file. Read without opening the database.
pub fn needs_recovery(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 10];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    Ok(head[9] & 0x02 != 0)
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process holds the file.
    #[error("{path} is open in another process ({holder})")]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who probably holds it, and what to do.
        holder: &'static str,
    },
    /// redb refused it (damaged, unreadable).
    #[error("opening {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        source: redb::DatabaseError,
    },
    /// Its directory could not be created.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A reopen failed earlier and left no database.
    #[error("the database {0} is closed (reopening it failed)")]
    Closed(PathBuf),
    /// The file's layout version is not the one this build reads; nothing was written to it.
    #[error(
        "{path} has data layout version {found}, and this build reads version {reads}: run a build \
         that reads version {found}, or restore the directory from a backup made by this build \
         (do not edit or repair the file)"
    )]
    Layout {
        /// The file.
        path: PathBuf,
        /// The version the file records.
        found: u64,
        /// The version this build reads.
        reads: u64,
    },
    /// Rewriting the records of an older layout failed; the file was left as it was.
    #[error("{path}: upgrading the data layout from version {from} to {to}: {why}")]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The layout found.
        from: u64,
        /// The layout this build writes.
        to: u64,
        /// Why.
        why: String,
    },
    /// redb panicked while using the file (a damaged page); the handle is reopened before its
    /// next use.
    #[error("{path}: the storage engine failed on damaged data ({why}); run the store's verify command")]
    Panicked {
        /// The file.
        path: PathBuf,
        /// The panic's message.
        why: String,
    },
    /// Reading or recording the layout version failed.
    #[error("{path}: layout version: {source}")]
    LayoutIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: redb::Error,
    },
}

/// A redb database file, reopened before its next use after a failure.
#[derive(Debug)]
pub struct Reopening {
    path: PathBuf,
    cache_bytes: usize,
    holder: &'static str,
    db: RwLock<Option<Database>>,
    poisoned: AtomicBool,
    closed: AtomicBool,
    repaired: std::sync::Arc<AtomicBool>,
    /// Why the last write failed, until one succeeds.
    write_failure: std::sync::Mutex<Option<String>>,
    /// Where the bytes live when not in the file at `path` (tests: a faulty disk).
    backend: Option<Factory>,
}

/// A [`BackendFactory`] that a derived `Debug` can show.
#[derive(Clone)]
struct Factory(BackendFactory);

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a storage backend factory")
    }
}

/// Makes the storage backend for each open of a database (see [`Reopening::open_on`]).
pub type BackendFactory = std::sync::Arc<dyn Fn() -> Box<dyn redb::StorageBackend> + Send + Sync>;

/// A boxed backend as one redb takes.
#[derive(Debug)]
struct Boxed(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}

impl Reopening {
    /// Opens (or creates, with its directory) the database at `path` with a page cache of
    /// `cache_bytes`. `holder` names who likely has the file open when another process does
    /// (e.g. "is the agent running?").
    pub fn open(path: &Path, cache_bytes: usize, holder: &'static str) -> Result<Reopening, OpenError> {
        Self::open_inner(path, cache_bytes, holder, None)
    }

    fn open_inner(
        path: &Path,
        cache_bytes: usize,
        holder: &'static str,
        backend: Option<Factory>,
    ) -> Result<Reopening, OpenError> {
        if let (Some(dir), None) = (path.parent(), &backend) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
                path: dir.into(),
                source,
            })?;
        }
        let r = Reopening {
            path: path.into(),
            cache_bytes,
            holder,
            db: RwLock::new(None),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            repaired: std::sync::Arc::new(AtomicBool::new(false)),
            write_failure: std::sync::Mutex::new(None),
            backend,
        };
        *r.db.write().unwrap_or_else(|e| e.into_inner()) = Some(r.open_db()?);
        Ok(r)
    }

    /// [`Reopening::open`] for a store whose layout is versioned (see the module doc): a file of
    /// layout `version`, or without tables, opens and carries the record afterwards; a file of
    /// any other layout is refused with [`OpenError::Layout`] before anything is written to it.
    pub fn open_versioned(
        path: &Path,
        cache_bytes: usize,
        holder: &'static str,
        version: u64,
    ) -> Result<Reopening, OpenError> {
        Self::open_upgrading(path, cache_bytes, holder, version, &[])
    }

    /// [`Reopening::open_versioned`] for a build that also reads the layouts in `older`: a
    /// file of one of those opens too, and is recorded as `version` (see the module doc).
    pub fn open_upgrading(
        path: &Path,
        cache_bytes: usize,
        holder: &'static str,
        version: u64,
        older: &[u64],
    ) -> Result<Reopening, OpenError> {
        Self::open_migrating(path, cache_bytes, holder, version, older, &|_, _| Ok(()))
    }

    /// [`Reopening::open_upgrading`] for a store that rewrites its records when it upgrades:
    /// `migrate(tx, found)` runs for a file of an older layout `found`, in the same write
    /// transaction that records `version`, so a crash leaves either the old file or the fully
    /// upgraded one. An error from it aborts the upgrade (the file is left as it was) and fails
    /// the open with [`OpenError::Migrate`].
    pub fn open_migrating(
        path: &Path,
        cache_bytes: usize,
        holder: &'static str,
        version: u64,
        older: &[u64],
        migrate: &dyn Fn(&redb::WriteTransaction, u64) -> Result<(), String>,
    ) -> Result<Reopening, OpenError> {
        Self::open_migrating_inner(path, cache_bytes, holder, version, older, migrate, None)
    }

    /// [`Reopening::open_migrating`] on the storage `backend` makes (a new one for each open),
    /// not the file at `path` (which only names it in messages): how tests run a store on a
    /// faulty disk. The read-only check of the layout before the first write is skipped.
    pub fn open_on(
        path: &Path,
        cache_bytes: usize,
        version: u64,
        older: &[u64],
        migrate: &dyn Fn(&redb::WriteTransaction, u64) -> Result<(), String>,
        backend: BackendFactory,
    ) -> Result<Reopening, OpenError> {
        Self::open_migrating_inner(
            path,
            cache_bytes,
            "a test",
            version,
            older,
            migrate,
            Some(Factory(backend)),
        )
    }

    fn open_migrating_inner(
        path: &Path,
        cache_bytes: usize,
        holder: &'static str,
        version: u64,
        older: &[u64],
        migrate: &dyn Fn(&redb::WriteTransaction, u64) -> Result<(), String>,
        backend: Option<Factory>,
    ) -> Result<Reopening, OpenError> {
        let layout_io = |source: redb::Error| OpenError::LayoutIo {
            path: path.into(),
            source,
        };
        if backend.is_none() && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            match Database::builder()
                .set_cache_size(cache_bytes)
                .open_read_only(path)
            {
                Ok(db) => {
                    let found = read_layout(&db).map_err(layout_io)?;
                    refuse_other(path, found, version, older)?;
                }
                // A crash left it: only the recovery in the read-write open below can read it,
                // and the check there still runs before the store writes anything.
                Err(redb::DatabaseError::RepairAborted) => {}
                Err(e) => return Err(db_error(path, holder, e)),
            }
        }
        let r = Reopening::open_inner(path, cache_bytes, holder, backend)?;
        r.with(|db| stamp_layout(db, path, version, older, migrate))?;
        Ok(r)
    }

    fn open_db(&self) -> Result<Database, OpenError> {
        let repaired = self.repaired.clone();
        let path = self.path.clone();
        let mut b = Database::builder();
        b.set_cache_size(self.cache_bytes).set_repair_callback(move |_| {
            if !repaired.swap(true, Ordering::SeqCst) {
                tracing::warn!(file = %path.display(), "the file was not closed cleanly and needs redb's full repair (reads all of it)");
            }
        });
        // redb can panic on damaged pages while it opens a file, too.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &self.backend {
            Some(make) => b.create_with_backend(Boxed((make.0)())),
            None => b.create(&self.path),
        }));
        match opened {
            Ok(r) => r.map_err(|e| db_error(&self.path, self.holder, e)),
            Err(_) => Err(OpenError::Panicked {
                path: self.path.clone(),
                why: "while opening the file".into(),
            }),
        }
    }

    /// Whether an open of this store had to run redb's full repair (a file left by a crash,
    /// written without quick repair): what a restart after a crash should not need.
    pub fn repaired(&self) -> bool {
        self.repaired.load(Ordering::SeqCst)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the database, reopening it first if a failure poisoned it.
    pub fn with<T, E: From<OpenError>>(&self, f: impl FnOnce(&Database) -> Result<T, E>) -> Result<T, E> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(OpenError::Closed(self.path.clone()).into());
        }
        if self.poisoned.load(Ordering::SeqCst) {
            let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
            if self.poisoned.load(Ordering::SeqCst) {
                drop_quietly(g.take()); // close before reopening: redb allows one open per file
                *g = Some(self.open_db()?);
                self.poisoned.store(false, Ordering::SeqCst);
            }
        }
        let g = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = g.as_ref().ok_or_else(|| OpenError::Closed(self.path.clone()))?;
        // redb can panic on a damaged page (measured: a B-tree leaf whose entry count or key
        // end was flipped). The request that met it fails; the handle is reopened before the
        // next use, and the rest of the process goes on.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(db))) {
            Ok(r) => r,
            Err(panic) => {
                self.poison();
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(OpenError::Panicked {
                    path: self.path.clone(),
                    why,
                }
                .into())
            }
        }
    }

    /// Runs redb's own check of the file: every B-tree page against the checksum its parent
    /// holds (redb checks them only when it repairs a file, never on a read). Takes the handle
    /// for itself while it runs (about a second per few hundred MB). `Err` names the damage;
    /// the handle is then reopened before its next use (redb refuses writes on it after a
    /// failed check).
    pub fn check_pages(&self) -> Result<(), String> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(OpenError::Closed(self.path.clone()).to_string());
        }
        let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
        let Some(db) = g.as_mut() else {
            return Err(OpenError::Closed(self.path.clone()).to_string());
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity()));
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.poison();
                Err(e.to_string())
            }
            Err(_) => {
                self.poison();
                Err("the page check panicked on damaged pages".into())
            }
        }
    }

    /// Marks the database for reopening before its next use (after a storage error).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Records a failed write: the handle is reopened before its next use ([`Reopening::poison`])
    /// and the store reports the failure ([`Reopening::write_failure`]) until a write succeeds.
    pub fn write_failed(&self, why: impl std::fmt::Display) {
        self.poison();
        *self.write_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    /// Records a successful write: the store is healthy again.
    pub fn write_succeeded(&self) {
        let mut f = self.write_failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_some() {
            *f = None;
        }
    }

    /// Why the last write failed, while no write has succeeded since (a full disk, an I/O
    /// error): what a health check reports.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes the file now, for a clean shutdown while other parts of the process still hold
    /// this store: waits for the use in progress, drops the handle (redb writes its
    /// "recovery required" mark off when its last handle goes, so the next open needs no
    /// repair), and refuses every later use with [`OpenError::Closed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop_quietly(self.db.write().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for Reopening {
    fn drop(&mut self) {
        drop_quietly(self.db.get_mut().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Drops a database handle; a handle redb panicked in (a damaged page) can panic again when
/// dropped (its internal locks are poisoned), which must not take the process down.
fn drop_quietly(db: Option<Database>) {
    if let Some(db) = db {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db))).is_err() {
            tracing::error!("closing a database that failed on damaged data panicked; the handle is gone");
        }
    }
}

fn db_error(path: &Path, holder: &'static str, e: redb::DatabaseError) -> OpenError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
            path: path.into(),
            holder,
        },
        source => OpenError::Db {
            path: path.into(),
            source,
        },
    }
}

/// The layout version of a file, read without writing: `None` for a file without tables.
fn read_layout(db: &redb::ReadOnlyDatabase) -> Result<Option<u64>, redb::Error> {
    let tx = db.begin_read()?;
    let recorded = match tx.open_table(LAYOUT) {
        Ok(t) => t.get(LAYOUT_KEY)?.map(|v| v.value()),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let has_tables = tx.list_tables()?.next().is_some();
    Ok(recorded.or(has_tables.then_some(UNRECORDED_LAYOUT)))
}

/// Checks the layout version again in a write transaction and records it if it is missing.
fn stamp_layout(
    db: &Database,
    path: &Path,
    version: u64,
    older: &[u64],
    migrate: &dyn Fn(&redb::WriteTransaction, u64) -> Result<(), String>,
) -> Result<(), OpenError> {
    let layout_io = |source: redb::Error| OpenError::LayoutIo {
        path: path.into(),
        source,
    };
    let tx = db.begin_write().map_err(|e| layout_io(e.into()))?;
    // Before `open_table`, which creates the table in this transaction.
    let has_tables = tx
        .list_tables()
        .map_err(|e| layout_io(e.into()))?
        .next()
        .is_some();
    let mut t = tx.open_table(LAYOUT).map_err(|e| layout_io(e.into()))?;
    let recorded = t
        .get(LAYOUT_KEY)
        .map_err(|e| layout_io(e.into()))?
        .map(|v| v.value());
    let found = recorded.or(has_tables.then_some(UNRECORDED_LAYOUT));
    // Dropping `tx` on a refusal aborts it.
    refuse_other(path, found, version, older)?;
    if recorded == Some(version) {
        return Ok(());
    }
    t.insert(LAYOUT_KEY, version).map_err(|e| layout_io(e.into()))?;
    drop(t);
    if let Some(old) = found.filter(|&f| f != version) {
        migrate(&tx, old).map_err(|why| OpenError::Migrate {
            path: path.into(),
            from: old,
            to: version,
            why,
        })?;
    }
    tx.commit().map_err(|e| layout_io(e.into()))
}

/// Refuses a file whose layout version is known and is neither `version` nor in `older`.
fn refuse_other(path: &Path, found: Option<u64>, version: u64, older: &[u64]) -> Result<(), OpenError> {
    match found {
        Some(found) if found != version && !older.contains(&found) => Err(OpenError::Layout {
            path: path.into(),
            found,
            reads: version,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use redb::{ReadableDatabase, ReadableTableMetadata};

    const T: redb::TableDefinition<u32, u32> = redb::TableDefinition::new("t");

    #[test]
    fn reopens_after_poison_and_refuses_a_second_holder() {
        let dir = std::env::temp_dir().join(format!("foundation-redb-{}", crate::ids::unique_tag()));
        let path = dir.join("sub").join("db.redb");
        let r = Reopening::open(&path, 1 << 20, "is the test running?").unwrap();
        let put = |k: u32| {
            r.with(|db| {
                let tx = db.begin_write().unwrap();
                tx.open_table(T).unwrap().insert(k, k).unwrap();
                tx.commit().unwrap();
                Ok::<_, OpenError>(())
            })
        };
        put(1).unwrap();
        r.poison();
        put(2).unwrap();
        let n =
            r.with(|db| Ok::<_, OpenError>(db.begin_read().unwrap().open_table(T).unwrap().len().unwrap()));
        assert_eq!(n.unwrap(), 2);
        let e = Reopening::open(&path, 1 << 20, "is the test running?").unwrap_err();
        assert!(e.to_string().contains("is the test running?"), "{e}");
        drop(r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn needs_recovery(path: &Path) -> bool {
        super::needs_recovery(path).unwrap()
    }

    #[test]
    fn close_leaves_a_clean_file_while_the_store_is_still_held() {
        let dir = std::env::temp_dir().join(format!("foundation-close-{}", crate::ids::unique_tag()));
        let path = dir.join("c.redb");
        let r = std::sync::Arc::new(Reopening::open(&path, 1 << 20, "test").unwrap());
        let held = r.clone();
        r.with(|db| {
            let tx = db.begin_write().unwrap();
            tx.open_table(T).unwrap().insert(1, 1).unwrap();
            tx.commit().unwrap();
            Ok::<_, OpenError>(())
        })
        .unwrap();
        assert!(needs_recovery(&path), "redb marks an open file");
        r.close();
        assert!(!needs_recovery(&path), "closed: no repair at the next open");
        r.poison();
        let e = held.with(|_| Ok::<_, OpenError>(())).unwrap_err();
        assert!(matches!(e, OpenError::Closed(_)), "{e}");
        assert!(
            !needs_recovery(&path),
            "a closed store is not reopened, even poisoned"
        );
        drop((r, held));
        let db = Database::open(&path).unwrap();
        assert_eq!(db.begin_read().unwrap().open_table(T).unwrap().len().unwrap(), 1);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn recorded(path: &Path) -> Option<u64> {
        let db = redb::ReadOnlyDatabase::open(path).unwrap();
        read_layout(&db).unwrap()
    }

    #[test]
    fn a_file_without_a_record_is_the_unrecorded_layout() {
        let dir = std::env::temp_dir().join(format!("foundation-layout-{}", crate::ids::unique_tag()));
        let new = dir.join("new.redb");
        drop(Reopening::open_versioned(&new, 1 << 20, "test", 2).unwrap());
        assert_eq!(
            recorded(&new),
            Some(2),
            "a new file gets the version this build writes"
        );

        let old = dir.join("old.redb");
        let db = Database::create(&old).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(1, 1).unwrap();
        tx.commit().unwrap();
        drop(db);
        let before = std::fs::read(&old).unwrap();
        let e = Reopening::open_versioned(&old, 1 << 20, "test", 2).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::Layout {
                    found: UNRECORDED_LAYOUT,
                    reads: 2,
                    ..
                }
            ),
            "a build past layout 1 must not take an unrecorded file for its own: {e}"
        );
        assert_eq!(
            std::fs::read(&old).unwrap(),
            before,
            "a refused file is not written"
        );
        drop(Reopening::open_versioned(&old, 1 << 20, "test", UNRECORDED_LAYOUT).unwrap());
        assert_eq!(recorded(&old), Some(UNRECORDED_LAYOUT));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_layout_the_build_reads_is_upgraded_and_then_refused_by_the_old_build() {
        let dir = std::env::temp_dir().join(format!("foundation-layout-{}", crate::ids::unique_tag()));
        let path = dir.join("s.redb");
        drop(Reopening::open_versioned(&path, 1 << 20, "test", 1).unwrap());
        let e = Reopening::open_upgrading(&path, 1 << 20, "test", 3, &[2]).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::Layout {
                    found: 1,
                    reads: 3,
                    ..
                }
            ),
            "only the older layouts named are read: {e}"
        );
        drop(Reopening::open_upgrading(&path, 1 << 20, "test", 2, &[1]).unwrap());
        assert_eq!(recorded(&path), Some(2), "upgraded on open");
        let e = Reopening::open_versioned(&path, 1 << 20, "test", 1).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::Layout {
                    found: 2,
                    reads: 1,
                    ..
                }
            ),
            "a build of the older layout refuses the upgraded file: {e}"
        );
        drop(Reopening::open_upgrading(&path, 1 << 20, "test", 2, &[1]).unwrap());
        assert_eq!(recorded(&path), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
