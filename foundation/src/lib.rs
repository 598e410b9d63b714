//! # foundation — what every binary of the appliance repeats, in one place
//!
//! Small, dependency-light pieces the edge agent, the cloud broker, the bridge, the demo and
//! the benchmarks all need. Each optional module is behind a feature of the same job, so a
//! library takes only what it uses.
//!
//! # Layout
//! - [`time`] — milliseconds since the Unix epoch.
//! - [`ids`] — random ids (not for cryptography), unique tags for scratch names.
//! - [`shutdown`] (`runtime`) — SIGTERM / Ctrl-C, awaited or delivered to a sync program.
//! - [`logging`] (`logging`) — the tracing subscriber, filtered by a per-binary variable.
//! - [`config`] (`config`) — TOML configuration files, with the path in every error. The
//!   layering every binary uses is: built-in defaults < the file < environment < flags (clap's
//!   `env = ...` gives a flag's environment variable; a flag wins over it).
//! - [`http`] (`http`) — a blocking HTTP client (ureq) for admin APIs.
//! - [`redb`] (`redb`) — a redb database that reopens itself after a failed write and checks
//!   the layout version its store records.
//! - [`prom`] (`prom`) — Prometheus text pages (prometheus-parse): values, histograms,
//!   quantiles between two scrapes.
//! - [`tls`] (`tls`) — rustls configurations from PEM files, development certificates.
//! - [`token`] (`token`) — the HTTP admin token: which requests need it, Bearer or Basic.
//! - [`wait`], [`net`], [`process`], [`procfs`], [`scratch`], [`proxy`] (`testkit`) — waiting
//!   for a condition with a deadline, loopback ports, child-process guards, CPU / memory figures
//!   from `/proc`, scratch directories removed on drop, and a TCP proxy that cuts links.
#![warn(missing_docs)]

pub mod files;
pub mod ids;
pub mod time;

#[cfg(feature = "config")]
pub mod config;
#[cfg(all(feature = "redb", feature = "testkit"))]
pub mod faulty;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "testkit")]
pub mod net;
#[cfg(feature = "testkit")]
pub mod process;
#[cfg(feature = "testkit")]
pub mod procfs;
#[cfg(feature = "prom")]
pub mod prom;
#[cfg(feature = "testkit")]
pub mod proxy;
#[cfg(feature = "redb")]
pub mod redb;
#[cfg(feature = "testkit")]
pub mod scratch;
#[cfg(feature = "runtime")]
pub mod shutdown;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "token")]
pub mod token;
#[cfg(feature = "testkit")]
pub mod wait;
#[cfg(feature = "redb")]
pub mod watermarks;
