//! The openraft version spike: see Cargo.toml. Prints one JSON line per run.

mod v09;
mod v10;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a cluster of groups offers the harness, whichever openraft runs it.
pub trait Cluster: Send + Sync + 'static {
    /// The highest term any node has seen, per group.
    fn terms(&self) -> Vec<u64>;
    /// Whether every group has a leader that all nodes agree on.
    fn all_led(&self) -> bool;
    /// One write to group `g` through its current leader; false when it failed.
    fn write(&self, g: usize, serial: u64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// Timing knobs shared by both versions.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval (ms).
    pub heartbeat: u64,
    /// Election timeout range (ms).
    pub election: (u64, u64),
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")".
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn elections(before: &[u64], after: &[u64]) -> u64 {
    before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b)).sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let version = arg("--version", "10");
    let groups: usize = arg("--groups", "50").parse()?;
    let idle_secs: u64 = arg("--idle-secs", "20").parse()?;
    let load_secs: u64 = arg("--load-secs", "20").parse()?;
    let writers: usize = arg("--writers", "4").parse()?;
    let timing = match arg("--timing", "tuned").as_str() {
        "defaults" => Timing {
            heartbeat: 50,
            election: (150, 300),
        },
        _ => Timing {
            heartbeat: 500,
            election: (1500, 3000),
        },
    };
    let rss_before = rss_mib();
    let cluster: Arc<dyn Cluster> = match version.as_str() {
        "09" => Arc::new(v09::start(groups, timing).await?),
        _ => Arc::new(v10::start(groups, timing).await?),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.all_led() {
        anyhow::ensure!(Instant::now() < deadline, "not every group elected a leader in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Idle: nothing but heartbeats and ticks.
    let t0 = cluster.terms();
    let cpu0 = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = (cpu_seconds() - cpu0) / idle_secs as f64;
    let rss_idle = rss_mib();
    let t1 = cluster.terms();

    // Load: `writers` tasks per group writing through the leader as fast as they can.
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(load_secs);
    let cpu1 = cpu_seconds();
    let mut tasks = Vec::new();
    for g in 0..groups {
        for w in 0..writers {
            let (c, done, failed) = (cluster.clone(), done.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut serial = (w as u64) << 40;
                while Instant::now() < stop {
                    serial += 1;
                    if c.write(g, serial).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let load_cpu = (cpu_seconds() - cpu1) / load_secs as f64;
    let rss_load = rss_mib();
    let t2 = cluster.terms();
    println!(
        "{{\"openraft\":\"{}\",\"groups\":{groups},\"nodes\":3,\"heartbeat_ms\":{},\"election_ms\":[{},{}],\
\"idle_cpu_cores\":{idle_cpu:.3},\"idle_elections\":{},\"rss_mib_idle\":{rss_idle:.1},\"rss_mib_base\":{rss_before:.1},\
\"load_writes_per_s\":{:.0},\"load_failed\":{},\"load_cpu_cores\":{load_cpu:.3},\"load_elections\":{},\"rss_mib_load\":{rss_load:.1}}}",
        if version == "09" { "0.9.25" } else { "0.10.0-alpha.37" },
        timing.heartbeat,
        timing.election.0,
        timing.election.1,
        elections(&t0, &t1),
        done.load(Ordering::Relaxed) as f64 / load_secs as f64,
        failed.load(Ordering::Relaxed),
        elections(&t1, &t2),
    );
    std::process::exit(0);
}
