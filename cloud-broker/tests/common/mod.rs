//! Shared by the client tests: the broker binary as a child process on free ports, killed on
//! drop, and temporary data directories.
#![allow(dead_code)] // each test binary uses a different part

pub mod cluster;
pub mod python;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use foundation::process::Guard;
use foundation::proxy::Proxy;

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
                // openraft warns of every RPC to a node that is down; the tests make that happen.
                // `BROKER_TEST_LOG` overrides, to look into a failure.
                .env(
                    "CLOUD_LOG",
                    std::env::var("BROKER_TEST_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
                ),
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
        Self::cluster_routed(dir, n, |_, _, raft| format!("127.0.0.1:{raft}"))
    }

    /// Like [`Broker::cluster`], with every Raft link through a proxy of its own, one per
    /// direction: `links[&(from, to)]` carries what node `from` sends to node `to`.
    pub fn cluster_linked(dir: &Path, n: u64) -> (Vec<Broker>, Links) {
        let mut proxies = BTreeMap::new();
        let nodes = Self::cluster_routed(dir, n, |from, to, raft| {
            let p = Proxy::start(([127, 0, 0, 1], raft).into()).expect("proxy");
            let addr = format!("127.0.0.1:{}", p.port());
            proxies.insert((from, to), p);
            addr
        });
        (nodes, Links(proxies))
    }

    /// `n` nodes where node `from` reaches node `to` at `route(from, to, to's raft port)`.
    fn cluster_routed(dir: &Path, n: u64, mut route: impl FnMut(u64, u64, u16) -> String) -> Vec<Broker> {
        // Nine distinct ports: two nodes given the same one would have one of them answer for
        // the other.
        let mut all: Vec<u16> = Vec::new();
        while all.len() < 3 * n as usize {
            let p = free_port();
            if !all.contains(&p) {
                all.push(p);
            }
        }
        let ports: Vec<(u16, u16, u16)> = all.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let args: Vec<Vec<String>> = (1..=n)
            .map(|id| {
                let raft = ports[(id - 1) as usize].2;
                let mut extra = vec![
                    "--node-id".to_string(),
                    id.to_string(),
                    "--raft-listen".to_string(),
                    format!("127.0.0.1:{raft}"),
                ];
                for (j, (_, _, r)) in ports.iter().enumerate() {
                    let to = j as u64 + 1;
                    if to != id {
                        extra.push("--peer".into());
                        extra.push(format!("{to}={}", route(id, to, *r)));
                    }
                }
                extra
            })
            .collect();
        (1..=n)
            .zip(args)
            .map(|(id, extra)| {
                let (kafka, http, _) = ports[(id - 1) as usize];
                Broker::start_with(&dir.join(format!("node-{id}")), kafka, http, extra)
            })
            .collect()
    }

    /// Whether the process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` to the process (SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("the broker is not running").pid();
        // SAFETY: kill(2) on our own child's pid, which is not reaped while we hold it.
        let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(r, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// `host:port` of the Kafka listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, and the exit status once it is gone (a panic if it had to be killed after 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("the broker is not running");
        let (status, killed) = c
            .terminate(Duration::from_secs(30))
            .expect("the broker had exited");
        assert!(!killed, "the broker did not exit within 30 s of SIGTERM");
        self.child = None;
        status
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

/// The Raft links of a [`Broker::cluster_linked`] cluster.
#[derive(Debug)]
pub struct Links(BTreeMap<(u64, u64), Proxy>);

impl Links {
    /// Cuts node `id` off from every other node (both directions), or heals it.
    pub fn isolate(&self, id: u64, cut: bool) {
        for ((from, to), p) in &self.0 {
            if *from == id || *to == id {
                p.set_down(cut);
            }
        }
    }
}

/// Runs Debian's kcat with `args` (and `stdin`, if given); panics with its stderr unless it
/// exits 0; returns its stdout. (Without cargo's `LD_LIBRARY_PATH`, which would give kcat the
/// newer librdkafka rdkafka-sys builds instead of Debian's 2.0.2.)
pub fn kcat(args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut c = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: run the README's test command");
    if let Some(data) = stdin {
        c.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
