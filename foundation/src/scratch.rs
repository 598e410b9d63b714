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

/// A small tmpfs mounted for a test, unmounted (lazily) and removed on drop: a disk that can
/// really fill up. Mounting needs root (the README's test command runs as root).
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `<tmp>/<tag>-<unique>`.
    pub fn mount(tag: &str, mib: u32) -> std::io::Result<Tmpfs> {
        let path = std::env::temp_dir().join(format!("{tag}-{}", crate::ids::unique_tag()));
        std::fs::create_dir_all(&path)?;
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()?;
        if !st.success() {
            let _ = std::fs::remove_dir(&path);
            return Err(std::io::Error::other(format!(
                "mounting a tmpfs at {} failed ({st}): this needs root",
                path.display()
            )));
        }
        Ok(Tmpfs { path })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes every free byte with a file named `filler` (returned; delete it to free them).
    pub fn fill(&self) -> std::io::Result<PathBuf> {
        let filler = self.path.join("filler");
        // dd stops at ENOSPC with an error status: that is the point.
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status()?;
        Ok(filler)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
