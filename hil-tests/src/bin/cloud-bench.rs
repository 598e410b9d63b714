//! `cloud-bench`: the issue-4 and issue-9 benchmarks. The cloud broker against NATS JetStream,
//! one load shape, one run, one machine: a single node against one JetStream server (issue 4),
//! and a three-node replicated cluster against a three-server JetStream cluster of three
//! replicas, with the single node measured in the same run as a yardstick (issue 9).
//!
//! # Systems (`--system`)
//! - `cloud-broker` (`kafka`): the release binary on a fresh data dir, driven by the rdkafka
//!   crate (librdkafka) — the client the bridge uses: an idempotent producer, `acks=all`, small
//!   linger, no compression; a topic of `--partitions` partitions made with CreateTopics. By
//!   default one thread enqueues records and librdkafka's thread counts the delivery reports
//!   (`--kafka-driver callback`, at most `--kafka-inflight` records unacknowledged);
//!   `--kafka-driver futures` drives a FutureProducer through the same async driver as
//!   JetStream instead, one delivery future per record.
//! - `jetstream` (`nats`): Debian's `nats-server -js` on a fresh store dir, driven by
//!   async-nats: one stream over `--partitions` subjects (`bench.0` …), file storage, one
//!   replica; publishes with their ack futures in flight (at most `--nats-inflight`).
//!   nats-server 2.9 acknowledges a publish once it is written to the stream's file, and
//!   fsyncs on a timer (every 2 min); the cloud broker answers only after an fsync'd commit.
//! - `cluster`: three `cloud-broker run` processes forming one cluster on loopback
//!   (`--node-id N --raft-listen … --peer M=…`, each over its own data dir). Once Metadata
//!   names three brokers, the topic is created with replication factor 3 (CreateTopics is
//!   retried for up to 60 s: the controller is elected while the nodes start), and once every
//!   partition has a leader the same driver and phases as `cloud-broker` run with the three
//!   nodes as the bootstrap list. A produce is answered once a quorum (two of three) has the
//!   batch fsync'd.
//! - `jetstream-r3`: three `nats-server -js` processes, a cluster named `bench` with routes on
//!   loopback and server names `n1`…`n3` (JetStream clustering needs both); the stream as for
//!   `jetstream` with three replicas, created once the meta leader is elected (creation is
//!   retried until it succeeds) and used once it has a leader. One client connected to the
//!   three addresses (async-nats picks one) publishes; a publish is acknowledged once a
//!   quorum of replicas has written it (fsync on the same 2-min timer).
//!
//! `both` runs `cloud-broker` and `jetstream`; `all-r3` runs `cloud-broker`, `cluster` and
//! `jetstream-r3` and reports cluster / jetstream-r3 and cluster / single node.
//!
//! # Cluster extras (with `cluster` or `all-r3`)
//! - `--failovers N`: after the consume phase, on the same cluster, a topic `failover` of
//!   `--partitions` partitions (RF 3) is fed at `--failover-rate` records/s by an idempotent
//!   `acks=all` producer whose requests time out after 5 s. N times: the leader of partition 0
//!   that every running node's `GET /api/cluster` agrees on is killed (SIGKILL); its **stall**
//!   is the time from the kill until a record handed to the producer *after* the kill is
//!   acknowledged on partition 0. The node is then started again with the same arguments, and
//!   the next round waits until it sees every partition led and holds every record of
//!   `failover` acknowledged before it came back. p50/p99/max of the stalls.
//! - `--rss-partitions N`: a fresh cluster; VmRSS per node once it has formed with no topic,
//!   then with topics of N partitions in all (RF 3, made `--rss-batch` partitions at a time,
//!   each batch waited on until every partition has a leader) after `--idle-seconds` idle, and
//!   the CPU per node over that idle window.
//!
//! Every server is started by this program on free loopback ports and killed when its phases
//! end (also on Ctrl-C); systems run one after the other, never at the same time. Their data
//! directories are removed when the program ends.
//!
//! # Phases, per system
//! 1. **Peak produce**: as fast as acknowledgements come back, with at most `--*-inflight`
//!    records unacknowledged (records go round-robin over the partitions / subjects). The
//!    figure is acknowledged records per second over the phase after a 1 s warm-up.
//! 2. **Latency at half the peak**: records are due at a fixed rate (half of phase 1's figure);
//!    the latency of a record is from when it was *due* to its acknowledgement, so a sender
//!    that falls behind shows up in the figure (no coordinated omission).
//! 3. **Consume**: everything phases 1 and 2 wrote, read back from the start (a Kafka consumer
//!    assigned every partition; a JetStream pull consumer with `AckPolicy::None`, the analogue
//!    of a Kafka consumer that does not commit per record).
//!
//! CPU time of each process and thread (from `/proc`) is taken over each phase's window after
//! its warm-up, so a run says where the two cores went; per process in all, and summed over
//! the servers. RSS (VmRSS, and VmHWM as the peak) of each process is taken at each phase's end.

use foundation::process::Guard;
use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream;
use clap::{Parser, ValueEnum};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Produce throughput and latency of the cloud broker, single node and three-node cluster,
/// against NATS JetStream with one and three replicas (issues 4 and 9).
#[derive(Debug, Parser)]
#[command(name = "cloud-bench")]
struct Cli {
    /// The cloud broker binary (build it with `cargo build --release -p cloud-broker`).
    #[arg(long, default_value = "target/release/cloud-broker")]
    broker_bin: PathBuf,
    /// The NATS server binary (Debian package `nats-server`).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Which systems to run: `both` (cloud-broker and jetstream), `kafka` (cloud-broker alone),
    /// `nats` (jetstream alone), `cluster` (three nodes, RF 3), `jetstream-r3` (three servers,
    /// three replicas), `all-r3` (cloud-broker, cluster and jetstream-r3, with their ratios).
    #[arg(long, value_enum, default_value_t = Which::Both)]
    system: Which,
    /// Seconds of the peak-produce phase (the first second is warm-up; 2 at least).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the latency phase at half the peak rate (the first second is warm-up; 2 at
    /// least).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Value size of every record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Kafka partitions, and JetStream subjects.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// librdkafka `linger.ms`.
    #[arg(long, default_value_t = 2)]
    linger_ms: u32,
    /// Most unacknowledged records against the cloud broker.
    #[arg(long, default_value_t = 100_000)]
    kafka_inflight: usize,
    /// How rdkafka is driven: `callback` (one thread produces, delivery reports arrive on
    /// librdkafka's thread; how an application pushes volume) or `futures` (FutureProducer, one
    /// delivery future per record through the same async driver as JetStream's ack futures).
    #[arg(long, value_enum, default_value_t = KafkaDriverKind::Callback)]
    kafka_driver: KafkaDriverKind,
    /// Most unacknowledged publishes against JetStream.
    #[arg(long, default_value_t = 20_000)]
    nats_inflight: usize,
    /// Cluster only: leader kills during produce after the consume phase (0: none).
    #[arg(long, default_value_t = 0)]
    failovers: usize,
    /// Cluster only: records per second fed while leaders are killed.
    #[arg(long, default_value_t = 2_000.0)]
    failover_rate: f64,
    /// Cluster only: the failover producer's `reconnect.backoff.max.ms` (librdkafka's default
    /// is 10000: a broker it saw die is retried up to 10 s apart, even once it leads again).
    #[arg(long, default_value_t = 1_000)]
    reconnect_backoff_max_ms: u32,
    /// Cluster only: RSS and idle CPU per node of a fresh cluster holding this many partitions
    /// (RF 3; 0: not measured).
    #[arg(long, default_value_t = 0)]
    rss_partitions: u32,
    /// Cluster only: partitions per CreateTopics for `--rss-partitions` (one topic each).
    #[arg(long, default_value_t = 50)]
    rss_batch: u32,
    /// Cluster only: seconds idle before RSS is read for `--rss-partitions`, over which idle
    /// CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Where the data directories go [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KafkaDriverKind {
    Callback,
    Futures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    Kafka,
    Nats,
    Cluster,
    JetstreamR3,
    AllR3,
}

