//! Scratch directories for tests and benchmarks, removed when dropped.

use std::path::{Path, PathBuf};

/// A directory of its own under the system's temporary directory, removed (with everything in
/// it) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Makes `<tmp>/<tag>-<unique>`.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{tag}-{}", crate::ids::unique_tag()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_are_distinct_and_each_goes_away() {
        let (a, b) = (TempDir::new("scratch").unwrap(), TempDir::new("scratch").unwrap());
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        assert!(b.path().is_dir());
    }
}
