//! The disk reserve: room kept for the writes that free space.

use std::path::Path;
use std::sync::atomic::Ordering;

/// Bytes the file system holding `path` has available to this process (`statvfs`).
pub fn fs_available(path: &Path) -> std::io::Result<u64> {
    fs_space(path).map(|(_, available)| available)
}

/// `(total, available to this process)` bytes of the file system holding `path` (a file
/// or a directory).
pub fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

/// A disk reserve: writes that grow a store are refused while less than `bytes` are free for
/// it (the file system's available bytes plus the pages free inside the file), so the writes
/// that free space (retention, deleting a topic, a quarantine) always find room, and a store
/// never runs the disk to its last byte. Space freed inside the file counts at once.
#[derive(Debug)]
pub struct Reserve {
    bytes: std::sync::atomic::AtomicU64,
    /// Pages free inside the file, as last counted (counting walks the trees): reused for a
    /// second.
    inside: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl Reserve {
    /// A reserve of `bytes` (0: none).
    pub fn new(bytes: u64) -> Reserve {
        Reserve {
            bytes: std::sync::atomic::AtomicU64::new(bytes),
            inside: std::sync::Mutex::new(None),
        }
    }

    /// The reserve.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Sets the reserve.
    pub fn set(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// `Err` (why, in words) if a write that grows the store at `path` must be refused; `tx` is
    /// the write about to be made (its view counts the pages free inside the file).
    pub fn check(&self, path: &Path, tx: &redb::WriteTransaction) -> Result<(), String> {
        let reserve = self.bytes();
        if reserve == 0 {
            return Ok(());
        }
        let fs = fs_available(path).map_err(|e| format!("free space of {}: {e}", path.display()))?;
        if fs >= reserve {
            return Ok(());
        }
        let mut cache = self.inside.lock().unwrap_or_else(|e| e.into_inner());
        let inside = match *cache {
            Some((at, n)) if at.elapsed() < std::time::Duration::from_secs(1) => n,
            _ => {
                // Only pages the disk already backs count: redb grows its file ahead of use,
                // and a sparse tail holds no disk blocks yet.
                use std::os::unix::fs::MetadataExt;
                let backed = std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0);
                let n = match tx.stats() {
                    Ok(st) => backed.saturating_sub(st.allocated_pages() * st.page_size() as u64),
                    Err(_) => 0,
                };
                *cache = Some((std::time::Instant::now(), n));
                n
            }
        };
        if fs + inside >= reserve {
            return Ok(());
        }
        Err(format!(
            "{} bytes free for {} ({} on the file system, {} inside the file), below the reserve of {} \
             bytes: writes that add data are refused until retention, a deleted topic or more \
             disk frees space",
            fs + inside,
            path.display(),
            fs,
            inside,
            reserve
        ))
    }

    /// Forgets the count of free pages inside the file (after a write that freed some).
    pub fn freed(&self) {
        *self.inside.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