/// One system under test; its key in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Single,
    JetStream,
    Cluster,
    JetStreamR3,
}

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Single => "cloud-broker",
            System::JetStream => "jetstream",
            System::Cluster => "cluster",
            System::JetStreamR3 => "jetstream-r3",
        }
    }
}

impl Which {
    /// The systems to run, in order.
    fn systems(self) -> &'static [System] {
        match self {
            Which::Both => &[System::Single, System::JetStream],
            Which::Kafka => &[System::Single],
            Which::Nats => &[System::JetStream],
            Which::Cluster => &[System::Cluster],
            Which::JetstreamR3 => &[System::JetStreamR3],
            Which::AllR3 => &[System::Single, System::Cluster, System::JetStreamR3],
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tokio::select! {
            r = run(&cli) => r,
            // Returning drops the children's guards: no broker or nats-server is left behind.
            sig = foundation::shutdown::signal_received() => bail!("interrupted ({sig})"),
        }
    })
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let with_cluster = cli.system.systems().contains(&System::Cluster);
    if !with_cluster && (cli.failovers > 0 || cli.rss_partitions > 0) {
        bail!("--failovers and --rss-partitions need --system cluster or all-r3");
    }
    if cli.failovers > 0 && cli.failover_rate <= 0.0 {
        bail!("--failover-rate must be above 0");
    }
    let root = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dirs = Dirs::default();
    let mut systems = serde_json::Map::new();
    for &sys in cli.system.systems() {
        let r = match sys {
            System::Single => bench_kafka(cli, &root, &dirs).await,
            System::JetStream => bench_jetstream(cli, &root, &dirs).await,
            System::Cluster => bench_cluster(cli, &root, &dirs).await,
            System::JetStreamR3 => bench_jetstream_r3(cli, &root, &dirs).await,
        };
        systems.insert(sys.key().into(), r.context(sys.key())?);
    }
    let systems = Value::Object(systems);
    let rate = |s: &str, k: &str| systems[s][k]["records_per_s"].as_f64();
    let ratio_of = |a: &str, b: &str, k: &str| Some(rate(a, k)? / rate(b, k)?);
    let ratio = |k: &str| ratio_of("cloud-broker", "jetstream", k);
    let p99 = systems["cloud-broker"]["latency"]["p99_ms"].as_f64();
    let r3_vs_js = ratio_of("cluster", "jetstream-r3", "produce_peak");
    let r3_vs_single = ratio_of("cluster", "cloud-broker", "produce_peak");
    let r3_p99 = systems["cluster"]["latency"]["p99_ms"].as_f64();
    let stall_p99 = systems["cluster"]["failover"]["stall_p99_ms"].as_f64();
    let mut settings = json!({
        "record_bytes": cli.record_bytes, "partitions": cli.partitions,
        "peak_seconds": cli.seconds, "latency_seconds": cli.latency_seconds,
        "linger_ms": cli.linger_ms, "kafka_inflight": cli.kafka_inflight,
        "kafka_driver": format!("{:?}", cli.kafka_driver).to_lowercase(),
        "nats_inflight": cli.nats_inflight,
    });
    if with_cluster {
        settings["failovers"] = json!(cli.failovers);
        settings["failover_rate"] = json!(cli.failover_rate);
        settings["reconnect_backoff_max_ms"] = json!(cli.reconnect_backoff_max_ms);
        settings["rss_partitions"] = json!(cli.rss_partitions);
        settings["rss_batch"] = json!(cli.rss_batch);
        settings["idle_seconds"] = json!(cli.idle_seconds);
    }
    let report = json!({
        "machine": machine(),
        "settings": settings,
        "systems": systems,
        "ratio": { "produce_peak": ratio("produce_peak"), "consume": ratio("consume") },
        "ratio_r3": {
            "produce_peak_vs_jetstream_r3": r3_vs_js,
            "consume_vs_jetstream_r3": ratio_of("cluster", "jetstream-r3", "consume"),
            "produce_peak_vs_single": r3_vs_single,
            "consume_vs_single": ratio_of("cluster", "cloud-broker", "consume"),
        },
        "targets": {
            "produce_peak_at_least_2x_jetstream": ratio("produce_peak").map(|r| r >= 2.0),
            "p99_at_half_peak_at_most_10ms": p99.map(|p| p <= 10.0),
            "r3_produce_peak_at_least_2x_jetstream_r3": r3_vs_js.map(|r| r >= 2.0),
            "r3_produce_peak_at_least_0_30x_single": r3_vs_single.map(|r| r >= 0.30),
            "r3_p99_at_half_peak_at_most_10ms": r3_p99.map(|p| p <= 10.0),
            "failover_stall_p99_at_most_3s": stall_p99.map(|p| p <= 3000.0),
        },
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

// --- the load driver -------------------------------------------------------------------------

/// An acknowledgement on its way.
type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A producer under test.
trait Sink: Send + Sync + 'static {
    /// Enqueues one record for `partition`; resolves once the client took it, to a future of
    /// its acknowledgement.
    fn send(&self, partition: u32) -> impl Future<Output = anyhow::Result<Ack>> + Send;
}

/// What one produce phase measured.
#[derive(Debug, Default)]
struct Load {
    sent: u64,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    /// Acknowledged records per second after the warm-up.
    rate: f64,
    /// Latencies (µs) of records due after the warm-up (rate-limited phase only).
    latencies_us: Vec<u32>,
    /// CPU per process and thread name over the window, in % of one core.
    cpu: BTreeMap<String, BTreeMap<String, f64>>,
    /// CPU per process over the window (every thread), in % of one core.
    cpu_total: BTreeMap<String, f64>,
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
trait Phases {
    fn phase(
        &self,
        secs: u64,
        rate: Option<f64>,
        pids: &[(&'static str, u32)],
    ) -> impl Future<Output = anyhow::Result<Load>> + Send;
}

/// The async driver over a [`Sink`].
struct AsyncDriver<S> {
    sink: Arc<S>,
    partitions: u32,
    inflight: usize,
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
async fn produce_phases<P: Phases>(
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
    let half = peak.rate / 2.0;
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

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

// --- the cloud broker through rdkafka ---------------------------------------------------------

/// rdkafka's FutureProducer as a [`Sink`]: one delivery future per record.
struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    payload: Vec<u8>,
}

impl Sink for KafkaSink {
    async fn send(&self, partition: u32) -> anyhow::Result<Ack> {
        loop {
            let rec = FutureRecord::<(), [u8]>::to(&self.topic)
                .partition(partition as i32)
                .payload(&self.payload);
            let err = match self.producer.send_result(rec) {
                Ok(f) => {
                    return Ok(Box::pin(async move {
                        match f.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(e.into()),
                            Err(_) => Err(anyhow!("producer dropped")),
                        }
                    }))
                }
                Err((e, _)) => e,
            };
            if err != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                return Err(err.into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Delivery reports of the Kafka producer: counts, and latencies while a rate-limited phase
/// records them. The opaque of a record is when it was due, in µs since `base`.
struct KafkaCtx {
    base: Instant,
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Records due at or after this (µs since `base`) have their latency kept.
    record_from_us: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl ClientContext for KafkaCtx {}

impl ProducerContext for KafkaCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, due_us: usize) {
        match r {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                if due_us as u64 >= self.record_from_us.load(Ordering::Relaxed) {
                    let now = self.base.elapsed().as_micros() as u64;
                    let l = now.saturating_sub(due_us as u64).min(u64::from(u32::MAX)) as u32;
                    self.latencies_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(l);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// librdkafka driven the way an application does at speed: one thread enqueues records
/// (`produce`), librdkafka's own thread serves the delivery reports; at most
/// `queue.buffering.max.messages` records are unacknowledged.
struct KafkaDriver {
    producer: Arc<ThreadedProducer<KafkaCtx>>,
    topic: String,
    payload: Arc<Vec<u8>>,
    partitions: u32,
}

impl Phases for KafkaDriver {
    async fn phase(
        &self,
        secs: u64,
        rate: Option<f64>,
        pids: &[(&'static str, u32)],
    ) -> anyhow::Result<Load> {
        let (producer, topic, payload, partitions) = (
            self.producer.clone(),
            self.topic.clone(),
            self.payload.clone(),
            self.partitions,
        );
        let pids = pids.to_vec();
        tokio::task::spawn_blocking(move || {
            kafka_phase(&producer, &topic, &payload, partitions, secs, rate, &pids)
        })
        .await?
    }
}

fn kafka_phase(
    producer: &ThreadedProducer<KafkaCtx>,
    topic: &str,
    payload: &[u8],
    partitions: u32,
    secs: u64,
    rate: Option<f64>,
    pids: &[(&'static str, u32)],
) -> anyhow::Result<Load> {
    let ctx = producer.context();
    let (acked0, failed0) = (
        ctx.acked.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = start + Duration::from_secs(secs.max(2));
    let us = |t: Instant| t.duration_since(ctx.base).as_micros() as u64;
    ctx.record_from_us.store(
        if rate.is_some() { us(warm) } else { u64::MAX },
        Ordering::Relaxed,
    );
    let mut sent = 0u64;
    let mut window = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if window.is_none() && now >= warm {
            window = Some((now, ctx.acked.load(Ordering::Relaxed), cpu_ticks(pids)));
        }
        let due = match rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(sent as f64 / r);
                if due > now {
                    std::thread::sleep(due - now);
                }
                due
            }
            None => now,
        };
        let mut rec = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, us(due) as usize)
            .partition((sent % u64::from(partitions)) as i32)
            .payload(payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        sent += 1;
    }
    let (stop, acked_at_stop, cpu_at_stop) =
        (Instant::now(), ctx.acked.load(Ordering::Relaxed), cpu_ticks(pids));
    producer
        .flush(Duration::from_secs(60))
        .context("acknowledgements still outstanding 60 s after the phase")?;
    ctx.record_from_us.store(u64::MAX, Ordering::Relaxed);
    let (w0, a0, c0) = window.ok_or_else(|| anyhow!("phase shorter than its warm-up"))?;
    let secs = stop.duration_since(w0).as_secs_f64();
    Ok(Load {
        sent,
        acked: ctx.acked.load(Ordering::Relaxed) - acked0,
        failed: ctx.failed.load(Ordering::Relaxed) - failed0,
        first_error: ctx.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        rate: (acked_at_stop - a0) as f64 / secs,
        latencies_us: std::mem::take(&mut *ctx.latencies_us.lock().unwrap_or_else(|e| e.into_inner())),
        cpu: cpu_percent(&c0, &cpu_at_stop, secs),
        cpu_total: cpu_totals(&c0, &cpu_at_stop, secs),
    })
}

async fn bench_kafka(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let port = foundation::net::free_port()?;
    let dir = dirs.fresh(root, "cloud-broker")?;
    let broker = spawn_server(
        "cloud-broker",
        Command::new(&cli.broker_bin)
            .args(["run", "--kafka-listen", &format!("127.0.0.1:{port}")])
            .args([
                "--http-listen",
                &format!("127.0.0.1:{}", foundation::net::free_port()?),
            ])
            .arg("--data-dir")
            .arg(&dir)
            .env("CLOUD_LOG", "warn"),
        port,
    )
    .await?;
    let addr = format!("127.0.0.1:{port}");
    create_topic(&addr, TOPIC, cli.partitions, 1, Duration::ZERO).await?;
    let r = kafka_phases(cli, &addr, &[("cloud-broker", broker.pid())]).await;
    drop(broker);
    r
}

/// The topic every Kafka run writes.
const TOPIC: &str = "bench";

/// Creates `topic` with `partitions` partitions of `replicas` replicas through `addr`,
/// retrying for up to `retry_for` while it fails (a cluster's controller is elected while its
/// nodes start); one that already exists counts as created.
async fn create_topic(
    addr: &str,
    topic: &str,
    partitions: u32,
    replicas: i32,
    retry_for: Duration,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", addr).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = [NewTopic::new(
        topic,
        partitions as i32,
        TopicReplication::Fixed(replicas),
    )];
    let deadline = Instant::now() + retry_for;
    loop {
        let err = match admin.create_topics(&new, &opts).await {
            Ok(r) => match r.first() {
                Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
                Some(Err((t, e))) => anyhow!("creating topic {t}: {e}"),
                None => anyhow!("creating topic {topic}: an empty answer"),
            },
            Err(e) => anyhow!("creating topic {topic}: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until Metadata through `addr` shows every one of `topics` (name, partitions) with a
/// leader for each partition.
async fn wait_leaders(addr: &str, topics: &[(String, u32)], timeout: Duration) -> anyhow::Result<()> {
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", addr).create()?;
    foundation::wait::until_async(timeout, "every partition to have a leader", || {
        let md = probe.fetch_metadata(None, Duration::from_secs(2)).ok()?;
        let led = |name: &str, n: u32| {
            md.topics().iter().any(|t| {
                t.name() == name
                    && t.partitions().len() == n as usize
                    && t.partitions().iter().all(|p| p.leader() > 0)
            })
        };
        topics.iter().all(|(t, n)| led(t, *n)).then_some(())
    })
    .await
}

/// The Kafka phases against the brokers at `addr` (a bootstrap list) on the topic made
/// before: peak, latency at half peak, consume. `servers` are sampled for CPU and RSS.
async fn kafka_phases(cli: &Cli, addr: &str, servers: &[(&'static str, u32)]) -> anyhow::Result<Value> {
    let topic = TOPIC;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "none")
        .set("linger.ms", cli.linger_ms.to_string())
        .set("queue.buffering.max.messages", cli.kafka_inflight.to_string())
        .set("message.timeout.ms", "60000");
    let mut pids = servers.to_vec();
    pids.push((BENCH, std::process::id()));
    let (peak, latency, written) = match cli.kafka_driver {
        KafkaDriverKind::Callback => {
            let producer: ThreadedProducer<KafkaCtx> = config.create_with_context(KafkaCtx {
                base: Instant::now(),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                first_error: Mutex::new(None),
                record_from_us: AtomicU64::new(u64::MAX),
                latencies_us: Mutex::new(Vec::new()),
            })?;
            let driver = KafkaDriver {
                producer: Arc::new(producer),
                topic: topic.into(),
                payload: Arc::new(payload(cli.record_bytes)),
                partitions: cli.partitions,
            };
            produce_phases(cli, &driver, &pids).await?
        }
        KafkaDriverKind::Futures => {
            // The async driver bounds what is in flight; librdkafka's queue must not.
            config.set(
                "queue.buffering.max.messages",
                (cli.kafka_inflight + 1000).to_string(),
            );
            let sink = KafkaSink {
                producer: config.create()?,
                topic: topic.into(),
                payload: payload(cli.record_bytes),
            };
            let driver = AsyncDriver {
                sink: Arc::new(sink),
                partitions: cli.partitions,
                inflight: cli.kafka_inflight,
            };
            produce_phases(cli, &driver, &pids).await?
        }
    };

    // Consume: every partition from the start, until the high watermarks taken first.
    let (addr2, parts, topic2) = (addr.to_string(), cli.partitions as i32, topic.to_string());
    let consume = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, f64)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr2)
            .set("group.id", "cloud-bench")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut hw = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            hw.push(c.fetch_watermarks(&topic2, p, Duration::from_secs(10))?.1);
            tpl.add_partition_offset(&topic2, p, Offset::Beginning)?;
        }
        let start = Instant::now();
        c.assign(&tpl)?;
        let deadline = start + Duration::from_secs(60);
        let mut next = vec![0i64; parts as usize];
        let (mut n, mut bytes) = (0u64, 0u64);
        while next.iter().zip(&hw).any(|(a, b)| a < b) {
            if Instant::now() > deadline {
                bail!("consumed {n} records in 60 s, not all");
            }
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m?;
                n += 1;
                bytes += m.payload_len() as u64;
                next[m.partition() as usize] = m.offset() + 1;
            }
        }
        Ok((n, bytes, start.elapsed().as_secs_f64()))
    })
    .await??;
    if consume.0 != written {
        bail!("wrote {written} records, read back {}", consume.0);
    }
    Ok(json!({
        "produce_peak": peak,
        "latency": latency,
        "consume": consume_json(consume),
    }))
}

fn consume_json((n, bytes, secs): (u64, u64, f64)) -> Value {
    json!({
        "records": n,
        "records_per_s": (n as f64 / secs).round(),
        "mb_per_s": round2(bytes as f64 / secs / 1e6),
    })
}

// --- the cloud broker as a three-node cluster ---------------------------------------------------

/// The cluster's nodes' names in CPU and RSS figures; node `i` has id `i + 1`.
const NODE_NAMES: [&str; 3] = ["cloud-broker-1", "cloud-broker-2", "cloud-broker-3"];

/// One `cloud-broker run` node of a cluster, with what it takes to start it again on the
/// same ports, data directory and peers.
struct Node {
    name: &'static str,
    args: Vec<String>,
    kafka: u16,
    http: u16,
    process: Option<Guard>,
}

/// Three cluster nodes on loopback, each a process over its own directory; killed on drop.
struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts three nodes (ids 1–3) over `dir/node-N` and waits until each accepts
    /// connections (not until they have formed: see [`Cluster::formed`]).
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Cluster> {
        // Distinct ports: two nodes given the same one would have one answer for the other.
        let mut all: Vec<u16> = Vec::new();
        while all.len() < 3 * NODE_NAMES.len() {
            let p = foundation::net::free_port()?;
            if !all.contains(&p) {
                all.push(p);
            }
        }
        let ports: Vec<(u16, u16, u16)> = all.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let mut nodes = Vec::new();
        for (i, &(kafka, http, raft)) in ports.iter().enumerate() {
            let mut args = vec![
                "run".to_string(),
                "--kafka-listen".into(),
                format!("127.0.0.1:{kafka}"),
                "--http-listen".into(),
                format!("127.0.0.1:{http}"),
                "--data-dir".into(),
                dir.join(format!("node-{}", i + 1)).display().to_string(),
                "--node-id".into(),
                (i + 1).to_string(),
                "--raft-listen".into(),
                format!("127.0.0.1:{raft}"),
            ];
            for (j, &(_, _, other)) in ports.iter().enumerate().filter(|(j, _)| *j != i) {
                args.push("--peer".into());
                args.push(format!("{}=127.0.0.1:{other}", j + 1));
            }
            nodes.push(Node {
                name: NODE_NAMES[i],
                args,
                kafka,
                http,
                process: None,
            });
        }
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            nodes,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    /// Starts node `i` (again) with its arguments, once it accepts connections.
    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let mut cmd = Command::new(&self.bin);
        // openraft warns of every RPC to a node that is down; the failover rounds make that happen.
        cmd.args(&n.args).env("CLOUD_LOG", "warn,openraft=error");
        n.process = Some(spawn_server(n.name, &mut cmd, n.kafka).await?);
        Ok(())
    }

    /// SIGKILL to node `i`, and waits until it is gone.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill9();
        }
    }

    /// Indices of the nodes running.
    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].process.is_some())
    }

    /// Every node's Kafka address.
    fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.kafka))
            .collect();
        addrs.join(",")
    }

    /// The running nodes' names and process ids.
    fn pids(&self) -> Vec<(&'static str, u32)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name, n.process.as_ref()?.pid())))
            .collect()
    }

    /// Waits until Metadata names every node (each has registered with the controller).
    async fn formed(&self) -> anyhow::Result<()> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let n = self.nodes.len();
        foundation::wait::until_async(Duration::from_secs(60), "the cluster to form", || {
            let seen = probe
                .fetch_metadata(None, Duration::from_secs(2))
                .map_or(0, |m| m.brokers().len());
            (seen >= n).then_some(())
        })
        .await
    }

    /// `GET /api/cluster` of node `i`, if it answers.
    fn status(&self, i: usize) -> Option<Value> {
        let addr = format!("127.0.0.1:{}", self.nodes[i].http);
        let (code, body) =
            foundation::http::request(&addr, "GET", "/api/cluster", Duration::from_secs(2)).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The leader of `topic`/`partition` that every running node names: its index.
    async fn agreed_leader(&self, topic: &str, partition: i64) -> anyhow::Result<usize> {
        let running: Vec<usize> = self.running().collect();
        foundation::wait::until_async(
            Duration::from_secs(30),
            "the running nodes to agree on a leader",
            || {
                let mut seen = running
                    .iter()
                    .map(|&i| leader_in(&self.status(i)?, topic, partition));
                let first = seen.next()??;
                seen.all(|l| l == Some(first)).then_some(first)
            },
        )
        .await
        .and_then(|id| {
            let i = usize::try_from(id - 1)?;
            (i < self.nodes.len())
                .then_some(i)
                .ok_or_else(|| anyhow!("leader {id} is no node of ours"))
        })
    }
}

/// The leader of `topic`/`partition` in a node's `/api/cluster` (none: absent or -1).
fn leader_in(status: &Value, topic: &str, partition: i64) -> Option<i64> {
    status["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)?["leader"]
        .as_i64()
        .filter(|l| *l > 0)
}

/// The `cluster` system: the Kafka phases on a three-node cluster with a topic of
/// replication factor 3; then, as asked, leader kills on the same cluster and RSS of a fresh
/// one with many partitions.
async fn bench_cluster(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let dir = dirs.fresh(root, "cluster")?;
    let mut cluster = Cluster::start(&cli.broker_bin, &dir).await?;
    let addr = cluster.bootstrap();
    cluster.formed().await?;
    create_topic(&addr, TOPIC, cli.partitions, 3, Duration::from_secs(60)).await?;
    wait_leaders(&addr, &[(TOPIC.into(), cli.partitions)], Duration::from_secs(60)).await?;
    let mut r = kafka_phases(cli, &addr, &cluster.pids()).await?;
    if cli.failovers > 0 {
        r["failover"] = failovers(cli, &mut cluster).await.context("failover")?;
    }
    drop(cluster);
    if cli.rss_partitions > 0 {
        r["rss"] = rss_with_partitions(cli, root, dirs).await.context("rss")?;
    }
    Ok(r)
}

/// `--failovers`: kills the leader of partition 0 of a topic fed at a fixed rate, measures
/// each produce stall, starts the node again and waits for it to catch up, `cli.failovers`
/// times.
async fn failovers(cli: &Cli, cluster: &mut Cluster) -> anyhow::Result<Value> {
    const FAILOVER_TOPIC: &str = "failover";
    let addr = cluster.bootstrap();
    create_topic(&addr, FAILOVER_TOPIC, cli.partitions, 3, Duration::from_secs(60)).await?;
    wait_leaders(
        &addr,
        &[(FAILOVER_TOPIC.into(), cli.partitions)],
        Duration::from_secs(60),
    )
    .await?;
    // Partitions of every topic on the cluster: the bench topic and this one.
    let all_partitions = 2 * cli.partitions as usize;
    // Requests time out after 5 s, on the broker and on the socket, so one sent to a dead
    // node is retried elsewhere; records wait up to 2 minutes for delivery. librdkafka backs
    // off reconnecting to a broker it saw die, doubling up to 10 s by default: every round
    // here kills and restarts a node, and when that node later leads, the backoff (not the
    // cluster) would make the stall; 1 s caps it (`--reconnect-backoff-max-ms`).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "none")
        .set("linger.ms", cli.linger_ms.to_string())
        .set("request.timeout.ms", "5000")
        .set("socket.timeout.ms", "5000")
        .set(
            "reconnect.backoff.max.ms",
            cli.reconnect_backoff_max_ms.to_string(),
        )
        .set("message.timeout.ms", "120000")
        .create()?;
    let feed = Feed::start(
        producer,
        FAILOVER_TOPIC,
        cli.partitions,
        cli.failover_rate,
        payload(cli.record_bytes),
    );
    foundation::wait::until_async(Duration::from_secs(30), "the first acknowledgements", || {
        (feed.state.acked.load(Ordering::Relaxed) >= 100).then_some(())
    })
    .await?;
    let (mut stalls, mut elected) = (Vec::new(), Vec::new());
    for round in 1..=cli.failovers {
        let victim = cluster.agreed_leader(FAILOVER_TOPIC, 0).await?;
        let t = Instant::now();
        cluster.kill(victim);
        let old = victim as i64 + 1;
        let running: Vec<usize> = cluster.running().collect();
        let e = foundation::wait::until_async(Duration::from_secs(60), "a new leader", || {
            running
                .iter()
                .any(|&i| {
                    cluster
                        .status(i)
                        .and_then(|s| leader_in(&s, FAILOVER_TOPIC, 0))
                        .is_some_and(|l| l != old)
                })
                .then(|| t.elapsed())
        })
        .await?;
        let s = foundation::wait::until_async(Duration::from_secs(60), "produce to resume", || {
            feed.first_ack_after(t)
        })
        .await?
            - t;
        if !cli.json {
            println!(
                "failover {round}/{}: node {old} (leader of {FAILOVER_TOPIC}/0) killed; a new leader seen after \
                 {:.0} ms, partition 0 stalled {:.0} ms",
                cli.failovers,
                e.as_secs_f64() * 1e3,
                s.as_secs_f64() * 1e3
            );
        }
        stalls.push(s);
        elected.push(e);
        // It comes back, sees every partition led and holds what was acknowledged before.
        let high = feed.high_offsets();
        cluster.start_node(victim).await?;
        foundation::wait::until_async(
            Duration::from_secs(120),
            "the restarted node to see every partition led and catch up",
            || {
                let v = cluster.status(victim)?;
                let parts = v["partitions"].as_array()?;
                let led = parts.len() >= all_partitions
                    && parts.iter().all(|p| p["leader"].as_i64().is_some_and(|l| l > 0));
                let caught_up = parts.iter().filter(|p| p["topic"] == FAILOVER_TOPIC).all(|p| {
                    let hw = p["high_watermark"].as_i64().unwrap_or(-1);
                    let acked = p["partition"]
                        .as_u64()
                        .and_then(|i| high.get(i as usize).copied());
                    acked.is_some_and(|a| hw > a)
                });
                (led && caught_up).then_some(())
            },
        )
        .await?;
    }
    let st = feed.stop().await?;
    let ms = |d: &Duration| round2(d.as_secs_f64() * 1e3);
    let (s, e) = (nearest_rank(&stalls), nearest_rank(&elected));
    Ok(json!({
        "kills": cli.failovers,
        "rate": cli.failover_rate,
        "stalls_ms": stalls.iter().map(ms).collect::<Vec<_>>(),
        "stall_p50_ms": s(0.50).map(|d| ms(&d)),
        "stall_p99_ms": s(0.99).map(|d| ms(&d)),
        "stall_max_ms": s(1.0).map(|d| ms(&d)),
        "new_leader_seen_p50_ms": e(0.50).map(|d| ms(&d)),
        "new_leader_seen_max_ms": e(1.0).map(|d| ms(&d)),
        "acked": st.acked.load(Ordering::Relaxed),
        "failed": st.failed.load(Ordering::Relaxed),
        "first_error": st.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }))
}

/// The `q` quantile of `v` by nearest rank (the `ceil(q n)`-th smallest; `None` if empty).
fn nearest_rank(v: &[Duration]) -> impl Fn(f64) -> Option<Duration> {
    let mut s = v.to_vec();
    s.sort();
    move |q| {
        let rank = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len().max(1));
        s.get(rank - 1).copied()
    }
}

/// What a [`Feed`] saw.
#[derive(Default)]
struct FeedState {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Partition 0's acknowledgements in the order they arrived: (handed over, acknowledged).
    p0: Mutex<Vec<(Instant, Instant)>>,
    /// The highest offset acknowledged per partition (-1: none yet).
    high: Mutex<Vec<i64>>,
}

impl FeedState {
    fn failure(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }
}

/// Records to every partition of a topic in turn at a fixed rate through an idempotent
/// `acks=all` producer, until stopped. At most `FEED_INFLIGHT` wait for their report: far more
/// than a few seconds' stall at the rate, so a stall does not stop the feed. Dropped
/// without [`Feed::stop`] (a round failed), it stops at once.
struct Feed {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    state: Arc<FeedState>,
}

const FEED_INFLIGHT: usize = 50_000;

impl Feed {
    fn start(producer: FutureProducer, topic: &str, partitions: u32, rate: f64, payload: Vec<u8>) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(FeedState {
            high: Mutex::new(vec![-1; partitions as usize]),
            ..Default::default()
        });
        let (halt, st, topic) = (stop.clone(), state.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(FEED_INFLIGHT));
            let start = Instant::now();
            let mut i = 0u64;
            while !halt.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let permit = permits.clone().acquire_owned().await?;
                let partition = (i % u64::from(partitions)) as i32;
                let delivery = loop {
                    let rec = FutureRecord::<(), [u8]>::to(&topic)
                        .partition(partition)
                        .payload(&payload);
                    match producer.send_result(rec) {
                        Ok(d) => break d,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                };
                let sent = Instant::now();
                i += 1;
                let st = st.clone();
                tokio::spawn(async move {
                    let report = delivery.await;
                    let at = Instant::now();
                    match report {
                        Ok(Ok(d)) => {
                            st.acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(h) = st
                                .high
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_mut(d.partition as usize)
                            {
                                *h = (*h).max(d.offset);
                            }
                            if d.partition == 0 {
                                st.p0.lock().unwrap_or_else(|e| e.into_inner()).push((sent, at));
                            }
                        }
                        Ok(Err((e, _))) => st.failure(e.to_string()),
                        Err(_) => st.failure("the producer went away".into()),
                    }
                    drop(permit);
                });
            }
            // Every report is in once all permits are back.
            let _all = permits.acquire_many(FEED_INFLIGHT as u32).await?;
            Ok(())
        });
        Feed {
            stop,
            task: Some(task),
            state,
        }
    }

    /// When a record handed over after `t` was first acknowledged on partition 0, if one has
    /// been: `t` plus the produce stall, when `t` is the moment of a fault.
    fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        let p0 = self.state.p0.lock().unwrap_or_else(|e| e.into_inner());
        p0.iter()
            .rev()
            .take_while(|(_, at)| *at > t)
            .filter(|(sent, _)| *sent > t)
            .map(|(_, at)| *at)
            .min()
    }

    /// The highest offset acknowledged per partition so far (-1: none).
    fn high_offsets(&self) -> Vec<i64> {
        self.state.high.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops feeding and waits for every outstanding report.
    async fn stop(mut self) -> anyhow::Result<Arc<FeedState>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(self.state.clone())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `--rss-partitions`: a fresh cluster's RSS per node once formed, then with topics of
/// `cli.rss_partitions` partitions (RF 3) after `cli.idle_seconds` idle, and the CPU per node
/// over that idle window.
async fn rss_with_partitions(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let dir = dirs.fresh(root, "cluster-rss")?;
    let cluster = Cluster::start(&cli.broker_bin, &dir).await?;
    let addr = cluster.bootstrap();
    cluster.formed().await?;
    let pids = cluster.pids();
    let before = rss_mib(&pids);
    let t = Instant::now();
    let mut topics: Vec<(String, u32)> = Vec::new();
    let mut left = cli.rss_partitions;
    while left > 0 {
        let n = left.min(cli.rss_batch.max(1));
        let name = format!("rss-{}", topics.len());
        create_topic(&addr, &name, n, 3, Duration::from_secs(60)).await?;
        topics.push((name, n));
        wait_leaders(&addr, &topics, Duration::from_secs(120)).await?;
        left -= n;
    }
    let created = t.elapsed();
    let (t0, c0) = (Instant::now(), cpu_ticks(&pids));
    tokio::time::sleep(Duration::from_secs(cli.idle_seconds.max(1))).await;
    let idle = cpu_totals(&c0, &cpu_ticks(&pids), t0.elapsed().as_secs_f64());
    let after = rss_mib(&pids);
    let per_partition: BTreeMap<&String, f64> = after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).map_or(0.0, |b| b.0);
            (k, round2((v.0 - b) * 1024.0 / f64::from(cli.rss_partitions)))
        })
        .collect();
    drop(cluster);
    Ok(json!({
        "partitions": cli.rss_partitions,
        "replication_factor": 3,
        "topics": topics.len(),
        "create_seconds": round2(created.as_secs_f64()),
        "idle_seconds": cli.idle_seconds.max(1),
        "rss_mib_formed_no_topics": before.iter().map(|(k, v)| (k.clone(), v.0)).collect::<BTreeMap<_, _>>(),
        "rss_mib": after.iter().map(|(k, v)| (k.clone(), v.0)).collect::<BTreeMap<_, _>>(),
        "rss_peak_mib": after.iter().map(|(k, v)| (k.clone(), v.1)).collect::<BTreeMap<_, _>>(),
        "kib_per_partition": per_partition,
        "idle_cpu_percent_of_a_core": idle.iter().map(|(k, v)| (k.clone(), round2(*v))).collect::<BTreeMap<_, _>>(),
    }))
}

