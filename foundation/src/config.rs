//! Configuration files (TOML).

use std::path::{Path, PathBuf};

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML for this program (unknown keys are errors too, where the type
    /// says `deny_unknown_fields`).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
}

/// Reads and parses a TOML file; errors name the file.
pub fn from_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::Parse {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct C {
        a: u32,
    }

    #[test]
    fn errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("foundation-config-{}", crate::ids::unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "a = 3\n").unwrap();
        assert_eq!(from_file::<C>(&p).unwrap(), C { a: 3 });
        std::fs::write(&p, "a = 3\nb = 1\n").unwrap();
        let e = from_file::<C>(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains('b'), "{e}");
        let e = from_file::<C>(&dir.join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
