//! The users file: principals, their SCRAM credentials, and what each may do.
//!
//! ```toml
//! # Managed by `cloud-broker users add/remove/list`.
//! [users.bridge-plant-7]
//! produce = ["telemetry", "device-status", "gateways"]
//! transactional_ids = ["bridge-*"]
//! [users.bridge-plant-7.SCRAM-SHA-256]
//! iterations = 8192
//! salt = "…"
//! stored_key = "…"
//! server_key = "…"
//!
//! [users.ANONYMOUS]            # clients of a listener without authentication
//! consume = ["*"]
//! groups = ["iot-monitor-*"]
//! ```
//!
//! A pattern is a name, a prefix ending in `*`, or `*` alone. `produce` lets a principal write
//! a topic (and see it in Metadata), `consume` read it, `groups` join and commit in a consumer
//! group, `transactional_ids` use a transactional producer id; `admin` allows everything,
//! topic and cluster administration included. Each credential is what SCRAM keeps of a
//! password (salt, iterations, `StoredKey`, `ServerKey`): the file holds no password. It is
//! written with mode 0600 and read again when it changes, so a change takes effect without a
//! restart (a new connection's login and every request after it); a file that no longer parses
//! keeps the last good one in force and is logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::scram::{Credential, Mechanism};

/// The principal of a client that has not authenticated (Kafka's `User:ANONYMOUS`).
pub const ANONYMOUS: &str = "ANONYMOUS";

/// The longest principal name accepted.
pub const MAX_NAME: usize = 255;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Principals by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

/// One principal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct User {
    /// Topics it may produce to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub produce: Vec<String>,
    /// Topics it may consume.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consume: Vec<String>,
    /// Consumer groups it may use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Transactional ids it may use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transactional_ids: Vec<String>,
    /// Everything, administration included.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// SCRAM-SHA-256 credential (also PLAIN's).
    #[serde(rename = "SCRAM-SHA-256", skip_serializing_if = "Option::is_none")]
    pub scram_sha_256: Option<Credential>,
    /// SCRAM-SHA-512 credential.
    #[serde(rename = "SCRAM-SHA-512", skip_serializing_if = "Option::is_none")]
    pub scram_sha_512: Option<Credential>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Write records to a topic.
    Produce(&'a str),
    /// Read records of a topic.
    Consume(&'a str),
    /// See a topic (Metadata, offsets): produce or consume rights.
    Describe(&'a str),
    /// Use a consumer group.
    Group(&'a str),
    /// Use a transactional id.
    Transaction(&'a str),
    /// Get a producer id without a transactional id: produce rights on any topic.
    IdempotentWrite,
    /// Create, delete and configure topics, delete groups and records, describe the cluster.
    Admin,
}

/// Whether `pattern` (a name, `prefix*`, or `*`) covers `name`.
pub fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| covers(p, name))
}

impl User {
    /// Whether this principal may do `access`.
    pub fn may(&self, access: Access<'_>) -> bool {
        self.admin
            || match access {
                Access::Produce(t) => any(&self.produce, t),
                Access::Consume(t) => any(&self.consume, t),
                Access::Describe(t) => any(&self.produce, t) || any(&self.consume, t),
                Access::Group(g) => any(&self.groups, g),
                Access::Transaction(id) => any(&self.transactional_ids, id),
                Access::IdempotentWrite => !self.produce.is_empty(),
                Access::Admin => false,
            }
    }

    /// The credential for `mechanism` (PLAIN checks against either SCRAM credential).
    pub fn credential(&self, mechanism: Mechanism) -> Option<(Mechanism, &Credential)> {
        match mechanism {
            Mechanism::ScramSha256 => self.scram_sha_256.as_ref().map(|c| (mechanism, c)),
            Mechanism::ScramSha512 => self.scram_sha_512.as_ref().map(|c| (mechanism, c)),
            Mechanism::Plain => self
                .scram_sha_256
                .as_ref()
                .map(|c| (Mechanism::ScramSha256, c))
                .or_else(|| self.scram_sha_512.as_ref().map(|c| (Mechanism::ScramSha512, c))),
        }
    }

    /// Whether the user can log in at all.
    pub fn has_password(&self) -> bool {
        self.scram_sha_256.is_some() || self.scram_sha_512.is_some()
    }

    /// One line of what it may do, for `users list`.
    pub fn rights(&self) -> String {
        if self.admin {
            return "admin".into();
        }
        let mut out = Vec::new();
        for (what, list) in [
            ("produce", &self.produce),
            ("consume", &self.consume),
            ("groups", &self.groups),
            ("transactional_ids", &self.transactional_ids),
        ] {
            if !list.is_empty() {
                out.push(format!("{what}={}", list.join(",")));
            }
        }
        if out.is_empty() {
            "nothing".into()
        } else {
            out.join(" ")
        }
    }
}

/// Checks a principal name: printable, no spaces or quotes, at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= MAX_NAME,
        "a user name is 1 to {MAX_NAME} bytes"
    );
    anyhow::ensure!(
        name.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'),
        "a user name is printable ASCII without spaces, quotes or backslashes: {name:?}"
    );
    Ok(())
}

/// Checks a pattern: a name, `prefix*` or `*`.
pub fn check_pattern(p: &str) -> anyhow::Result<()> {
    let body = p.strip_suffix('*').unwrap_or(p);
    anyhow::ensure!(
        !p.is_empty() && !body.contains('*') && body.chars().all(|c| !c.is_control() && c != ' '),
        "a pattern is a name, a prefix ending in '*', or '*': {p:?}"
    );
    Ok(())
}