// --- JetStream through async-nats --------------------------------------------------------------

struct NatsSink {
    js: jetstream::Context,
    subjects: Vec<async_nats::Subject>,
    payload: bytes::Bytes,
}

impl Sink for NatsSink {
    async fn send(&self, partition: u32) -> anyhow::Result<Ack> {
        let f = self
            .js
            .publish(self.subjects[partition as usize].clone(), self.payload.clone())
            .await?;
        Ok(Box::pin(async move {
            f.into_future().await.map(|_| ()).map_err(anyhow::Error::from)
        }))
    }
}

async fn bench_jetstream(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let port = foundation::net::free_port()?;
    let dir = dirs.fresh(root, "jetstream")?;
    let server = spawn_server(
        "nats-server",
        Command::new(&cli.nats_server)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        port,
    )
    .await?;
    let client = async_nats::ConnectOptions::new()
        .connect(format!("127.0.0.1:{port}"))
        .await?;
    // JetStream may take a moment after the port opens.
    let r = jetstream_phases(
        cli,
        client,
        1,
        Duration::from_secs(20),
        &[("nats-server", server.pid())],
    )
    .await;
    drop(server);
    r
}

/// The three JetStream servers' names in CPU and RSS figures.
const NATS_NAMES: [&str; 3] = ["nats-server-1", "nats-server-2", "nats-server-3"];

