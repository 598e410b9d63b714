//! Files that hold secrets or their hashes: written whole, readable by their owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `text` to `path` with mode 0600, whole or not at all: a temporary file beside it,
/// synced, then renamed over it (a reader never sees half a file; a crash leaves the old one).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_private_bytes(path, text.as_bytes())
}

/// [`write_private`] for bytes.
pub fn write_private_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let named = |e: std::io::Error, p: &Path| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| named(e, dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| named(e, tmp))?;
    f.write_all(bytes).map_err(|e| named(e, tmp))?;
    f.sync_all().map_err(|e| named(e, tmp))?;
    std::fs::rename(tmp, path).map_err(|e| named(e, path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_private_file_is_whole_and_its_owners_alone() {
        let dir = std::env::temp_dir().join(format!("private-{}", std::process::id()));
        let path = dir.join("sub").join("secret.toml");
        super::write_private(&path, "one").unwrap();
        super::write_private(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join("sub").join("secret.toml.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
