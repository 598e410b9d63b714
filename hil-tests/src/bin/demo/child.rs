//! A child process of the demo ([`Proc`]): started in its own process group with SIGTERM as
//! its parent-death signal and its output in a log file, waited on until it is ready, stopped
//! with SIGTERM and then SIGKILL.

use foundation::process::Guard;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use anyhow::Context;
use hil_tests::wait;

use crate::{Event, START_TIMEOUT, STOP_GRACE};

/// A child process; stopping it (or dropping it) sends SIGTERM, then SIGKILL after a grace time.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Option<Guard>,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output appended to `log`, in its own process group, with SIGTERM
    /// as its parent-death signal. Call from the main thread only (see the crate docs).
    pub(crate) fn spawn(name: impl Into<String>, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let name = name.into();
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let out = err
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let parent = std::process::id() as libc::pid_t;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe system calls (prctl, getppid, setpgid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect: no signal would ever come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Guard::spawn(&format!("the {name}"), &mut cmd)?;
        Ok(Proc {
            name,
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.exited()
    }

    /// Waits until `ready` returns true, failing if the process exits first, the deadline
    /// passes, or a stop signal arrives.
    pub(crate) fn wait_ready(
        &mut self,
        what: &str,
        events: &mpsc::Receiver<Event>,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let log = self.log.display().to_string();
        let outcome = wait::until(START_TIMEOUT, what, || {
            if let Some(st) = self.exited() {
                return Some(Err(anyhow::anyhow!(
                    "the {} exited during start-up ({st}): see {log}",
                    self.name
                )));
            }
            if let Some(sig) = stop_requested(events) {
                return Some(Err(anyhow::anyhow!("{sig} during start-up")));
            }
            ready().then_some(Ok(()))
        });
        match outcome {
            Ok(r) => r,
            Err(timeout) => Err(timeout.context(format!("the {} did not come up: see {log}", self.name))),
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after [`STOP_GRACE`]. Returns the exit
    /// status and whether it had to be killed (`None` if it was already stopped).
    pub(crate) fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        self.child.take()?.terminate(STOP_GRACE)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stop signal that arrived, if any (other events are not expected where this is used).
pub(crate) fn stop_requested(events: &mpsc::Receiver<Event>) -> Option<&'static str> {
    while let Ok(ev) = events.try_recv() {
        if let Event::Stop(sig) = ev {
            return Some(sig);
        }
    }
    None
}
