//! The load driver: a [`Sink`] driven for a phase's seconds as fast as acknowledgements
//! allow or at a fixed rate ([`AsyncDriver`]), any [`Phases`] run as the two produce phases,
//! and their JSON.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::procs::{cpu_percent, cpu_ticks, cpu_totals, rss_mib, Ticks, BENCH};
use crate::report::round2;
use crate::Cli;

/// An acknowledgement on its way.
pub(crate) type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A producer under test.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Enqueues one record for `partition`; resolves once the client took it, to a future of
    /// its acknowledgement.
    fn send(&self, partition: u32) -> impl Future<Output = anyhow::Result<Ack>> + Send;
}

/// What one produce phase measured.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    /// Acknowledged records per second after the warm-up.
    pub(crate) rate: f64,
    /// Latencies (µs) of records due after the warm-up (rate-limited phase only).
    pub(crate) latencies_us: Vec<u32>,
    /// CPU per process and thread name over the window, in % of one core.
    pub(crate) cpu: BTreeMap<String, BTreeMap<String, f64>>,
    /// CPU per process over the window (every thread), in % of one core.
    pub(crate) cpu_total: BTreeMap<String, f64>,
}

/// Sends records for `secs` seconds — as fast as `inflight` allows, or at `rate` records/s —
/// and collects their acknowledgements.
async fn drive<S: Sink>(
    sink: Arc<S>,
    partitions: u32,
    inflight: usize,
    secs: u64,
    rate: Option<f64>,
    pids: &[(&'static str, u32)],
) -> anyhow::Result<Load> {
    let sem = Arc::new(Semaphore::new(inflight));
    let acked = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, OwnedSemaphorePermit, Ack)>();
    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = start + Duration::from_secs(secs.max(2));
    let collector = tokio::spawn({
        let acked = acked.clone();
        async move {
            let mut pending = FuturesUnordered::new();
            let (mut lat, mut failed, mut first_error) = (Vec::new(), 0u64, None);
            let mut open = true;
            loop {
                tokio::select! {
                    m = rx.recv(), if open => match m {
                        Some((due, permit, ack)) => pending.push(async move {
                            let r = ack.await;
                            drop(permit);
                            (due, r, Instant::now())
                        }),
                        None => open = false,
                    },
                    Some((due, r, at)) = pending.next(), if !pending.is_empty() => match r {
                        Ok(()) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            if rate.is_some() && due >= warm {
                                lat.push(at.saturating_duration_since(due).as_micros().min(u32::MAX as u128) as u32);
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    },
                    else => break,
                }
            }
            (lat, failed, first_error)
        }
    });
    let mut sent = 0u64;
    let mut window: Option<(Instant, u64, Ticks)> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if window.is_none() && now >= warm {
            window = Some((now, acked.load(Ordering::Relaxed), cpu_ticks(pids)));
        }
        let due = match rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(sent as f64 / r);
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => now,
        };
        let permit = sem.clone().acquire_owned().await?;
        let ack = sink.send((sent % u64::from(partitions)) as u32).await?;
        tx.send((due, permit, ack))
            .map_err(|_| anyhow!("collector gone"))?;
        sent += 1;
    }
    let (stop, acked_at_stop, cpu_at_stop) = (Instant::now(), acked.load(Ordering::Relaxed), cpu_ticks(pids));
    drop(tx);
    let (latencies_us, failed, first_error) = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .context("acknowledgements still outstanding 60 s after the phase")??;
    let (w0, a0, c0) = window.ok_or_else(|| anyhow!("phase shorter than its warm-up"))?;
    let secs = stop.duration_since(w0).as_secs_f64();
    Ok(Load {
        sent,
        acked: acked.load(Ordering::Relaxed),
        failed,
        first_error,
        rate: (acked_at_stop - a0) as f64 / secs,
        latencies_us,
        cpu: cpu_percent(&c0, &cpu_at_stop, secs),
        cpu_total: cpu_totals(&c0, &cpu_at_stop, secs),
    })
}

