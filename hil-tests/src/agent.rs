//! Running the edge agent as a real process: start, wait until healthy, kill -9, SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use foundation::process::Guard;
use std::time::Duration;

use anyhow::Context;

/// An `edge-agent run` process. Dropping it kills the process.
#[derive(Debug)]
pub struct EdgeAgent {
    bin: PathBuf,
    /// Arguments before `run` (e.g. `edge-agent` for the multi-call `demo` binary).
    pre_args: Vec<String>,
    /// Arguments after the standard ones (e.g. `--cloud HOST:PORT`).
    extra_args: Vec<String>,
    child: Option<Guard>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Whether the data directory is this agent's own (made by [`EdgeAgent::start`]): it is
    /// removed when the agent is dropped.
    owns_dir: bool,
    /// MQTT address (loopback unless [`EdgeAgent::launch_on`] said otherwise).
    mqtt_host: std::net::IpAddr,
    /// MQTT port.
    pub mqtt_port: u16,
    /// Admin HTTP port.
    pub admin_port: u16,
}

impl EdgeAgent {
    /// Starts the agent binary `bin` on free ports with a fresh data dir under the temp dir.
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!(
            "edge-e2e-{}-{:x}",
            std::process::id(),
            crate::free_port()
        ));
        let mut a = Self::start_with(bin, &data_dir, crate::free_port(), crate::free_port());
        if let Ok(a) = &mut a {
            a.owns_dir = true;
        } else {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        a
    }

    /// Starts the agent on the given data dir and ports (a restart after a crash).
    pub fn start_with(bin: &Path, data_dir: &Path, mqtt_port: u16, admin_port: u16) -> anyhow::Result<Self> {
        Self::launch(bin, &[], data_dir, mqtt_port, admin_port, &[])
    }

    /// Starts the agent on `data_dir` (made if missing) and free ports with `toml` as its
    /// configuration file (written to `edge.toml` there).
    pub fn launch_with_config(bin: &Path, data_dir: &Path, toml: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let cfg = data_dir.join("edge.toml");
        std::fs::write(&cfg, toml)?;
        let cfg = cfg.to_string_lossy().into_owned();
        Self::launch(
            bin,
            &[],
            data_dir,
            crate::free_port(),
            crate::free_port(),
            &["--config", &cfg],
        )
    }

    /// Starts `bin <pre_args> run --data-dir .. --mqtt-listen .. --admin-listen .. <extra_args>`.
    pub fn launch(
        bin: &Path,
        pre_args: &[&str],
        data_dir: &Path,
        mqtt_port: u16,
        admin_port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], mqtt_port));
        Self::launch_on(bin, pre_args, data_dir, mqtt, admin_port, extra_args)
    }

    /// [`EdgeAgent::launch`] with MQTT on `mqtt` (e.g. a TAP device's address in a test's own
    /// network namespace); the admin API stays on loopback.
    pub fn launch_on(
        bin: &Path,
        pre_args: &[&str],
        data_dir: &Path,
        mqtt: std::net::SocketAddr,
        admin_port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut a = EdgeAgent {
            mqtt_host: mqtt.ip(),
            bin: bin.to_path_buf(),
            pre_args: pre_args.iter().map(|s| s.to_string()).collect(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            data_dir: data_dir.to_path_buf(),
            owns_dir: false,
            mqtt_port: mqtt.port(),
            admin_port,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_until(200)
    }

    /// Starts the agent again on the same data dir and ports, ready when `/health` answers
    /// `health` (503: an agent that found damaged data or failing writes and says so).
    pub fn restart_until_health(&mut self, health: u16) -> anyhow::Result<()> {
        self.kill9();
        self.spawn_until(health)
    }

    fn spawn_until(&mut self, health: u16) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.pre_args)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--mqtt-listen")
            .arg(std::net::SocketAddr::new(self.mqtt_host, self.mqtt_port).to_string())
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .args(&self.extra_args)
            .env("EDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let mut child = Guard::spawn("the edge agent", &mut cmd)?;
        let port = self.admin_port;
        child.wait_ready(
            Duration::from_secs(20),
            &format!("/health to answer {health}"),
            || http_get(port, "/health").is_ok_and(|(code, _)| code == health),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// `<host>:<mqtt port>` (`127.0.0.1` unless launched on another address).
    pub fn mqtt_addr(&self) -> String {
        std::net::SocketAddr::new(self.mqtt_host, self.mqtt_port).to_string()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.exited().is_none())
    }

    /// kill -9, as a crash or power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// Starts the agent again on the same data dir and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (an error if it had to be
    /// killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut c = self.child.take().context("agent not running")?;
        match c.terminate(timeout) {
            Some((st, false)) => Ok(st),
            Some((_, true)) => {
                anyhow::bail!("the edge agent did not exit within {timeout:?} of SIGTERM (killed)")
            }
            None => anyhow::bail!("the edge agent was already gone"),
        }
    }

    /// A GET on the admin API: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// A POST (no body) on the admin API: (status, body).
    pub fn post(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_request(self.admin_port, "POST", path)
    }

    /// A counter or gauge from `/metrics` (the first sample of that name).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (_, body) = self.get("/metrics")?;
        foundation::prom::Metrics::parse(&body)?
            .value(name, &[])
            .with_context(|| format!("metric {name} not found"))
    }
}

impl Drop for EdgeAgent {
    fn drop(&mut self) {
        self.kill9();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(port, "GET", path)
}

/// A request without a body on loopback: (status, body).
pub fn http_request(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = format!("127.0.0.1:{port}");
    Ok(foundation::http::request(
        &addr,
        method,
        path,
        Duration::from_secs(10),
    )?)
}
