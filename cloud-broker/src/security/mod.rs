//! Who may use the Kafka listeners, and for what: listeners with TLS and SASL, the users
//! file, and the authorization every request passes.
//!
//! ```toml
//! kafka_listen = "127.0.0.1:9092"        # the plaintext listener: keep it on loopback when
//!                                        # the others are secured (the node's own monitor
//!                                        # and schema registry read through it)
//! [[listeners]]                          # more Kafka listeners
//! name = "external"                      # Metadata gives a client the addresses of the
//!                                        # listener it came in on (same name on every node)
//! listen = "0.0.0.0:9093"
//! advertise = "broker.example.com:9093"  # default: listen
//! protocol = "sasl_ssl"                  # plaintext | ssl | sasl_plaintext | sasl_ssl
//!
//! [tls]                                  # for the ssl and sasl_ssl listeners
//! cert = "certs/broker.pem"              # certificate chain (PEM)
//! key = "certs/broker.key"               # its private key (PEM)
//! client_ca = "certs/ca.pem"             # client certificates from this CA: required on ssl
//!                                        # listeners (the principal is the subject's CN),
//!                                        # optional on sasl_ssl ones
//!
//! [security]                             # authorization on: every request is checked
//! users_file = "users.toml"              # default: <data_dir>/users.toml (`cloud-broker users`)
//! mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
//! ```
//!
//! Without `[security]` every client may do everything (and no listener may ask for SASL).
//! With it, a client is the principal its SASL login, its client certificate or `ANONYMOUS`
//! names, and may do what the users file gives that principal. On a SASL listener nothing but
//! ApiVersions, SaslHandshake (v1) and SaslAuthenticate (v1+) is served before the login; a
//! failed login is answered with `SASL_AUTHENTICATION_FAILED` and the connection closed.

pub mod scram;
pub mod session;
pub mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use tracing::warn;

pub use scram::Mechanism;
pub use users::{Access, Users, ANONYMOUS};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Kafka in the clear, no login.
    Plaintext,
    /// TLS; a client certificate names the principal.
    Ssl,
    /// SASL login in the clear (PLAIN sends the password readable: use over TLS).
    SaslPlaintext,
    /// TLS, then SASL login.
    SaslSsl,
}

impl Protocol {
    /// Whether it runs over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    /// Whether a SASL login comes first.
    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    /// Kafka's name (`security.protocol`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Its name: the same listener has the same name on every node.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// `host:port` clients of this listener are told (default: `listen`).
    pub advertise: Option<String>,
    /// What it speaks.
    pub protocol: Protocol,
}

impl ListenerConfig {
    /// The advertised address.
    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

/// The `[tls]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA client certificates are checked against.
    pub client_ca: Option<PathBuf>,
}

/// The `[security]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The users file (default: `<data_dir>/users.toml`).
    pub users_file: Option<PathBuf>,
    /// The SASL mechanisms offered.
    #[serde(default = "all_mechanisms")]
    pub mechanisms: Vec<Mechanism>,
}

fn all_mechanisms() -> Vec<Mechanism> {
    Mechanism::ALL.to_vec()
}

impl SecurityConfig {
    /// The users file's path.
    pub fn users_path(&self, data_dir: &Path) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| data_dir.join("users.toml"))
    }
}

/// The name the primary (`kafka_listen`) listener goes by.
pub const PRIMARY: &str = "plaintext";

/// A listener as a connection sees it.
pub struct Listener {
    /// Its name.
    pub name: String,
    /// What it speaks.
    pub protocol: Protocol,
    /// The TLS acceptor, for ssl and sasl_ssl.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Listener {
    /// The primary plaintext listener.
    pub fn primary() -> Arc<Listener> {
        Arc::new(Listener {
            name: PRIMARY.into(),
            protocol: Protocol::Plaintext,
            tls: None,
        })
    }