/// The `jetstream-r3` system: three `nats-server -js` processes clustered over routes on
/// loopback, a stream of three replicas, one client connected to the three.
async fn bench_jetstream_r3(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let dir = dirs.fresh(root, "jetstream-r3")?;
    let mut all: Vec<u16> = Vec::new();
    while all.len() < 2 * NATS_NAMES.len() {
        let p = foundation::net::free_port()?;
        if !all.contains(&p) {
            all.push(p);
        }
    }
    let ports: Vec<(u16, u16)> = all.chunks(2).map(|c| (c[0], c[1])).collect();
    let mut servers = Vec::new();
    for (i, &(port, cluster_port)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
            .collect();
        // A JetStream cluster needs each server named and the cluster named.
        let server = spawn_server(
            NATS_NAMES[i],
            Command::new(&cli.nats_server)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-n", &format!("n{}", i + 1), "--cluster_name", "bench"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes.join(",")])
                .arg("-sd")
                .arg(dir.join(format!("n{}", i + 1)))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            port,
        )
        .await?;
        servers.push(server);
    }
    let addrs: Vec<String> = ports.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect();
    let client = async_nats::ConnectOptions::new().connect(addrs).await?;
    let pids: Vec<(&'static str, u32)> = NATS_NAMES
        .iter()
        .copied()
        .zip(servers.iter().map(Guard::pid))
        .collect();
    // The stream can be made once the servers have met and elected a meta leader.
    let r = jetstream_phases(cli, client, 3, Duration::from_secs(60), &pids).await;
    drop(servers);
    r
}

/// The JetStream phases through `client`: a stream of `replicas` replicas (creation retried
/// for up to `create_for`), peak, latency at half peak, consume. `servers` are sampled for
/// CPU and RSS.
async fn jetstream_phases(
    cli: &Cli,
    client: async_nats::Client,
    replicas: usize,
    create_for: Duration,
    servers: &[(&'static str, u32)],
) -> anyhow::Result<Value> {
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(cli.nats_inflight)
        .backpressure_on_inflight(true)
        .build(client);
    let subjects: Vec<async_nats::Subject> =
        (0..cli.partitions).map(|p| format!("bench.{p}").into()).collect();
    let config = jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.*".into()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let deadline = Instant::now() + create_for;
    let stream = loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e).context("creating the stream"),
        }
    };
    if replicas > 1 {
        // Publishes fail until the stream's own Raft group has elected a leader.
        let until = Instant::now() + Duration::from_secs(30);
        while stream
            .get_info()
            .await
            .ok()
            .and_then(|i| i.cluster?.leader)
            .is_none()
        {
            if Instant::now() >= until {
                bail!("the stream has no leader after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sink = NatsSink {
        js: js.clone(),
        subjects,
        payload: bytes::Bytes::from(payload(cli.record_bytes)),
    };
    let driver = AsyncDriver {
        sink: Arc::new(sink),
        partitions: cli.partitions,
        inflight: cli.nats_inflight,
    };
    let mut pids = servers.to_vec();
    pids.push((BENCH, std::process::id()));
    let (peak, latency, written) = produce_phases(cli, &driver, &pids).await?;

    let info = stream.get_info().await?;
    let total = info.state.messages;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut messages = consumer.stream().max_messages_per_batch(1000).messages().await?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let deadline = start + Duration::from_secs(60);
    while n < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, messages.next())
            .await
            .map_err(|_| anyhow!("consumed {n} of {total} messages in 60 s"))?
            .ok_or_else(|| anyhow!("message stream ended"))??;
        n += 1;
        bytes += m.payload.len() as u64;
    }
    let consume = (n, bytes, start.elapsed().as_secs_f64());
    drop(messages);
    if total != written {
        bail!("published {written} messages, the stream holds {total}");
    }
    let mut r = json!({
        "produce_peak": peak,
        "latency": latency,
        "consume": consume_json(consume),
    });
    if replicas > 1 {
        // Where the stream lives, as JetStream reports it: proof of the replicas, and whether
        // the client's server led the stream (else every publish crosses a route).
        let c = info.cluster.unwrap_or_default();
        let followers: Vec<Value> = c
            .replicas
            .iter()
            .map(|p| json!({ "name": p.name, "current": p.current }))
            .collect();
        r["stream"] = json!({
            "replicas": info.config.num_replicas,
            "leader": c.leader,
            "followers": followers,
            "client_connected_to": js.client().server_info().server_name,
        });
    }
    Ok(r)
}

// --- processes, ports, /proc -------------------------------------------------------------------

/// Data directories, removed when the run ends: not between the two systems, since deleting
/// gigabytes (with `discard` on the file system) loads the disk while the next one is measured.
#[derive(Default)]
struct Dirs(Mutex<Vec<PathBuf>>);

impl Dirs {
    /// A fresh directory under `root`, removed with the others.
    fn fresh(&self, root: &Path, tag: &str) -> anyhow::Result<PathBuf> {
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

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A server process (killed on drop), once it listens on `port`. Waits without blocking
/// the runtime, so Ctrl-C is served meanwhile.
async fn spawn_server(name: &str, cmd: &mut Command, port: u16) -> anyhow::Result<Guard> {
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
const BENCH: &str = "cloud-bench";

/// 100 printable bytes (or `n`), the same for both systems.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// CPU ticks (user + system) per process, per thread: `tid -> (thread name, ticks)`.
type Ticks = BTreeMap<String, BTreeMap<u32, (String, u64)>>;

/// CPU per process and thread name between two samples, in % of one core (threads under
/// 0.5 % left out). Threads are matched by id: a thread that started in between counts from
/// zero, one that ended is not seen (tokio's blocking threads come and go).
fn cpu_percent(before: &Ticks, after: &Ticks, secs: f64) -> BTreeMap<String, BTreeMap<String, f64>> {
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
fn cpu_totals(before: &Ticks, after: &Ticks, secs: f64) -> BTreeMap<String, f64> {
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
fn rss_mib(pids: &[(&str, u32)]) -> BTreeMap<String, (f64, f64)> {
    pids.iter()
        .map(|&(name, pid)| {
            let (rss, hwm) = foundation::procfs::rss_kib(pid);
            let mib = |k: u64| round2(k as f64 / 1024.0);
            (name.to_string(), (mib(rss), mib(hwm)))
        })
        .collect()
}

/// CPU ticks of every thread of `pids`.
fn cpu_ticks(pids: &[(&str, u32)]) -> Ticks {
    pids.iter()
        .map(|&(name, pid)| (name.to_string(), foundation::procfs::thread_ticks(pid)))
        .collect()
}

fn machine() -> Value {
    let m = foundation::procfs::machine();
    json!({
        "nproc": m.nproc,
        "mem_total_gib": round2(m.mem_total_kib as f64 / 1024.0 / 1024.0),
    })
}

/// The table's system columns, in order: report key, heading.
const COLUMNS: [(&str, &str); 4] = [
    ("cloud-broker", "cloud-broker"),
    ("jetstream", "jetstream"),
    ("cluster", "cluster (R3)"),
    ("jetstream-r3", "jetstream-r3"),
];

/// The table's ratio columns: heading, numerator, denominator.
const RATIOS: [(&str, &str, &str); 3] = [
    ("ratio", "cloud-broker", "jetstream"),
    ("r3/js-r3", "cluster", "jetstream-r3"),
    ("r3/single", "cluster", "cloud-broker"),
];

fn print_table(r: &Value) {
    let s = &r["systems"];
    let f = |v: &Value| match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    println!(
        "machine: {} cores, {} GiB; {}-byte records, {} partitions/subjects, acks=all",
        r["machine"]["nproc"],
        r["machine"]["mem_total_gib"],
        r["settings"]["record_bytes"],
        r["settings"]["partitions"]
    );
    let ran = |k: &str| !s[k].is_null();
    let cols: Vec<(&str, &str)> = COLUMNS.into_iter().filter(|(k, _)| ran(k)).collect();
    let ratios: Vec<(&str, &str, &str)> = RATIOS.into_iter().filter(|(_, a, b)| ran(a) && ran(b)).collect();
    let mut head = format!("{:<34}", "");
    for (_, h) in &cols {
        head += &format!(" {h:>14}");
    }
    for (h, _, _) in &ratios {
        head += &format!(" {h:>8}");
    }
    println!("{head}");
    let row = |label: &str, path: &[&str], ratio: bool| {
        let get = |sys: &str| path.iter().fold(&s[sys], |v, k| &v[*k]).clone();
        let mut line = format!("{label:<34}");
        for (k, _) in &cols {
            line += &format!(" {:>14}", f(&get(k)));
        }
        for (h, a, b) in &ratios {
            let rt = match (get(a).as_f64(), get(b).as_f64()) {
                (Some(a), Some(b)) if ratio && b > 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            };
            line += &format!(" {rt:>w$}", w = h.len().max(8));
        }
        println!("{line}");
    };
    row(
        "produce peak, records/s",
        &["produce_peak", "records_per_s"],
        true,
    );
    row("produce peak, MB/s", &["produce_peak", "mb_per_s"], true);
    row(
        "latency phase rate, records/s",
        &["latency", "achieved_rate"],
        false,
    );
    row("  p50 ms", &["latency", "p50_ms"], false);
    row("  p99 ms", &["latency", "p99_ms"], false);
    row("  p99.9 ms", &["latency", "p999_ms"], false);
    row("  max ms", &["latency", "max_ms"], false);
    row("consume, records/s", &["consume", "records_per_s"], true);
    row("consume, MB/s", &["consume", "mb_per_s"], true);
    row(
        "servers' CPU at peak, % of a core",
        &["produce_peak", "servers_cpu_percent_of_a_core"],
        false,
    );
    row(
        "servers' RSS after peak, MiB",
        &["produce_peak", "servers_rss_mib"],
        false,
    );
    for (sys, _) in &cols {
        for phase in ["produce_peak", "latency"] {
            let p = &s[sys][phase];
            let Some(cpu) = p["cpu_percent_of_a_core"].as_object() else {
                continue;
            };
            for (proc_name, threads) in cpu {
                let list: Vec<String> = threads
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(t, v)| format!("{t} {:.0}%", v.as_f64().unwrap_or(0.0)))
                    .collect();
                let at = if phase == "latency" { "half peak" } else { "peak" };
                let total = p["cpu_total_percent_of_a_core"][proc_name]
                    .as_f64()
                    .unwrap_or(0.0);
                let rss = p["rss_mib"][proc_name].as_f64().unwrap_or(0.0);
                println!(
                    "cpu at {at} ({sys} run), {proc_name} ({total:.0}% in all, RSS {rss:.0} MiB): {}",
                    list.join(", ")
                );
            }
        }
    }
    let fo = &s["cluster"]["failover"];
    if fo.is_object() {
        println!(
            "failover: {} kills of partition 0's leader at {} records/s: stall p50 {} ms, p99 {} ms, max {} ms; \
             new leader seen p50 {} ms; {} records acknowledged, {} failed",
            fo["kills"],
            fo["rate"],
            f(&fo["stall_p50_ms"]),
            f(&fo["stall_p99_ms"]),
            f(&fo["stall_max_ms"]),
            f(&fo["new_leader_seen_p50_ms"]),
            fo["acked"],
            fo["failed"]
        );
    }
    let rss = &s["cluster"]["rss"];
    if let Some(nodes) = rss["rss_mib"].as_object() {
        println!(
            "rss with {} partitions (RF 3, {} topics, all led after {} s), after {} s idle:",
            rss["partitions"], rss["topics"], rss["create_seconds"], rss["idle_seconds"]
        );
        for (node, v) in nodes {
            println!(
                "  {node}: {} MiB (formed, no topics: {} MiB; {} KiB per partition), idle CPU {}% of a core",
                f(v),
                f(&rss["rss_mib_formed_no_topics"][node]),
                f(&rss["kib_per_partition"][node]),
                f(&rss["idle_cpu_percent_of_a_core"][node])
            );
        }
    }
    let t = &r["targets"];
    if ran("cloud-broker") || ran("jetstream") {
        println!(
            "targets: produce ≥ 2× JetStream: {}; p99 ≤ 10 ms at half peak: {}",
            t["produce_peak_at_least_2x_jetstream"], t["p99_at_half_peak_at_most_10ms"]
        );
    }
    if ran("cluster") || ran("jetstream-r3") {
        println!(
            "targets R3: produce ≥ 2× JetStream R3: {}; ≥ 0.30× single node: {}; p99 ≤ 10 ms at half peak: {}; \
             failover stall p99 ≤ 3 s: {}",
            t["r3_produce_peak_at_least_2x_jetstream_r3"],
            t["r3_produce_peak_at_least_0_30x_single"],
            t["r3_p99_at_half_peak_at_most_10ms"],
            t["failover_stall_p99_at_most_3s"]
        );
    }
}
