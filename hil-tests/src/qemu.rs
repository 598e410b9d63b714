//! Running the firmware image under `qemu-system-arm`, its UART0 connected to a TCP port.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use foundation::process::Guard;
use std::time::Duration;

use anyhow::Context;

/// The QEMU board image, built by `cargo build --release` in `firmware/boards/qemu-lm3s6965`.
pub fn lm3s6965_image() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("firmware/boards/qemu-lm3s6965/target/thumbv7m-none-eabi/release/qemu-lm3s6965");
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release` in firmware/boards/qemu-lm3s6965 \
         (the README's test command does)",
        p.display()
    );
    Ok(p)
}

/// QEMU's major version (the reconnect option of socket chardevs changed name in 9.2).
fn qemu_major() -> anyhow::Result<u32> {
    let out = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .context("qemu-system-arm is not installed: run the README's test command (it installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version ")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("cannot read QEMU's version from {text:?}"))
}

/// `qemu-system-arm` booting the lm3s6965 image, UART0 a TCP client of `127.0.0.1:port` that
/// reconnects every second, `args` (`key=value`) on the semihosting command line.
pub fn command(port: u16, args: &[String]) -> anyhow::Result<Command> {
    let image = lm3s6965_image()?;
    let reconnect = if qemu_major()? >= 9 {
        "reconnect-ms=1000"
    } else {
        "reconnect=1"
    };
    let mut semihosting = String::from("enable=on,target=native,arg=qemu-lm3s6965");
    for a in args {
        anyhow::ensure!(!a.contains(','), "semihosting args cannot contain commas: {a}");
        semihosting.push_str(",arg=");
        semihosting.push_str(a);
    }
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-cpu", "cortex-m3", "-machine", "lm3s6965evb"])
        .args(["-display", "none", "-monitor", "none", "-nographic"])
        .args(["-semihosting-config", &semihosting])
        .arg("-chardev")
        .arg(format!(
            "socket,id=uart0,host=127.0.0.1,port={port},{reconnect},nodelay=on"
        ))
        .args(["-serial", "chardev:uart0"])
        .arg("-kernel")
        .arg(&image);
    Ok(cmd)
}

/// A firmware image running under QEMU. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Qemu {
    child: Guard,
}

impl Qemu {
    /// Boots the lm3s6965 image with UART0 as a TCP client of `127.0.0.1:port` that reconnects
    /// every second when the connection drops (as a serial-to-network gateway would), and the
    /// given `key=value` arguments on the semihosting command line. QEMU runs under `timeout`.
    pub fn start(port: u16, args: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let qemu = command(port, args)?;
        let child = Guard::spawn(
            "qemu-system-arm",
            Command::new("timeout")
                .arg(timeout.as_secs().max(1).to_string())
                .arg(qemu.get_program())
                .args(qemu.get_args())
                .stdin(Stdio::null())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit()),
        )?;
        Ok(Qemu { child })
    }

    /// Waits for QEMU to exit (the image exits through semihosting) within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        crate::wait::until(timeout, "the firmware under QEMU to exit", || self.child.exited())
    }
}

impl Drop for Qemu {
    /// SIGTERM to `timeout`, which passes it on to QEMU and exits with it (a SIGKILL would
    /// kill only `timeout` and leave QEMU running); SIGKILL after 5 s if that did not work.
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(5));
    }
}
