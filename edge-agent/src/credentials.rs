//! Device credentials for MQTT password authentication (`[mqtt] auth = "password"`): one
//! file, `credentials.toml` in the data directory (or `[mqtt] credentials_file`), that maps each
//! device id to an Argon2id hash of its password (a PHC string: the salt and parameters with
//! it). Written by `edge-agent devices add/remove`, read by the running agent, which picks up
//! changes without a restart (the file's modification time is checked at each connect).
//!
//! A device connects with its device id as both MQTT client id and username, and its
//! password. Verification runs on [`MAX_VERIFYING`] threads of its own, each reusing one
//! block of memory: Argon2id is deliberately slow and memory-hard (19 MiB and tens of
//! milliseconds each), so a burst of connections, honest or not, costs the agent a fixed amount
//! of memory ([`MAX_VERIFYING`] × the hash's memory, at most [`MAX_M_COST_KIB`] KiB each) and at
//! most that many cores. (Allocating it per verification on a pool of threads let the C
//! allocator keep a copy per thread: 627 MiB peak in a 100-device connection storm.) Secrets
//! never reach a log, an error message or `list`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use argon2::password_hash::{self, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

/// Verifications running at once (each holds Argon2id's 19 MiB).
pub const MAX_VERIFYING: usize = 2;

/// The largest Argon2 memory cost a stored hash may ask for, KiB (a hash asking more is refused
/// rather than allocated).
pub const MAX_M_COST_KIB: u32 = 64 << 10;

/// File name in the data directory.
pub const FILE_NAME: &str = "credentials.toml";

/// One device's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Argon2id PHC string of its password; empty for a device that logs in with its client
    /// certificate only (`devices add --certificate`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// When it was added, ms since the Unix epoch.
    pub added_ms: i64,
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Device id → entry.
    #[serde(default)]
    pub devices: BTreeMap<String, Entry>,
}

impl Credentials {
    /// Reads `path`; a missing file is no devices.
    pub fn load(path: &Path) -> anyhow::Result<Credentials> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{} does not parse", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `path` whole (a temporary file renamed over it), readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# Device credentials (edge-agent devices add/remove/list): Argon2id hashes, no secrets.\n{}",
            toml::to_string(self)?
        );
        foundation::files::write_private(path, &text)
            .with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// Adds or replaces `id` with `password`.
    pub fn set(&mut self, id: &str, password: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            vocab::wire::is_valid_device_id(id),
            "{id:?} is not a device id (1-32 of A-Z a-z 0-9 - _ .)"
        );
        anyhow::ensure!(
            (8..=64).contains(&password.len()),
            "a password is 8 to 64 bytes long (the firmware holds 64)"
        );
        self.devices.insert(
            id.to_string(),
            Entry {
                hash: hash(password)?,
                added_ms: foundation::time::now_ms(),
            },
        );
        Ok(())
    }

    /// Adds or replaces `id` as a device that logs in with a client certificate (its subject's
    /// CN is the id) and has no password.
    pub fn set_certificate(&mut self, id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            vocab::wire::is_valid_device_id(id),
            "{id:?} is not a device id (1-32 of A-Z a-z 0-9 - _ .)"
        );
        self.devices.insert(
            id.to_string(),
            Entry {
                hash: String::new(),
                added_ms: foundation::time::now_ms(),
            },
        );
        Ok(())
    }

    /// Whether `id` is known and `password` is its password (Argon2id: slow on purpose).
    pub fn verify(&self, id: &str, password: &str) -> bool {
        self.verify_with(id, password, &mut Vec::new())
    }

    /// [`Credentials::verify`] with `memory` as Argon2's working memory (kept for the next).
    pub fn verify_with(&self, id: &str, password: &str, memory: &mut Vec<Block>) -> bool {
        let Some(e) = self.devices.get(id) else {
            return false;
        };
        verify_phc(&e.hash, password, memory).unwrap_or(false)
    }
}

/// Whether `password` matches the PHC string `phc`, computed in `memory`.
fn verify_phc(phc: &str, password: &str, memory: &mut Vec<Block>) -> Option<bool> {
    let h = PasswordHash::new(phc).ok()?;
    let algorithm = Algorithm::try_from(h.algorithm).ok()?;
    let version = h.version.map_or(Ok(Version::V0x13), Version::try_from).ok()?;
    let params = Params::try_from(&h).ok()?;
    if params.m_cost() > MAX_M_COST_KIB {
        return None;
    }
    let expected = h.hash?;
    let mut salt = [0u8; 64];
    let salt = h.salt?.decode_b64(&mut salt).ok()?;
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = [0u8; 64];
    let out = out.get_mut(..expected.len())?;
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut *out, &mut memory[..blocks])
        .ok()?;
    // Output's comparison runs in constant time.
    Some(password_hash::Output::new(out).ok()? == expected)
}

/// An Argon2id PHC string of `password` with a fresh random salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).context("no randomness for a salt")?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

