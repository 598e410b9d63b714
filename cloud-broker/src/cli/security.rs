//! `cloud-broker users` and `cloud-broker certs`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::security::scram::{Credential, Mechanism, DEFAULT_ITERATIONS};
use crate::security::users::{check_name, check_pattern, User, UsersFile, ANONYMOUS};

/// Where the users file is.
#[derive(Debug, Args)]
pub(super) struct UsersFileArgs {
    /// The users file [default: the configuration's `[security] users_file`, else
    /// `<data_dir>/users.toml`].
    #[arg(long, env = "CLOUD_USERS_FILE")]
    file: Option<PathBuf>,
    /// Configuration file (TOML), for `[security] users_file` and `data_dir`.
    #[arg(long, env = "CLOUD_CONFIG")]
    config: Option<PathBuf>,
}

impl UsersFileArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let cfg = match &self.config {
            Some(c) => crate::config::Config::from_file(c)?,
            None => crate::config::Config::default(),
        };
        Ok(match &cfg.security {
            Some(s) => s.users_path(&cfg.data_dir),
            None => cfg.data_dir.join("users.toml"),
        })
    }
}

/// `cloud-broker users …`.
#[derive(Debug, Subcommand)]
pub(super) enum UsersCmd {
    /// Add a principal, or replace one (its password and rights): SCRAM-SHA-256 and
    /// SCRAM-SHA-512 credentials (PLAIN checks against them) and what it may do. Without
    /// --password-stdin a password is made and printed once. Patterns: a name, a prefix
    /// ending in '*', or '*'. The running broker reads the file again when it changes.
    Add {
        /// The principal (the SASL username, or a client certificate's CN; `ANONYMOUS` is
        /// every client of a listener without a login).
        name: String,
        /// Read the password from standard input (one line).
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// No password: rights only (ANONYMOUS, or a principal that logs in with a client
        /// certificate).
        #[arg(long)]
        no_password: bool,
        /// Topics it may produce to (repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        produce: Vec<String>,
        /// Topics it may consume.
        #[arg(long, value_delimiter = ',')]
        consume: Vec<String>,
        /// Consumer groups it may use.
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        /// Transactional ids it may use.
        #[arg(long = "transactional-id", value_delimiter = ',')]
        transactional_ids: Vec<String>,
        /// Everything: topic and cluster administration too.
        #[arg(long)]
        admin: bool,
        /// PBKDF2 iterations of the SCRAM credentials (4096 to 1048576).
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
        #[command(flatten)]
        file: UsersFileArgs,
    },
    /// Remove a principal: new logins fail at once; connections already logged in lose every
    /// right within a second.
    Remove {
        /// The principal.
        name: String,
        #[command(flatten)]
        file: UsersFileArgs,
    },
    /// List the principals, whether each can log in, and its rights (never a secret).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        file: UsersFileArgs,
    },
}

fn made_password() -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut raw = [0u8; 18];
    getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Runs a `users` command.
