//! A real mosquitto broker on a free loopback port, stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use foundation::process::Guard;
use std::time::Duration;

use anyhow::Context;

/// A running mosquitto. Dropping it kills the process.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Guard>,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(crate::free_port())
    }

    /// Starts mosquitto on `port` (used to restart a broker where clients expect it).
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        let conf = std::env::temp_dir().join(format!("hil-mosquitto-{}-{port}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n"
            ),
        )?;
        let bin = which("mosquitto")
            .context("mosquitto is not installed: run the README's test command (it installs `mosquitto`)")?;
        let mut child = Guard::spawn(
            "mosquitto",
            Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?;
        child.wait_ready(Duration::from_secs(10), "listening", || crate::listening(port))?;
        Ok(Mosquitto {
            child: Some(child),
            port,
            conf,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// Full path of an executable on `PATH` (also searching the sbin directories, where Debian
/// puts mosquitto).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file());
    found
}