/// A new random password: 24 characters of 0-9 A-Z a-z (~143 bits).
pub fn generate_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).context("no randomness for a password")?;
        // Rejection sampling: no bias toward the first characters.
        for x in b {
            if usize::from(x) < 4 * ALPHABET.len() && out.len() < 24 {
                out.push(char::from(ALPHABET[usize::from(x) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// The running agent's view of the file: reloaded when it changes, verifications bounded.
pub struct Checker {
    front_token: Arc<str>,
    path: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<Credentials>)>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the front's token.
        f.debug_struct("Checker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One verification for the workers.
struct Job {
    creds: Arc<Credentials>,
    id: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// Reads `path` (it may not exist yet: every device is refused until it does).
    pub fn new(path: PathBuf, metrics: Arc<crate::metrics::Metrics>) -> anyhow::Result<Arc<Checker>> {
        let creds = Credentials::load(&path)?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        // Connections wait in this queue (bounded: a full queue refuses at once).
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..MAX_VERIFYING {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("mqtt-auth-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return, // the checker is gone
                        };
                        let ok = job.creds.verify_with(&job.id, &job.password, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                })
                .context("starting a password verifier")?;
        }
        let mut token = [0u8; 32];
        getrandom::getrandom(&mut token).context("no randomness for the front's token")?;
        Ok(Arc::new(Checker {
            front_token: token
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
            path,
            current: Mutex::new((mtime, Arc::new(creds))),
            jobs,
            metrics,
        }))
    }

    /// The credentials as the file says now (re-read if it changed; kept if it no longer reads).
    fn credentials(&self) -> Arc<Credentials> {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if mtime != cur.0 {
            match Credentials::load(&self.path) {
                Ok(c) => *cur = (mtime, Arc::new(c)),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "device credentials not reloaded"),
            }
        }
        cur.1.clone()
    }

    /// The secret the authorizing front logs a certificate device in with (made per process,
    /// never written anywhere): the front has verified the device's certificate and that its
    /// CN is the client id.
    pub fn front_token(&self) -> Arc<str> {
        self.front_token.clone()
    }

    /// Whether a connection with this client id, username and password may go on.
    pub async fn check(&self, client_id: String, username: String, password: String) -> bool {
        use subtle::ConstantTimeEq as _;
        let ok = if client_id != username || client_id.is_empty() {
            false
        } else if bool::from(password.as_bytes().ct_eq(self.front_token.as_bytes())) {
            // A certificate device through the front: listed devices only, so `devices remove`
            // revokes it too.
            self.credentials().devices.contains_key(&client_id)
        } else {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let job = Job {
                creds: self.credentials(),
                id: client_id,
                password,
                reply,
            };
            match self.jobs.try_send(job) {
                Ok(()) => answer.await.unwrap_or(false),
                Err(_) => false, // 1024 connections already waiting
            }
        };
        if !ok {
            crate::metrics::add(&self.metrics.mqtt_auth_refused, 1);
            tracing::warn!(
                client_id = %foundation::logging::client_text(&username),
                "MQTT connection refused: unknown device, wrong password, or client id and username differ"
            );
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_nothing_else_does() {
        let mut c = Credentials::default();
        c.set("dev-1", "correct horse battery").unwrap();
        assert!(c.verify("dev-1", "correct horse battery"));
        assert!(!c.verify("dev-1", "correct horse batterY"));
        assert!(!c.verify("dev-2", "correct horse battery"));
        assert!(c.set("bad id!", "long enough").is_err());
        assert!(c.set("dev-3", "short").is_err());
        // The same password hashes differently for another device (salted).
        c.set("dev-2", "correct horse battery").unwrap();
        assert_ne!(c.devices["dev-1"].hash, c.devices["dev-2"].hash);
        assert!(c.devices["dev-1"].hash.starts_with("$argon2id$"));
        assert!(!c.devices["dev-1"].hash.contains("horse"));
    }

    #[test]
    fn verification_reuses_its_memory_and_refuses_a_costly_hash() {
        let mut c = Credentials::default();
        c.set("d1", "password-one").unwrap();
        let mut memory = Vec::new();
        assert!(c.verify_with("d1", "password-one", &mut memory));
        let blocks = memory.len();
        assert_eq!(blocks, 19 * 1024, "Argon2's default 19 MiB, in 1 KiB blocks");
        assert!(!c.verify_with("d1", "password-two", &mut memory));
        assert_eq!(memory.len(), blocks, "the same memory again");
        // A hash from elsewhere asking for 1 GiB is refused, not computed.
        let costly = c.devices["d1"].hash.replace("m=19456", "m=1048576");
        c.devices.get_mut("d1").unwrap().hash = costly;
        assert!(!c.verify_with("d1", "password-one", &mut memory));
        assert_eq!(memory.len(), blocks);
    }

    #[test]
    fn the_file_round_trips_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("creds-{}", foundation::ids::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert_eq!(Credentials::load(&path).unwrap(), Credentials::default());
        let mut c = Credentials::default();
        c.set("dev-1", &generate_password().unwrap()).unwrap();
        c.save(&path).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), c);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (generate_password().unwrap(), generate_password().unwrap());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[tokio::test]
    async fn the_checker_follows_the_file_and_wants_id_and_username_equal() {
        let dir = std::env::temp_dir().join(format!("checker-{}", foundation::ids::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let chk = Checker::new(path.clone(), metrics.clone()).unwrap();
        assert!(
            !chk.check("d1".into(), "d1".into(), "password-1".into()).await,
            "no file yet"
        );
        let mut c = Credentials::default();
        c.set("d1", "password-1").unwrap();
        c.save(&path).unwrap();
        // A later modification time than the first look (coarse file-system clocks).
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(chk.check("d1".into(), "d1".into(), "password-1".into()).await);
        assert!(!chk.check("d1".into(), "d2".into(), "password-1".into()).await);
        assert!(!chk.check("d1".into(), "d1".into(), "password-2".into()).await);
        assert_eq!(
            metrics
                .mqtt_auth_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
