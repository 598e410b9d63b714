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
//! `jetstream-r3` and reports cluster / jetstream-r3 and cluster / single node; `sasl-ssl`
//! runs `cloud-broker`, then `cloud-broker-sasl-ssl` (the same node and phases with every
//! client logged in with SCRAM-SHA-256 over TLS on a SASL_SSL listener) and reports their ratio.
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
//!
//! # Layout
//! - [`driver`]: the load driver, its produce phases and their JSON.
//! - [`kafka`]: the cloud broker through rdkafka; the single node (`cloud-broker`).
//! - [`cluster`]: the cloud broker as a three-node cluster (`cluster`, `--failovers`,
//!   `--rss-partitions`).
//! - [`jetstream`]: NATS JetStream through async-nats (`jetstream`, `jetstream-r3`).
//! - [`procs`]: processes, ports, data directories, CPU and RSS from `/proc`.
//! - [`report`]: the machine, the table.

mod cluster;
mod driver;
mod jetstream;
mod kafka;
mod procs;
mod report;

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use crate::cluster::bench_cluster;
use crate::jetstream::{bench_jetstream, bench_jetstream_r3};
use crate::kafka::bench_kafka;
use crate::procs::Dirs;
use crate::report::{machine, print_table};

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
    /// three replicas), `all-r3` (cloud-broker, cluster and jetstream-r3, with their ratios),
    /// `sasl-ssl` (cloud-broker plaintext, then its clients over SASL_SSL with SCRAM-SHA-256).
    #[arg(long, value_enum, default_value_t = Which::Both)]
    system: Which,
    /// Seconds of the peak-produce phase (the first second is warm-up; 2 at least).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the latency phase at half the peak rate (the first second is warm-up; 2 at
    /// least).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Rate of the latency phase, records/s, instead of half the peak (to compare builds or
    /// systems at one rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Run the single node (`cloud-broker` in the tables) as a one-node Raft cluster
    /// (`--raft-listen`, no peers: every partition a Raft group of one) instead of the
    /// single-node writer, to measure what replication's machinery costs on its own.
    #[arg(long)]
    single_as_raft: bool,
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
    /// The single node plaintext, then with its clients on a SASL_SSL listener.
    SaslSsl,
}

/// One system under test; its key in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Single,
    SingleSaslSsl,
    JetStream,
    Cluster,
    JetStreamR3,
}

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Single => "cloud-broker",
            System::SingleSaslSsl => "cloud-broker-sasl-ssl",
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
            Which::SaslSsl => &[System::Single, System::SingleSaslSsl],
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
        dirs.settle();
        let r = match sys {
            System::Single => bench_kafka(cli, &root, &dirs).await,
            System::SingleSaslSsl => kafka::bench_kafka_sasl_ssl(cli, &root, &dirs).await,
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
        "ratio_sasl_ssl": {
            "produce_peak": ratio_of("cloud-broker-sasl-ssl", "cloud-broker", "produce_peak"),
            "consume": ratio_of("cloud-broker-sasl-ssl", "cloud-broker", "consume"),
        },
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
            "sasl_ssl_produce_peak_at_least_0_8x_plaintext":
                ratio_of("cloud-broker-sasl-ssl", "cloud-broker", "produce_peak").map(|r| r >= 0.8),
        },
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}
