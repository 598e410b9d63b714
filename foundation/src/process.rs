//! Child processes that never outlive the test or benchmark that started them.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Guard {
    name: String,
    child: Option<Child>,
}

impl Guard {
    /// Starts `cmd`.
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Guard> {
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({cmd:?}): {e}"))?;
        Ok(Guard::new(name, child))
    }

    /// Takes charge of a started child.
    pub fn new(name: &str, child: Child) -> Guard {
        Guard {
            name: name.into(),
            child: Some(child),
        }
    }

    /// Its name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, if it has exited (reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until `ready` says so; fails if the child exits first or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(st) = self.exited() {
                anyhow::bail!("{} exited ({st}) before {what}", self.name);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{}: timed out after {timeout:?} waiting for {what}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns its exit status and
    /// whether it had to be killed; `None` if it was already gone.
    pub fn terminate(&mut self, grace: Duration) -> Option<(ExitStatus, bool)> {
        let mut c = self.child.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some((st, false));
        }
        let pid = i32::try_from(c.id()).ok()?;
        // SAFETY: kill(2) on our own child, not yet reaped, so its pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match c.try_wait() {
                Ok(Some(st)) => return Some((st, false)),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = c.kill();
        c.wait().ok().map(|st| (st, true))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_kill_and_readiness() {
        let mut g = Guard::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        assert!(g.exited().is_none());
        let (st, killed) = g.terminate(Duration::from_secs(5)).unwrap();
        assert!(!killed && !st.success());
        // A child that ignores SIGTERM (from before it runs: an ignored signal stays ignored
        // across exec) is killed after the grace period.
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut g = Guard::spawn("stubborn", &mut cmd).unwrap();
        assert!(g.terminate(Duration::from_millis(300)).unwrap().1);
        let mut g = Guard::spawn("quick", &mut Command::new("true")).unwrap();
        let e = g
            .wait_ready(Duration::from_secs(5), "never", || false)
            .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
    }
}
