//! Processes, ports and `/proc`: the data directories, starting a server, the payload, and
//! CPU and RSS per process and thread.

use foundation::process::Guard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use crate::report::round2;

/// Data directories, removed when the run ends: not between the two systems, since deleting
/// gigabytes (with `discard` on the file system) loads the disk while the next one is measured.
#[derive(Default)]
pub(crate) struct Dirs(Mutex<Vec<PathBuf>>);

impl Dirs {
    /// A fresh directory under `root`, removed with the others.
    pub(crate) fn fresh(&self, root: &Path, tag: &str) -> anyhow::Result<PathBuf> {
        let d = root.join(format!(
            "cloud-bench-{tag}-{}-{}",
            std::process::id(),
            foundation::net::free_port()?
        ));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(d.clone());
        Ok(d)
    }
}

impl Dirs {
    /// Removes every directory made so far and waits until the disk has written out what the
    /// system before left in the page cache: the next system's fsyncs must not queue behind
    /// a gigabyte of someone else's write-back (measured: it cost the cluster after the single
    /// node half its peak, and runs of one build varied threefold).
    pub(crate) fn settle(&self) {
        for d in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A server process (killed on drop), once it listens on `port`. Waits without blocking
/// the runtime, so Ctrl-C is served meanwhile.
pub(crate) async fn spawn_server(name: &str, cmd: &mut Command, port: u16) -> anyhow::Result<Guard> {
    let mut p = Guard::spawn(name, cmd.stdin(Stdio::null()))?;
    foundation::wait::until_async(
        Duration::from_secs(20),
        &format!("{name} listening on {port}"),
        || {
            if hil_tests::listening(port) {
                return Some(Ok(()));
            }
            let exited = p.exited()?;
            Some(Err(anyhow!(
                "{name} exited ({exited}) before listening on {port}"
            )))
        },
    )
    .await??;
    Ok(p)
}

/// This program's name in CPU and RSS figures.
pub(crate) const BENCH: &str = "cloud-bench";

/// 100 printable bytes (or `n`), the same for both systems.
pub(crate) fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// CPU ticks (user + system) per process, per thread: `tid -> (thread name, ticks)`.
pub(crate) type Ticks = BTreeMap<String, BTreeMap<u32, (String, u64)>>;

/// CPU per process and thread name between two samples, in % of one core (threads under
/// 0.5 % left out). Threads are matched by id: a thread that started in between counts from
/// zero, one that ended is not seen (tokio's blocking threads come and go).
pub(crate) fn cpu_percent(
    before: &Ticks,
    after: &Ticks,
    secs: f64,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    after
        .iter()
        .map(|(proc_name, threads)| {
            let empty = BTreeMap::new();
            let b = before.get(proc_name).unwrap_or(&empty);
            let mut by_name = foundation::procfs::cpu_percent_by_name(b, threads, secs);
            by_name.retain(|_, p| *p >= 0.5);
            (proc_name.clone(), by_name)
        })
        .collect()
}

/// CPU per process between two samples, every thread, in % of one core.
pub(crate) fn cpu_totals(before: &Ticks, after: &Ticks, secs: f64) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(proc_name, threads)| {
            let empty = BTreeMap::new();
            let b = before.get(proc_name).unwrap_or(&empty);
            let total = foundation::procfs::cpu_percent_by_name(b, threads, secs)
                .values()
                .sum();
            (proc_name.clone(), total)
        })
        .collect()
}

/// `(VmRSS, VmHWM)` of each of `pids`, MiB.
pub(crate) fn rss_mib(pids: &[(&str, u32)]) -> BTreeMap<String, (f64, f64)> {
    pids.iter()
        .map(|&(name, pid)| {
            let (rss, hwm) = foundation::procfs::rss_kib(pid);
            let mib = |k: u64| round2(k as f64 / 1024.0);
            (name.to_string(), (mib(rss), mib(hwm)))
        })
        .collect()
}

/// CPU ticks of every thread of `pids`.
pub(crate) fn cpu_ticks(pids: &[(&str, u32)]) -> Ticks {
    pids.iter()
        .map(|&(name, pid)| (name.to_string(), foundation::procfs::thread_ticks(pid)))
        .collect()
}
