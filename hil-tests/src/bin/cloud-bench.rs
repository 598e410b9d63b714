//! `cloud-bench`: the issue-4 benchmark. The cloud broker against NATS JetStream, one load
//! shape, one run, one machine.
//!
//! # Systems
//! - `cloud-broker`: the release binary on a fresh data dir, driven by the rdkafka crate
//!   (librdkafka) — the client the bridge uses: an idempotent producer, `acks=all`, small
//!   linger, no compression; a topic of `--partitions` partitions made with CreateTopics. By
//!   default one thread enqueues records and librdkafka's thread counts the delivery reports
//!   (`--kafka-driver callback`, at most `--kafka-inflight` records unacknowledged);
//!   `--kafka-driver futures` drives a FutureProducer through the same async driver as
//!   JetStream instead, one delivery future per record.
//! - `jetstream`: Debian's `nats-server -js` on a fresh store dir, driven by async-nats: one
//!   stream over `--partitions` subjects (`bench.0` …), file storage, one replica; publishes
//!   with their ack futures in flight (at most `--nats-inflight`). nats-server 2.9 acknowledges
//!   a publish once it is written to the stream's file, and fsyncs on a timer (every 2 min);
//!   the cloud broker answers only after an fsync'd commit.
//!
//! Both are started by this program on free loopback ports and killed when their phases end
//! (also on Ctrl-C); they run one after the other, never at the same time. Their data
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
//! its warm-up, so a run says where the two cores went.

use foundation::process::Guard;
use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Produce throughput and latency of the cloud broker against NATS JetStream (issue 4).
#[derive(Debug, Parser)]
#[command(name = "cloud-bench")]
struct Cli {
    /// The cloud broker binary (build it with `cargo build --release -p cloud-broker`).
    #[arg(long, default_value = "target/release/cloud-broker")]
    broker_bin: PathBuf,
    /// The NATS server binary (Debian package `nats-server`).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Which systems to run.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    system: Which,
    /// Seconds of the peak-produce phase (the first second is warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the latency phase at half the peak rate (the first second is warm-up).
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
    let root = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dirs = Dirs::default();
    let mut systems = serde_json::Map::new();
    if cli.system != Which::Nats {
        let r = bench_kafka(cli, &root, &dirs).await.context("cloud-broker")?;
        systems.insert("cloud-broker".into(), r);
    }
    if cli.system != Which::Kafka {
        let r = bench_jetstream(cli, &root, &dirs).await.context("jetstream")?;
        systems.insert("jetstream".into(), r);
    }
    let systems = Value::Object(systems);
    let rate = |s: &str, k: &str| systems[s][k]["records_per_s"].as_f64();
    let ratio = |k: &str| Some(rate("cloud-broker", k)? / rate("jetstream", k)?);
    let p99 = systems["cloud-broker"]["latency"]["p99_ms"].as_f64();
    let report = json!({
        "machine": machine(),
        "settings": {
            "record_bytes": cli.record_bytes, "partitions": cli.partitions,
            "peak_seconds": cli.seconds, "latency_seconds": cli.latency_seconds,
            "linger_ms": cli.linger_ms, "kafka_inflight": cli.kafka_inflight,
            "kafka_driver": format!("{:?}", cli.kafka_driver).to_lowercase(),
            "nats_inflight": cli.nats_inflight,
        },
        "systems": systems,
        "ratio": { "produce_peak": ratio("produce_peak"), "consume": ratio("consume") },
        "targets": {
            "produce_peak_at_least_2x_jetstream": ratio("produce_peak").map(|r| r >= 2.0),
            "p99_at_half_peak_at_most_10ms": p99.map(|p| p <= 10.0),
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
    let peak_json = json!({
        "records_per_s": peak.rate.round(),
        "mb_per_s": round2(peak.rate * mb),
        "sent": peak.sent, "acked": peak.acked,
        "cpu_percent_of_a_core": peak.cpu,
    });
    let lat_json = json!({
        "target_rate": half.round(),
        "achieved_rate": lat.rate.round(),
        "records": l.len(),
        "p50_ms": pct(0.50).map(round2),
        "p99_ms": pct(0.99).map(round2),
        "p999_ms": pct(0.999).map(round2),
        "max_ms": l.last().map(|&v| round2(v as f64 / 1000.0)),
        "cpu_percent_of_a_core": lat.cpu,
    });
    Ok((peak_json, lat_json, peak.acked + lat.acked))
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
    )?;
    let addr = format!("127.0.0.1:{port}");
    let topic = "bench";
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &addr).create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                cli.partitions as i32,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    if let Some(Err((t, e))) = res.first() {
        bail!("creating topic {t}: {e}");
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "none")
        .set("linger.ms", cli.linger_ms.to_string())
        .set("queue.buffering.max.messages", cli.kafka_inflight.to_string())
        .set("message.timeout.ms", "60000");
    let pids = [
        ("cloud-broker", broker.pid()),
        ("cloud-bench", std::process::id()),
    ];
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
    let (addr2, parts, topic2) = (addr.clone(), cli.partitions as i32, topic.to_string());
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
    drop(broker);
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
    )?;
    let client = async_nats::ConnectOptions::new()
        .connect(format!("127.0.0.1:{port}"))
        .await?;
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
        num_replicas: 1,
        ..Default::default()
    };
    // JetStream may take a moment after the port opens.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e).context("creating the stream"),
        }
    };
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
    let pids = [("nats-server", server.pid()), ("cloud-bench", std::process::id())];
    let (peak, latency, written) = produce_phases(cli, &driver, &pids).await?;

    let total = stream.get_info().await?.state.messages;
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
    drop(server);
    if total != written {
        bail!("published {written} messages, the stream holds {total}");
    }
    Ok(json!({
        "produce_peak": peak,
        "latency": latency,
        "consume": consume_json(consume),
    }))
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

