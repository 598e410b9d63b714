//! Running the cloud broker as a real process (through the multi-call `demo` binary or the
//! `cloud-broker` binary): start, wait until it accepts connections, stop, kill -9, restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use foundation::process::Guard;

/// A `cloud-broker run` process. Dropping it kills the process.
#[derive(Debug)]
pub struct CloudBroker {
    bin: PathBuf,
    pre_args: Vec<String>,
    child: Option<Guard>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Kafka port.
    pub port: u16,
    /// HTTP port.
    pub http_port: u16,
    /// What Metadata advertises (a proxy in front of the broker), if not the listen address.
    pub advertise: Option<String>,
    /// Arguments after the standard ones (`--config FILE`).
    pub extra_args: Vec<String>,
}

impl CloudBroker {
    /// Starts `bin <pre_args> run ...` on `data_dir` and free ports.
    pub fn start(
        bin: &Path,
        pre_args: &[&str],
        data_dir: &Path,
        advertise: Option<String>,
    ) -> anyhow::Result<Self> {
        Self::start_on(bin, pre_args, data_dir, crate::free_port(), advertise)
    }

    /// Starts with `extra_args` after the standard ones (`--config FILE`).
    pub fn start_with_args(
        bin: &Path,
        pre_args: &[&str],
        data_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut b = CloudBroker {
            bin: bin.to_path_buf(),
            pre_args: pre_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            data_dir: data_dir.to_path_buf(),
            port: crate::free_port(),
            http_port: crate::free_port(),
            advertise: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts on a given Kafka port (a proxy may already point at it).
    pub fn start_on(
        bin: &Path,
        pre_args: &[&str],
        data_dir: &Path,
        port: u16,
        advertise: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut b = CloudBroker {
            bin: bin.to_path_buf(),
            pre_args: pre_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            data_dir: data_dir.to_path_buf(),
            port,
            http_port: crate::free_port(),
            advertise,
            extra_args: Vec::new(),
        };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.pre_args)
            .arg("run")
            .arg("--kafka-listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("CLOUD_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(a) = &self.advertise {
            cmd.arg("--advertise").arg(a);
        }
        cmd.args(&self.extra_args);
        let mut child = Guard::spawn("the cloud broker", &mut cmd)?;
        let port = self.port;
        child.wait_ready(Duration::from_secs(20), "accepting connections", || {
            crate::listening(port)
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// SIGTERM and wait (up to `timeout`), then kill -9 if it is still there.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            c.terminate(timeout);
        }
    }

    /// Starts it again on the same data dir and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for CloudBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}