pub(super) fn users(cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Add {
            name,
            password_stdin,
            no_password,
            produce,
            consume,
            groups,
            transactional_ids,
            admin,
            iterations,
            file,
        } => {
            check_name(&name)?;
            for p in produce
                .iter()
                .chain(&consume)
                .chain(&groups)
                .chain(&transactional_ids)
            {
                check_pattern(p)?;
            }
            anyhow::ensure!(
                (crate::security::scram::MIN_ITERATIONS..=crate::security::scram::MAX_ITERATIONS)
                    .contains(&iterations),
                "--iterations must be 4096..=1048576"
            );
            anyhow::ensure!(
                name != ANONYMOUS || no_password,
                "{ANONYMOUS} is the principal of clients without a login: add it with --no-password"
            );
            let path = file.path()?;
            let mut users = UsersFile::read_or_empty(&path)?;
            let (password, printed) = if no_password {
                (None, false)
            } else if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let pw = line.trim_end_matches(['\n', '\r']).to_string();
                anyhow::ensure!(!pw.is_empty(), "an empty password on standard input");
                (Some(pw), false)
            } else {
                (Some(made_password()?), true)
            };
            let mut user = User {
                produce,
                consume,
                groups,
                transactional_ids,
                admin,
                ..Default::default()
            };
            if let Some(pw) = &password {
                user.scram_sha_256 = Some(Credential::new(Mechanism::ScramSha256, pw, iterations)?);
                user.scram_sha_512 = Some(Credential::new(Mechanism::ScramSha512, pw, iterations)?);
            }
            let rights = user.rights();
            let replaced = users.users.insert(name.clone(), user).is_some();
            users.write(&path)?;
            println!(
                "{} {name} ({rights}) in {}",
                if replaced { "replaced" } else { "added" },
                path.display()
            );
            if printed {
                if let Some(pw) = password {
                    println!("password (shown once): {pw}");
                }
            }
            Ok(())
        }
        UsersCmd::Remove { name, file } => {
            let path = file.path()?;
            let mut users = UsersFile::read(&path)?;
            anyhow::ensure!(
                users.users.remove(&name).is_some(),
                "no user {name:?} in {}",
                path.display()
            );
            users.write(&path)?;
            println!("removed {name} from {}", path.display());
            Ok(())
        }
        UsersCmd::List { json, file } => {
            let path = file.path()?;
            let users = UsersFile::read_or_empty(&path)?;
            if json {
                let list: Vec<serde_json::Value> = users
                    .users
                    .iter()
                    .map(|(name, u)| {
                        serde_json::json!({
                            "name": name,
                            "login": u.has_password(),
                            "produce": u.produce,
                            "consume": u.consume,
                            "groups": u.groups,
                            "transactional_ids": u.transactional_ids,
                            "admin": u.admin,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!("{:<32} {:<6} RIGHTS", "NAME", "LOGIN");
                for (name, u) in &users.users {
                    let login = if u.has_password() { "scram" } else { "-" };
                    println!("{name:<32} {login:<6} {}", u.rights());
                }
            }
            Ok(())
        }
    }
}

/// `cloud-broker certs`.
#[derive(Debug, Args)]
pub(super) struct CertsArgs {
    /// Where the CA and certificates go (`ca.pem` and `ca.key` are made there once and reused).
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Names the broker is reached by (DNS names or IP addresses) in its server certificate
    /// `broker.pem`; repeat, or comma-separated.
    #[arg(long = "host", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
    /// Client certificates to make, each `<name>.pem` with the principal `name` as its CN.
    #[arg(long = "client", value_delimiter = ',')]
    clients: Vec<String>,
    /// Cluster nodes' certificates for mutual TLS between nodes (`node-<id>.pem`, server and
    /// client use, CN `node-<id>`, the --host names), by node id.
    #[arg(long = "node", value_delimiter = ',')]
    nodes: Vec<u64>,
    /// Days the new certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// Makes development certificates (`cloud-broker certs`).
pub(super) fn certs(a: CertsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.days > 0, "--days must be at least 1");
    let ca = foundation::tls::DevCa::open_or_create(&a.dir, "iot-appliance development CA")?;
    let print = |what: &str, p: &Path| println!("{what:<24} {}", p.display());
    print("CA certificate", &ca.cert_path());
    let server = ca.issue(
        "broker",
        "broker",
        &a.hosts,
        foundation::tls::Role::Server,
        a.days,
    )?;
    print("broker certificate", &server.cert);
    print("broker key", &server.key);
    for name in &a.clients {
        check_name(name)?;
        let file = format!("client-{name}");
        let c = ca.issue(&file, name, &[], foundation::tls::Role::Client, a.days)?;
        print(&format!("client {name}"), &c.cert);
    }
    for id in &a.nodes {
        let name = format!("node-{id}");
        let c = ca.issue(&name, &name, &a.hosts, foundation::tls::Role::Node, a.days)?;
        print(&format!("node {id}"), &c.cert);
    }
    println!(
        "development certificates only: the CA key is in {}",
        a.dir.join("ca.key").display()
    );
    Ok(())
}