    /// A configured listener, its TLS set up from `[tls]`.
    pub fn from_config(l: &ListenerConfig, tls: Option<&TlsConfig>) -> anyhow::Result<Arc<Listener>> {
        let acceptor = if l.protocol.tls() {
            let t = tls.ok_or_else(|| {
                anyhow::anyhow!("listener {} is {:?} but there is no [tls]", l.name, l.protocol)
            })?;
            let mode = match (l.protocol, &t.client_ca) {
                (_, None) => foundation::tls::ClientAuth::None,
                (Protocol::Ssl, Some(_)) => foundation::tls::ClientAuth::Required,
                (_, Some(_)) => foundation::tls::ClientAuth::Optional,
            };
            let config = foundation::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref(), mode)?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        Ok(Arc::new(Listener {
            name: l.name.clone(),
            protocol: l.protocol,
            tls: acceptor,
        }))
    }
}

/// Authentication and authorization for one broker.
#[derive(Debug)]
pub struct Guard {
    users: Option<Users>,
    mechanisms: Vec<Mechanism>,
    /// Keys the salts made up for unknown users (per process).
    decoy_key: [u8; 32],
    /// Logins that succeeded.
    pub logins: AtomicU64,
    /// Logins refused.
    pub login_failures: AtomicU64,
    /// Requests (or parts of requests) refused for want of rights.
    pub denials: AtomicU64,
    log: foundation::logging::Throttle,
}

impl Guard {
    /// No authorization: everyone may do everything.
    pub fn open() -> Guard {
        Guard {
            users: None,
            mechanisms: Vec::new(),
            decoy_key: [0; 32],
            logins: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            log: foundation::logging::Throttle::default(),
        }
    }

    /// The guard `[security]` asks for.
    pub fn from_config(security: Option<&SecurityConfig>, data_dir: &Path) -> anyhow::Result<Guard> {
        let Some(s) = security else {
            return Ok(Guard::open());
        };
        let mut decoy_key = [0u8; 32];
        getrandom::getrandom(&mut decoy_key)
            .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        Ok(Guard {
            users: Some(Users::open(s.users_path(data_dir))?),
            mechanisms: s.mechanisms.clone(),
            decoy_key,
            ..Guard::open()
        })
    }

    /// Whether requests are checked at all.
    pub fn enabled(&self) -> bool {
        self.users.is_some()
    }

    /// The mechanisms offered.
    pub fn mechanisms(&self) -> &[Mechanism] {
        &self.mechanisms
    }

    /// Whether `principal` may do `access`; a refusal is counted and logged (at most once a
    /// second).
    pub fn allows(&self, principal: &str, access: Access<'_>) -> bool {
        let ok = self.may(principal, access);
        if !ok {
            self.denials.fetch_add(1, Ordering::Relaxed);
            if self.log.ready() {
                warn!(principal = %foundation::logging::client_text(principal), ?access, "request refused: no rights");
            }
        }
        ok
    }

    /// Whether `principal` may do `access`, neither counted nor logged (what a list shows).
    pub fn may(&self, principal: &str, access: Access<'_>) -> bool {
        let Some(users) = &self.users else { return true };
        users
            .current(false)
            .users
            .get(principal)
            .is_some_and(|u| u.may(access))
    }

    /// Counts and logs (rate-limited) a failed login.
    pub fn login_failed(&self, peer: Option<std::net::IpAddr>, why: &str) {
        self.login_failures.fetch_add(1, Ordering::Relaxed);
        if self.log.ready() {
            warn!(?peer, why, "kafka login refused");
        }
    }

    /// The users in force (a login reads the file afresh).
    pub fn users(&self) -> Option<Arc<users::UsersFile>> {
        self.users.as_ref().map(|u| u.current(true))
    }

    /// `kafka_logins_total`, `kafka_login_failures_total` and `kafka_authorization_denied_total`
    /// for `/metrics` (only with `[security]`).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        if !self.enabled() {
            return;
        }
        for (name, help, v) in [
            ("kafka_logins_total", "SASL logins that succeeded", &self.logins),
            (
                "kafka_login_failures_total",
                "SASL logins refused, and requests sent before a login",
                &self.login_failures,
            ),
            (
                "kafka_authorization_denied_total",
                "requests or parts of requests refused for want of rights",
                &self.denials,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }

    /// The key the salts of unknown users are made with.
    pub fn decoy_key(&self) -> &[u8] {
        &self.decoy_key
    }
}
