//! The cloud broker as a three-node cluster (`cluster`): the Kafka phases on a topic of
//! replication factor 3, then leader kills under a fixed-rate feed (`--failovers`) and RSS
//! with many partitions (`--rss-partitions`).

use foundation::process::Guard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::kafka::{create_topic, kafka_phases, wait_leaders, TOPIC};
use crate::procs::{cpu_ticks, cpu_totals, payload, rss_mib, spawn_server, Dirs};
use crate::report::round2;
use crate::Cli;

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
pub(crate) async fn bench_cluster(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
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
