//! Shared by the client tests: the broker binary as a child process on free ports, killed on
//! drop, and temporary data directories.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use foundation::process::Guard;

pub use foundation::net::listening;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    foundation::net::free_port().expect("no free loopback port")
}

/// A fresh directory under the system temp dir, named after the test.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cloud-broker-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A broker process, killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Guard>,
    /// Extra arguments it was started with (a cluster node's id, Raft listener and peers).
    extra: Vec<String>,
    /// Kafka port.
    pub port: u16,
    /// HTTP port.
    pub http: u16,
    /// Data directory.
    pub dir: PathBuf,
}

impl Broker {
    /// Starts a broker on free ports over `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port(), free_port())
    }

    /// Starts a broker on these ports over `dir` and waits until it accepts connections.
    pub fn start_on(dir: &Path, port: u16, http: u16) -> Self {
        Self::start_with(dir, port, http, Vec::new())
    }

    /// Like [`Broker::start_on`] with extra arguments.
    pub fn start_with(dir: &Path, port: u16, http: u16, extra: Vec<String>) -> Self {
        let mut child = Guard::spawn(
            "cloud-broker",
            Command::new(env!("CARGO_BIN_EXE_cloud-broker"))
                .args(["run", "--kafka-listen", &format!("127.0.0.1:{port}")])
                .args(["--http-listen", &format!("127.0.0.1:{http}")])
                .arg("--data-dir")
                .arg(dir)
                .args(&extra)
                .env("CLOUD_LOG", "warn"),
        )
        .unwrap();
        child
            .wait_ready(Duration::from_secs(20), "listening", || listening(port))
            .unwrap();
        Broker {
            child: Some(child),
            extra,
            port,
            http,
            dir: dir.to_path_buf(),
        }
    }

    /// `n` cluster nodes (ids 1..=n) on loopback, each a process over its own directory
    /// under `dir`.
    pub fn cluster(dir: &Path, n: u64) -> Vec<Broker> {
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        (1..=n)
            .map(|id| {
                let (kafka, http, raft) = ports[(id - 1) as usize];
                let mut extra = vec![
                    "--node-id".to_string(),
                    id.to_string(),
                    "--raft-listen".to_string(),
                    format!("127.0.0.1:{raft}"),
                ];
                for (j, (_, _, r)) in ports.iter().enumerate() {
                    if j as u64 + 1 != id {
                        extra.push("--peer".into());
                        extra.push(format!("{}=127.0.0.1:{r}", j + 1));
                    }
                }
                Broker::start_with(&dir.join(format!("node-{id}")), kafka, http, extra)
            })
            .collect()
    }

    /// `host:port` of the Kafka listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        *self = Broker::start_with(&self.dir.clone(), self.port, self.http, self.extra.clone());
    }

    /// Starts a broker killed before, on the same ports, directory and arguments.
    pub fn start_again(&mut self) {
        *self = Broker::start_with(&self.dir.clone(), self.port, self.http, self.extra.clone());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}
