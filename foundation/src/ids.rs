//! Random ids.

use std::hash::{BuildHasher, Hasher};

/// A random-enough `u64` (SipHash, with the process's random key, of the time and the pid);
/// not for cryptography.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// `<pid>-<random hex>`: a name no other process or call picks (scratch directories).
pub fn unique_tag() -> String {
    format!("{}-{:x}", std::process::id(), random_u64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ() {
        let v: std::collections::BTreeSet<u64> = (0..1000).map(|_| super::random_u64()).collect();
        assert_eq!(v.len(), 1000);
        assert_ne!(super::unique_tag(), super::unique_tag());
    }
}