/// A server process (killed on drop), once it listens on `port`.
fn spawn_server(name: &str, cmd: &mut Command, port: u16) -> anyhow::Result<Guard> {
    let mut p = Guard::spawn(name, cmd.stdin(Stdio::null()))?;
    p.wait_ready(Duration::from_secs(20), &format!("listening on {port}"), || {
        hil_tests::listening(port)
    })?;
    Ok(p)
}

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
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "", "cloud-broker", "jetstream", "ratio"
    );
    let row = |label: &str, path: &[&str], ratio: bool| {
        let get = |sys: &str| path.iter().fold(&s[sys], |v, k| &v[*k]).clone();
        let (a, b) = (get("cloud-broker"), get("jetstream"));
        let rt = match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if ratio && b > 0.0 => format!("{:.2}", a / b),
            _ => String::new(),
        };
        println!("{label:<34} {:>14} {:>14} {rt:>8}", f(&a), f(&b));
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
    for (sys, phase) in [
        ("cloud-broker", "produce_peak"),
        ("cloud-broker", "latency"),
        ("jetstream", "produce_peak"),
        ("jetstream", "latency"),
    ] {
        if let Some(cpu) = s[sys][phase]["cpu_percent_of_a_core"].as_object() {
            for (proc_name, threads) in cpu {
                let list: Vec<String> = threads
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(t, v)| format!("{t} {:.0}%", v.as_f64().unwrap_or(0.0)))
                    .collect();
                let at = if phase == "latency" { "half peak" } else { "peak" };
                println!("cpu at {at} ({sys} run), {proc_name}: {}", list.join(", "));
            }
        }
    }
    println!(
        "targets: produce ≥ 2× JetStream: {}; p99 ≤ 10 ms at half peak: {}",
        r["targets"]["produce_peak_at_least_2x_jetstream"], r["targets"]["p99_at_half_peak_at_most_10ms"]
    );
}
