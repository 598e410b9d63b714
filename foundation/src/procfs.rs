//! CPU and memory figures from Linux's `/proc`, for benchmarks.

use std::collections::BTreeMap;

/// Clock ticks per second of `/proc/*/stat` times (`sysconf(_SC_CLK_TCK)`; 100 if unknown).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU ticks (user + system) of every thread of `pid`: `tid -> (thread name, ticks)`. Empty
/// if the process is gone.
pub fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.insert(tid, v);
        }
    }
    out
}

/// `(comm, utime + stime)` of a `/proc/.../stat` line: `pid (comm) state ...`, where comm may
/// hold spaces and parentheses; utime and stime are fields 14 and 15.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((comm, n(11) + n(12)))
}

/// CPU between two [`thread_ticks`] samples per thread name, in % of one core. Threads are
/// matched by id: one that started in between counts from zero, one that ended is not seen.
pub fn cpu_percent_by_name(
    before: &BTreeMap<u32, (String, u64)>,
    after: &BTreeMap<u32, (String, u64)>,
    secs: f64,
) -> BTreeMap<String, f64> {
    let tck = clk_tck();
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, v)) in after {
        let v0 = before.get(tid).map_or(0, |x| x.1);
        *by_name.entry(name.clone()).or_default() +=
            v.saturating_sub(v0) as f64 / tck / secs.max(1e-9) * 100.0;
    }
    by_name
}

/// (busy, total) ticks of the whole machine since boot (`/proc/stat`; idle and iowait are
/// not busy).
pub fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (kib_field(&s, "VmRSS:"), kib_field(&s, "VmHWM:"))
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The machine: cores, memory and CPU model, for a benchmark's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Cores this process may use.
    pub nproc: usize,
    /// `MemTotal`, KiB.
    pub mem_total_kib: u64,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
}

/// What [`Machine`] says of this machine.
pub fn machine() -> Machine {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_kib: kib_field(&mem, "MemTotal:"),
        cpu_model: cpu
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or(String::new(), |(_, m)| m.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names() {
        let l = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0"; // utime, stime: fields 14, 15
        assert_eq!(parse_stat(l), Some(("a (b) c".into(), 280)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_threads_ticks_and_memory() {
        let me = std::process::id();
        let t = thread_ticks(me);
        assert!(t.contains_key(&me), "{t:?}");
        assert!(rss_kib(me).0 > 0);
        let m = machine();
        assert!(m.nproc > 0 && m.mem_total_kib > 0);
        assert!(clk_tck() >= 100.0);
        let (busy, total) = machine_ticks();
        assert!(total > 0 && busy <= total);
    }
}