impl UsersFile {
    /// Reads and checks a users file.
    pub fn read(path: &Path) -> anyhow::Result<UsersFile> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let f: UsersFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        f.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(f)
    }

    /// Reads a users file, or an empty one if there is none.
    pub fn read_or_empty(path: &Path) -> anyhow::Result<UsersFile> {
        if path.exists() {
            UsersFile::read(path)
        } else {
            Ok(UsersFile::default())
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        for (name, u) in &self.users {
            check_name(name)?;
            for p in u
                .produce
                .iter()
                .chain(&u.consume)
                .chain(&u.groups)
                .chain(&u.transactional_ids)
            {
                check_pattern(p).map_err(|e| anyhow::anyhow!("user {name}: {e}"))?;
            }
            if let Some(c) = &u.scram_sha_256 {
                c.check(Mechanism::ScramSha256)
                    .map_err(|e| anyhow::anyhow!("user {name}: {e}"))?;
            }
            if let Some(c) = &u.scram_sha_512 {
                c.check(Mechanism::ScramSha512)
                    .map_err(|e| anyhow::anyhow!("user {name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Writes the file whole (a temporary file renamed over it), readable by its owner only.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# Kafka principals: SCRAM credentials (no passwords) and rights.\n\
             # Managed by `cloud-broker users`; the running broker reads it again when it changes.\n\n{}",
            toml::to_string(self)?
        );
        foundation::files::write_private(path, &text)?;
        Ok(())
    }
}

/// The users file as the running broker sees it: read again when its modification time
/// changes, looked at no more than once a second.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    checked: Instant,
    mtime: Option<SystemTime>,
    file: Arc<UsersFile>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Users {
    /// Reads `path` (a missing file is no users: everyone is refused until one is added).
    pub fn open(path: PathBuf) -> anyhow::Result<Users> {
        let file = UsersFile::read_or_empty(&path)?;
        if file.users.is_empty() {
            warn!(path = %path.display(), "no Kafka users: add one with `cloud-broker users add`");
        }
        Ok(Users {
            state: Mutex::new(Loaded {
                checked: Instant::now(),
                mtime: mtime(&path),
                file: Arc::new(file),
            }),
            path,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The users now in force; `fresh` looks at the file at once (a login), otherwise at most
    /// once a second.
    pub fn current(&self, fresh: bool) -> Arc<UsersFile> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if fresh || s.checked.elapsed() >= Duration::from_secs(1) {
            s.checked = Instant::now();
            let m = mtime(&self.path);
            if m != s.mtime {
                s.mtime = m;
                match UsersFile::read_or_empty(&self.path) {
                    Ok(f) => s.file = Arc::new(f),
                    Err(e) => {
                        warn!(error = %e, "the users file no longer reads; the last good one stays in force")
                    }
                }
            }
        }
        s.file.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_names_prefixes_and_all() {
        assert!(covers("telemetry", "telemetry"));
        assert!(!covers("telemetry", "telemetry2"));
        assert!(covers("plant-7.*", "plant-7.telemetry"));
        assert!(!covers("plant-7.*", "plant-8.telemetry"));
        assert!(covers("*", "anything"));
        assert!(check_pattern("a*b").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a b").is_err());
        check_pattern("plant-7.*").unwrap();
    }

    #[test]
    fn rights_are_what_the_lists_say() {
        let u = User {
            produce: vec!["telemetry".into()],
            consume: vec!["readings.*".into()],
            groups: vec!["dash".into()],
            ..Default::default()
        };
        assert!(u.may(Access::Produce("telemetry")));
        assert!(!u.may(Access::Produce("readings.a")));
        assert!(u.may(Access::Consume("readings.a")));
        assert!(u.may(Access::Describe("telemetry")) && u.may(Access::Describe("readings.b")));
        assert!(!u.may(Access::Describe("secrets")));
        assert!(u.may(Access::Group("dash")) && !u.may(Access::Group("other")));
        assert!(u.may(Access::IdempotentWrite));
        assert!(!u.may(Access::Transaction("t")) && !u.may(Access::Admin));
        let admin = User {
            admin: true,
            ..Default::default()
        };
        assert!(admin.may(Access::Admin) && admin.may(Access::Produce("x")));
        assert!(!User::default().may(Access::IdempotentWrite));
    }

    #[test]
    fn the_file_round_trips_and_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("users-{}", std::process::id()));
        let path = dir.join("users.toml");
        let _ = std::fs::remove_dir_all(&dir);
        let users = Users::open(path.clone()).unwrap();
        assert!(users.current(true).users.is_empty());
        let mut f = UsersFile::default();
        f.users.insert(
            "bridge".into(),
            User {
                produce: vec!["telemetry".into()],
                scram_sha_256: Some(Credential::new(Mechanism::ScramSha256, "pw", 4096).unwrap()),
                ..Default::default()
            },
        );
        f.write(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(UsersFile::read(&path).unwrap(), f);
        assert_eq!(*users.current(true), f);
        // A broken file keeps the last good one.
        std::fs::write(&path, "users = 7").unwrap();
        // A modification time of its own, whatever the file system's clock granularity.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(*users.current(true), f);
        assert!(UsersFile::read(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
