//! The cloud broker through rdkafka: the producer drivers (delivery callbacks, or one future
//! per record), topic creation, the Kafka phases shared by the single node and the cluster,
//! and the single-node system (`cloud-broker`).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
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

use crate::driver::{produce_phases, Ack, AsyncDriver, Load, Phases, Sink};
use crate::procs::{cpu_percent, cpu_ticks, cpu_totals, payload, spawn_server, Dirs, BENCH};
use crate::report::round2;
use crate::{Cli, KafkaDriverKind};

/// How the Kafka clients of the system being measured log in: SCRAM-SHA-256 over TLS to a
/// SASL_SSL listener (`sasl-ssl`), or nothing (plaintext). Systems run one at a time.
static SECURE: Mutex<Option<Secure>> = Mutex::new(None);

/// A SASL_SSL login.
#[derive(Debug, Clone)]
struct Secure {
    ca: std::path::PathBuf,
    user: String,
    password: String,
}

/// A librdkafka configuration for `addr`, logging in as the system being measured asks.
pub(crate) fn client(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr);
    if let Some(s) = SECURE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        c.set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", &s.user)
            .set("sasl.password", &s.password)
            .set("ssl.ca.location", s.ca.to_string_lossy().as_ref());
    }
    c
}

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
                // Sleeps of 1 ms at least, as tokio's timer in the other drivers: the records
                // due meanwhile go out together, late by up to 1 ms (counted in their latency).
                // Sleeping to each record's microsecond, the generator took a whole core at
                // 20,000 records/s against the cluster (83% so; librdkafka's broker threads).
                if due > now {
                    std::thread::sleep((due - now).max(Duration::from_millis(1)));
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

/// The single node with its clients on a SASL_SSL listener (SCRAM-SHA-256, TLS 1.3): a
/// development CA and certificate, one principal with produce and consume rights, the same
/// phases as [`bench_kafka`].
pub(crate) async fn bench_kafka_sasl_ssl(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    use cloud_broker::security::scram::{Credential, Mechanism, DEFAULT_ITERATIONS};
    use cloud_broker::security::users::{User, UsersFile};
    let dir = dirs.fresh(root, "cloud-broker-sasl-ssl")?;
    let certs = dir.join("certs");
    let ca = foundation::tls::DevCa::open_or_create(&certs, "cloud-bench CA")?;
    let server = ca.issue(
        "broker",
        "broker",
        &["127.0.0.1".into()],
        foundation::tls::Role::Server,
        1,
    )?;
    let password = "cloud-bench-password".to_string();
    let mut users = UsersFile::default();
    // The node's own monitor and schema registry read its plaintext listener as ANONYMOUS,
    // with the rights they have on a plaintext node: both runs carry the same work.
    users.users.insert(
        "ANONYMOUS".into(),
        User {
            produce: vec!["_schemas".into()],
            consume: vec!["*".into()],
            groups: vec!["*".into()],
            ..Default::default()
        },
    );
    users.users.insert(
        "bench".into(),
        User {
            produce: vec!["*".into()],
            consume: vec!["*".into()],
            groups: vec!["*".into()],
            scram_sha_256: Some(Credential::new(
                Mechanism::ScramSha256,
                &password,
                DEFAULT_ITERATIONS,
            )?),
            ..Default::default()
        },
    );
    let users_path = dir.join("users.toml");
    users.write(&users_path)?;
    let port = foundation::net::free_port()?;
    let config = dir.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"bench\"\nlisten = \"127.0.0.1:{port}\"\nprotocol = \"sasl_ssl\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n[security]\nusers_file = \"{}\"\n",
            server.cert.display(),
            server.key.display(),
            users_path.display()
        ),
    )?;
    *SECURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Secure {
        ca: ca.cert_path(),
        user: "bench".into(),
        password,
    });
    let r = single(
        cli,
        &dir.join("data"),
        port,
        &["--config".into(), config.to_string_lossy().into_owned()],
    )
    .await;
    *SECURE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    r
}

pub(crate) async fn bench_kafka(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
    let port = foundation::net::free_port()?;
    let dir = dirs.fresh(root, "cloud-broker")?;
    single(cli, &dir, port, &[]).await
}

/// The single node over `dir`, its clients on `port` (the plaintext listener's, or one that
/// `extra` arguments configure), through the Kafka phases.
async fn single(cli: &Cli, dir: &Path, port: u16, extra: &[String]) -> anyhow::Result<Value> {
    let kafka = if extra.is_empty() {
        port
    } else {
        foundation::net::free_port()?
    };
    let broker = spawn_server(
        "cloud-broker",
        Command::new(&cli.broker_bin)
            .args(["run", "--kafka-listen", &format!("127.0.0.1:{kafka}")])
            .args(extra)
            .args([
                "--http-listen",
                &format!("127.0.0.1:{}", foundation::net::free_port()?),
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(if cli.single_as_raft {
                vec![
                    "--raft-listen".to_string(),
                    format!("127.0.0.1:{}", foundation::net::free_port()?),
                ]
            } else {
                Vec::new()
            })
            .env("CLOUD_LOG", "warn"),
        port,
    )
    .await?;
    let addr = format!("127.0.0.1:{port}");
    // A one-node cluster elects its controller as it starts.
    let retry = if cli.single_as_raft {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    };
    create_topic(&addr, TOPIC, cli.partitions, 1, retry).await?;
    let r = kafka_phases(cli, &addr, &[("cloud-broker", broker.pid())]).await;
    drop(broker);
    r
}

/// The topic every Kafka run writes.
pub(crate) const TOPIC: &str = "bench";

/// Creates `topic` with `partitions` partitions of `replicas` replicas through `addr`,
/// retrying for up to `retry_for` while it fails (a cluster's controller is elected while its
/// nodes start); one that already exists counts as created.
pub(crate) async fn create_topic(
    addr: &str,
    topic: &str,
    partitions: u32,
    replicas: i32,
    retry_for: Duration,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(addr).create()?;
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
pub(crate) async fn wait_leaders(
    addr: &str,
    topics: &[(String, u32)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let probe: BaseConsumer = client(addr).create()?;
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
pub(crate) async fn kafka_phases(
    cli: &Cli,
    addr: &str,
    servers: &[(&'static str, u32)],
) -> anyhow::Result<Value> {
    let topic = TOPIC;
    let mut config = client(addr);
    config
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
        let c: BaseConsumer = client(&addr2)
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

pub(crate) fn consume_json((n, bytes, secs): (u64, u64, f64)) -> Value {
    json!({
        "records": n,
        "records_per_s": (n as f64 / secs).round(),
        "mb_per_s": round2(bytes as f64 / secs / 1e6),
    })
}