/// Runs one produce phase: `secs` seconds, as fast as possible or at `rate` records/s; CPU of
/// `pids` is sampled over the window after the warm-up.
pub(crate) trait Phases {
    fn phase(
        &self,
        secs: u64,
        rate: Option<f64>,
        pids: &[(&'static str, u32)],
    ) -> impl Future<Output = anyhow::Result<Load>> + Send;
}

/// The async driver over a [`Sink`].
pub(crate) struct AsyncDriver<S> {
    pub(crate) sink: Arc<S>,
    pub(crate) partitions: u32,
    pub(crate) inflight: usize,
}

impl<S: Sink> Phases for AsyncDriver<S> {
    async fn phase(
        &self,
        secs: u64,
        rate: Option<f64>,
        pids: &[(&'static str, u32)],
    ) -> anyhow::Result<Load> {
        drive(
            self.sink.clone(),
            self.partitions,
            self.inflight,
            secs,
            rate,
            pids,
        )
        .await
    }
}

/// The two produce phases and their JSON, and how many records they wrote.
pub(crate) async fn produce_phases<P: Phases>(
    cli: &Cli,
    driver: &P,
    pids: &[(&'static str, u32)],
) -> anyhow::Result<(Value, Value, u64)> {
    let peak = driver.phase(cli.seconds, None, pids).await?;
    let peak_rss = rss_mib(pids);
    if peak.failed > 0 || peak.rate <= 0.0 {
        bail!(
            "peak phase: {} of {} records failed ({})",
            peak.failed,
            peak.sent,
            peak.first_error.unwrap_or_default()
        );
    }
    let half = cli.latency_rate.unwrap_or(peak.rate / 2.0);
    let lat = driver.phase(cli.latency_seconds, Some(half), pids).await?;
    let lat_rss = rss_mib(pids);
    if lat.failed > 0 {
        bail!(
            "latency phase: {} of {} records failed ({})",
            lat.failed,
            lat.sent,
            lat.first_error.unwrap_or_default()
        );
    }
    let mut l = lat.latencies_us.clone();
    l.sort_unstable();
    let pct = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .map(|&v| v as f64 / 1000.0)
    };
    let mb = cli.record_bytes as f64 / 1e6;
    let mut peak_json = json!({
        "records_per_s": peak.rate.round(),
        "mb_per_s": round2(peak.rate * mb),
        "sent": peak.sent, "acked": peak.acked,
        "cpu_percent_of_a_core": peak.cpu,
    });
    add_usage(&mut peak_json, &peak.cpu_total, &peak_rss);
    let mut lat_json = json!({
        "target_rate": half.round(),
        "achieved_rate": lat.rate.round(),
        "records": l.len(),
        "p50_ms": pct(0.50).map(round2),
        "p99_ms": pct(0.99).map(round2),
        "p999_ms": pct(0.999).map(round2),
        "max_ms": l.last().map(|&v| round2(v as f64 / 1000.0)),
        "cpu_percent_of_a_core": lat.cpu,
    });
    add_usage(&mut lat_json, &lat.cpu_total, &lat_rss);
    Ok((peak_json, lat_json, peak.acked + lat.acked))
}

/// Adds a phase's CPU per process in all (and summed over the servers, every process but
/// this one) and the RSS at its end to its JSON.
fn add_usage(phase: &mut Value, cpu_total: &BTreeMap<String, f64>, rss: &BTreeMap<String, (f64, f64)>) {
    let servers_cpu: f64 = cpu_total
        .iter()
        .filter(|(n, _)| *n != BENCH)
        .map(|(_, v)| v)
        .sum();
    let servers_rss: f64 = rss.iter().filter(|(n, _)| *n != BENCH).map(|(_, v)| v.0).sum();
    let map = |f: &dyn Fn(&(f64, f64)) -> f64| {
        rss.iter()
            .map(|(k, v)| (k.clone(), f(v)))
            .collect::<BTreeMap<_, _>>()
    };
    phase["cpu_total_percent_of_a_core"] = json!(cpu_total
        .iter()
        .map(|(k, v)| (k.clone(), round2(*v)))
        .collect::<BTreeMap<_, _>>());
    phase["servers_cpu_percent_of_a_core"] = json!(round2(servers_cpu));
    phase["rss_mib"] = json!(map(&|v| v.0));
    phase["rss_peak_mib"] = json!(map(&|v| v.1));
    phase["servers_rss_mib"] = json!(round2(servers_rss));
}
