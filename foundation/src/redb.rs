//! A redb database that reopens itself after a failed write.
//!
//! After an I/O error in a commit, redb refuses further writes on that handle; the store
//! marks it ([`Reopening::poison`]) and the next use closes and reopens the file (redb
//! allows one open handle per file, so the old one is dropped first). A disk that filled up
//! and was freed, or a transient I/O error, is thereby recovered without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use redb::Database;

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
}

/// A redb database file, reopened before its next use after a failure.
#[derive(Debug)]
pub struct Reopening {
    path: PathBuf,
    cache_bytes: usize,
    holder: &'static str,
    db: RwLock<Option<Database>>,
    poisoned: AtomicBool,
}

impl Reopening {
    /// Opens (or creates, with its directory) the database at `path` with a page cache of
    /// `cache_bytes`. `holder` names who likely has the file open when another process does
    /// (e.g. "is the agent running?").
    pub fn open(path: &Path, cache_bytes: usize, holder: &'static str) -> Result<Reopening, OpenError> {
        if let Some(dir) = path.parent() {
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
        };
        *r.db.write().unwrap_or_else(|e| e.into_inner()) = Some(r.open_db()?);
        Ok(r)
    }

    fn open_db(&self) -> Result<Database, OpenError> {
        Database::builder()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
                    path: self.path.clone(),
                    holder: self.holder,
                },
                source => OpenError::Db {
                    path: self.path.clone(),
                    source,
                },
            })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the database, reopening it first if a failure poisoned it.
    pub fn with<T, E: From<OpenError>>(&self, f: impl FnOnce(&Database) -> Result<T, E>) -> Result<T, E> {
        if self.poisoned.load(Ordering::SeqCst) {
            let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
            if self.poisoned.load(Ordering::SeqCst) {
                *g = None; // close before reopening: redb allows one open per file
                *g = Some(self.open_db()?);
                self.poisoned.store(false, Ordering::SeqCst);
            }
        }
        let g = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = g.as_ref().ok_or_else(|| OpenError::Closed(self.path.clone()))?;
        f(db)
    }

    /// Marks the database for reopening before its next use (after a storage error).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
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
}
