//! The bridge end to end: devices (the firmware library in `device-sim`) → edge agent (its
//! bridge) → a TCP proxy standing in for the uplink → the cloud broker. Faults: the uplink cut
//! for 60 s, the cloud broker stopped for 60 s, the agent killed with SIGKILL during a backlog
//! drain, a disk quota overflowing while offline, a replay interrupted by a new session and by
//! a kill -9; and a cloud topic made beforehand with another partition count than the edge's.
//! Every check is made by kcat, a Kafka client
//! nobody here wrote, reading the cloud topic: every `(gateway, edge partition, edge offset)`
//! exactly once, nothing missing but what the agent reports dropped, per-device order kept.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hil_tests::agent::EdgeAgent;
use hil_tests::cloud::CloudBroker;
use hil_tests::proxy::Proxy;
use hil_tests::sim::{self, SimConfig};
use hil_tests::{free_port, wait};

const BIN: &str = env!("CARGO_BIN_EXE_demo");
const GATEWAY: &str = "gw-test";

/// A test's scratch directory under the temp dir, removed when the test is done with it
/// (declared before the processes using it, so dropped after them).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("bridge-e2e-{tag}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Cloud broker behind a cuttable proxy; the broker advertises the proxy, so every
/// connection of the bridge goes through it.
struct Cloud {
    proxy: Proxy,
    broker: CloudBroker,
}

impl Cloud {
    fn start(dir: &Path) -> Cloud {
        let port = free_port();
        let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
        let broker = CloudBroker::start_on(
            Path::new(BIN),
            &["cloud-broker"],
            &dir.join("cloud"),
            port,
            Some(format!("127.0.0.1:{}", proxy.port())),
        )
        .unwrap();
        Cloud { proxy, broker }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port())
    }

    fn link(&self, up: bool) {
        self.proxy.set_down(!up);
        if !up {
            self.proxy.cut();
        }
    }
}

fn agent(dir: &Path, cloud: &Cloud, config: Option<&str>) -> EdgeAgent {
    let bootstrap = cloud.bootstrap();
    let cfg_path = dir.join("edge.toml");
    let mut extra = vec!["--cloud", bootstrap.as_str(), "--gateway-id", GATEWAY];
    let cfg_str;
    if let Some(c) = config {
        std::fs::write(&cfg_path, c).unwrap();
        cfg_str = cfg_path.to_string_lossy().into_owned();
        extra.extend(["--config", cfg_str.as_str()]);
    }
    EdgeAgent::launch(
        Path::new(BIN),
        &["edge-agent"],
        &dir.join("edge"),
        free_port(),
        free_port(),
        &extra,
    )
    .unwrap()
}

/// Runs the fleet on its own thread; `readings` per device at `rate`.
fn fleet(
    agent: &EdgeAgent,
    prefix: &str,
    devices: usize,
    rate: f64,
    readings: u64,
) -> std::thread::JoinHandle<sim::Report> {
    let cfg = SimConfig {
        broker: agent.mqtt_addr(),
        devices,
        rate,
        batch: 8,
        readings: Some(readings),
        buffer: 200_000,
        id_prefix: prefix.into(),
        resend_timeout_ms: 1_000,
        keep_alive_s: 5,
        drain_timeout: Duration::from_secs(120),
        ..SimConfig::default()
    };
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(sim::run(cfg))
            .unwrap()
    })
}

fn bridge_status(agent: &EdgeAgent) -> serde_json::Value {
    let (code, body) = agent.get("/api/bridge").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Telemetry partitions of the bridge status: (checkpoint, next_offset, dropped).
fn telemetry(st: &serde_json::Value) -> BTreeMap<u32, (u64, u64, u64)> {
    st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["topic"] == "telemetry")
        .map(|s| {
            (
                s["partition"].as_u64().unwrap() as u32,
                (
                    s["checkpoint"].as_u64().unwrap(),
                    s["next_offset"].as_u64().unwrap(),
                    s["dropped"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn backlog(agent: &EdgeAgent) -> u64 {
    telemetry(&bridge_status(agent))
        .values()
        .map(|(c, n, _)| n - c)
        .sum()
}

/// The edge log's own next offset per telemetry partition (`/api/log`, read fresh).
fn edge_next(agent: &EdgeAgent) -> BTreeMap<u32, u64> {
    let (code, body) = agent.get("/api/log").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "telemetry")
        .flat_map(|t| t["partitions"].as_array().unwrap().iter())
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["next_offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until the bridge's checkpoints reach the end of every telemetry partition.
fn wait_drained(agent: &EdgeAgent, timeout: Duration) {
    wait::until(timeout, "the bridge to forward the whole edge log", || {
        let next = edge_next(agent);
        let t = telemetry(&bridge_status(agent));
        (next.values().any(|n| *n > 0) && next.iter().all(|(p, n)| t.get(p).is_some_and(|(c, _, _)| c == n)))
            .then_some(())
    })
    .unwrap();
}

/// One telemetry record as kcat saw it in the cloud.
#[derive(Debug, Clone)]
struct CloudRec {
    partition: u32,
    key: String,
    headers: HashMap<String, String>,
}

impl CloudRec {
    fn h(&self, k: &str) -> &str {
        self.headers.get(k).map_or("", String::as_str)
    }
    /// (gateway, edge topic, edge partition, edge offset) from the `edge` header.
    fn identity(&self) -> (String, String, u32, u64) {
        let (g, t, p, o) = bridge::headers::parse_edge(self.h("edge").as_bytes()).expect("an edge header");
        (g.to_string(), t.to_string(), p, o)
    }
    fn edge(&self) -> (u32, u64) {
        let (_, _, p, o) = self.identity();
        (p, o)
    }
    /// The reading's sequence number from the `reading` header (`boot/seq`).
    fn seq(&self) -> u64 {
        bridge::headers::parse_reading(self.h("reading").as_bytes())
            .expect("a reading header")
            .1
    }
}

/// Everything in the cloud's telemetry topic, in partition and offset order, read by kcat.
fn kcat_telemetry(cloud: &Cloud) -> Vec<CloudRec> {
    let out = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH") // Debian\'s librdkafka, not rdkafka-sys\'s
        .args(["-C", "-b", &cloud.bootstrap(), "-t", "telemetry", "-e", "-q"])
        .args(["-f", "%p\t%o\t%k\t%h\n"])
        .output()
        .expect("kcat is installed by scripts/setup");
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut recs: Vec<(u32, u64, CloudRec)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let headers = f[3]
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let partition = f[0].parse().unwrap();
            (
                partition,
                f[1].parse().unwrap(),
                CloudRec {
                    partition,
                    key: f[2].to_string(),
                    headers,
                },
            )
        })
        .collect();
    recs.sort_by_key(|(p, o, _)| (*p, *o));
    recs.into_iter().map(|(_, _, r)| r).collect()
}

/// The cloud holds every edge offset of every telemetry partition exactly once (minus what
/// the bridge reports dropped, which must be exactly what is missing), each device's records
/// in edge order, in the cloud partition of the same number. Returns records checked.
fn assert_exactly_once_in_order(agent: &EdgeAgent, cloud: &Cloud) -> u64 {
    let parts = telemetry(&bridge_status(agent));
    let next_offsets = edge_next(agent);
    let recs: Vec<CloudRec> = kcat_telemetry(cloud)
        .into_iter()
        .filter(|r| r.identity().0 == GATEWAY && r.identity().1 == "telemetry" && r.h("replay").is_empty())
        .collect();
    let mut seen: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut last_per_device: HashMap<String, (u64, u64)> = HashMap::new();
    for r in &recs {
        let (ep, eo) = r.edge();
        assert_eq!(r.partition, ep, "device {} left its partition", r.key);
        seen.entry(ep).or_default().push(eo);
        let seq = r.seq();
        if let Some((po, ps)) = last_per_device.insert(r.key.clone(), (eo, seq)) {
            assert!(
                eo > po && seq > ps,
                "device {}: edge offset {eo} (seq {seq}) after {po} (seq {ps})",
                r.key
            );
        }
    }
    let mut total = 0;
    for (p, (checkpoint, _, dropped)) in parts {
        let next = next_offsets[&p];
        let mut offs = seen.remove(&p).unwrap_or_default();
        let n = offs.len();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(
            offs.len(),
            n,
            "partition {p}: {} duplicates in the cloud",
            n - offs.len()
        );
        assert_eq!(checkpoint, next, "partition {p} not drained");
        assert!(
            offs.last().is_none_or(|&o| o < next),
            "partition {p}: offset {:?} in the cloud, the edge log ends at {next}",
            offs.last()
        );
        let missing = next - offs.len() as u64;
        assert_eq!(
            missing, dropped,
            "partition {p}: {missing} missing in the cloud, {dropped} reported dropped"
        );
        total += n as u64;
    }
    assert!(
        seen.is_empty(),
        "records of unknown partitions: {:?}",
        seen.keys()
    );
    total
}

fn assert_fleet_lossless(r: &sim::Report) {
    assert!(r.lossless(), "device-side loss: {}", r.to_json());
}

/// 20 devices × 20 readings/s for 80 s; from ~10 s to ~70 s the cloud is unreachable
/// (`down`, then `up`). Afterwards every reading acked to a device is in the cloud once, in
/// order per device.
fn sixty_second_outage(tag: &str, config: Option<&str>, down: fn(&mut Cloud), up: fn(&mut Cloud)) {
    let dir = tempdir(tag);
    let mut cloud = Cloud::start(&dir);
    let agent = agent(&dir, &cloud, config);
    let fleet = fleet(&agent, &format!("{tag}-"), 20, 20.0, 1_600);
    wait::until(
        Duration::from_secs(30),
        "records forwarded before the outage",
        || {
            (telemetry(&bridge_status(&agent))
                .values()
                .map(|(c, _, _)| c)
                .sum::<u64>()
                > 1_000)
                .then_some(())
        },
    )
    .unwrap();
    down(&mut cloud);
    let down_at = std::time::Instant::now();
    wait::until(
        Duration::from_secs(30),
        "a backlog while the cloud is unreachable",
        || (backlog(&agent) > 2_000).then_some(()),
    )
    .unwrap();
    wait::until(Duration::from_secs(30), "the dead uplink to show", || {
        (agent.metric("bridge_connected").unwrap() == 0.0).then_some(())
    })
    .unwrap();
    // The outage itself is what is under test: it lasts 60 s whatever happens meanwhile.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down_at.elapsed()));
    up(&mut cloud);
    let report = fleet.join().unwrap();
    assert_fleet_lossless(&report);
    wait_drained(&agent, Duration::from_secs(120));
    let n = assert_exactly_once_in_order(&agent, &cloud);
    assert_eq!(
        n,
        report.acked(),
        "every reading acked to a device is in the cloud once"
    );
    assert!(agent.metric("bridge_sessions_total").unwrap() >= 1.0);
    // librdkafka's view of the outage reaches the metrics (statistics every 5 s).
    wait::until(
        Duration::from_secs(15),
        "the outage in the producer metrics",
        || (agent.metric("bridge_producer_disconnects_total").unwrap() > 0.0).then_some(()),
    )
    .unwrap();
}

#[test]
fn uplink_cut_for_60_s_then_everything_arrives_once_in_order() {
    // A low live-first threshold: the backlog after the cut drains with live-first scheduling.
    sixty_second_outage(
        "cut",
        Some("[bridge]\nlive_first_threshold = 500\n"),
        |c| c.link(false),
        |c| c.link(true),
    );
}

#[test]
fn cloud_broker_stopped_for_60_s_then_everything_arrives_once_in_order() {
    sixty_second_outage(
        "stop",
        None,
        |c| c.broker.stop(Duration::from_secs(20)),
        |c| c.broker.restart().unwrap(),
    );
}

#[test]
fn kill_9_during_a_backlog_drain_then_exactly_once_and_replay_is_marked() {
    let dir = tempdir("kill");
    let cloud = Cloud::start(&dir);
    // A slow drain (bandwidth cap) so the kills land mid-drain; live-first scheduling on.
    let mut agent = agent(
        &dir,
        &cloud,
        Some("[bridge]\nmax_bytes_per_sec = 400000\nlive_first_threshold = 1000\n"),
    );
    cloud.link(false);
    let report = fleet(&agent, "kill-", 10, 1_000.0, 4_000).join().unwrap();
    assert_fleet_lossless(&report);
    wait::until(
        Duration::from_secs(10),
        "the whole fleet's output as backlog",
        || (backlog(&agent) == 40_000).then_some(()),
    )
    .unwrap();
    cloud.link(true);
    // Other devices publish live throughout the drain and the kills.
    let live = fleet(&agent, "live-", 4, 50.0, 1_000);
    for round in 0..3 {
        let before = telemetry(&bridge_status(&agent))
            .values()
            .map(|(c, _, _)| c)
            .sum::<u64>();
        wait::until(Duration::from_secs(60), "the drain to make progress", || {
            let now = telemetry(&bridge_status(&agent))
                .values()
                .map(|(c, _, _)| c)
                .sum::<u64>();
            (now >= before + 3_000).then_some(())
        })
        .unwrap();
        assert!(
            backlog(&agent) > 0,
            "round {round}: the drain must still be running when killed"
        );
        agent.restart().unwrap();
    }
    let live = live.join().unwrap();
    assert_fleet_lossless(&live);
    wait_drained(&agent, Duration::from_secs(180));
    let n = assert_exactly_once_in_order(&agent, &cloud);
    assert_eq!(n, 40_000 + live.acked());

    // Replay a range of one partition: it arrives again, marked, and nothing else repeats.
    let (p, next) = telemetry(&bridge_status(&agent))
        .into_iter()
        .map(|(p, (_, n, _))| (p, n))
        .max_by_key(|(_, n)| *n)
        .unwrap();
    let from = next / 2;
    let out = Command::new(BIN)
        .args([
            "edge-agent",
            "replay",
            "--admin-listen",
            &format!("127.0.0.1:{}", agent.admin_port),
        ])
        .args([
            "--topic",
            "telemetry",
            "--partition",
            &p.to_string(),
            "--from-offset",
            &from.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(
        stderr.contains("acknowledged"),
        "plain progress lines when not on a terminal: {stderr}"
    );
    let replayed: Vec<u64> = kcat_telemetry(&cloud)
        .iter()
        .filter(|r| !r.h("replay").is_empty())
        .map(|r| {
            assert_eq!(r.edge().0, p);
            r.edge().1
        })
        .collect();
    assert_eq!(
        replayed,
        (from..next).collect::<Vec<_>>(),
        "the replayed range, in order, once"
    );
    assert_eq!(
        assert_exactly_once_in_order(&agent, &cloud),
        40_000 + live.acked()
    );
}

#[test]
fn a_quota_overflow_while_offline_is_counted_exactly() {
    let dir = tempdir("quota");
    let cloud = Cloud::start(&dir);
    // A small window keeps the backlog on disk (not in the producer's memory) while offline.
    let agent = agent(
        &dir,
        &cloud,
        Some("[bridge]\nbacklog_quota_bytes = 300000\nmax_in_flight = 1000\n"),
    );
    cloud.link(false);
    let report = fleet(&agent, "quota-", 10, 1_000.0, 3_000).join().unwrap();
    assert_fleet_lossless(&report);
    wait::until(
        Duration::from_secs(30),
        "the quota to remove records from the edge log",
        || {
            let (_, body) = agent.get("/api/log").unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let stored: u64 = v["topics"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "telemetry")
                .flat_map(|t| t["partitions"].as_array().unwrap().iter())
                .map(|p| p["records"].as_u64().unwrap())
                .sum();
            (stored < 20_000).then_some(())
        },
    )
    .unwrap();
    cloud.link(true);
    wait_drained(&agent, Duration::from_secs(120));
    let dropped: u64 = telemetry(&bridge_status(&agent))
        .values()
        .map(|(_, _, d)| d)
        .sum();
    assert!(
        dropped > 10_000,
        "30,000 readings cannot fit a 300 kB quota; dropped {dropped}"
    );
    let n = assert_exactly_once_in_order(&agent, &cloud);
    assert_eq!(
        n + dropped,
        30_000,
        "what is in the cloud plus what was reported dropped is everything"
    );
    // The gateway heartbeat in the cloud reports the same drops.
    wait::until(Duration::from_secs(30), "a heartbeat reporting the drops", || {
        let out = Command::new("kcat")
            .env_remove("LD_LIBRARY_PATH") // Debian\'s librdkafka, not rdkafka-sys\'s
            .args([
                "-C",
                "-b",
                &cloud.bootstrap(),
                "-t",
                "gateways",
                "-e",
                "-q",
                "-f",
                "%s\n",
            ])
            .output()
            .ok()?;
        let last = String::from_utf8_lossy(&out.stdout).lines().last()?.to_string();
        let hb: serde_json::Value = serde_json::from_str(&last).ok()?;
        assert_eq!(hb["gateway_id"], GATEWAY);
        let reported: u64 = hb["partitions"]
            .as_array()?
            .iter()
            .filter(|p| p["topic"] == "telemetry")
            .map(|p| p["dropped"].as_u64().unwrap_or(0))
            .sum();
        (reported == dropped).then_some(())
    })
    .unwrap();
}

/// A cloud topic made beforehand with another partition count than the edge's: the bridge
/// cannot send edge partition p to cloud partition p, so librdkafka's murmur2 partitioner
/// places each record by its key. Every device lands in the partition Kafka's own partitioner
/// picks for it among the cloud's count, exactly once and in order.
#[test]
fn a_cloud_topic_with_another_partition_count_gets_each_device_by_key() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    const CLOUD_PARTITIONS: u32 = 4;
    let dir = tempdir("repartition");
    let cloud = Cloud::start(&dir);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cloud.bootstrap())
        .create()
        .unwrap();
    let made = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(
            "telemetry",
            CLOUD_PARTITIONS as i32,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    let agent = agent(&dir, &cloud, None);
    let edge_partitions = edge_next(&agent).len() as u32;
    assert_ne!(edge_partitions, CLOUD_PARTITIONS);
    let report = fleet(&agent, "rp-", 12, 200.0, 400).join().unwrap();
    assert_fleet_lossless(&report);
    wait_drained(&agent, Duration::from_secs(60));

    let recs: Vec<CloudRec> = kcat_telemetry(&cloud)
        .into_iter()
        .filter(|r| r.identity().0 == GATEWAY)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for r in &recs {
        let want = edge_agent::partitioner::partition_for(r.key.as_bytes(), CLOUD_PARTITIONS);
        assert_eq!(r.partition, want, "device {} in the wrong cloud partition", r.key);
        assert!(seen.insert(r.edge()), "{:?} twice in the cloud", r.edge());
        let (o, seq) = (r.edge().1, r.seq());
        if let Some((po, ps)) = last.insert(r.key.clone(), (o, seq)) {
            assert!(o > po && seq > ps, "device {}: {o}/{seq} after {po}/{ps}", r.key);
        }
    }
    let stored: u64 = edge_next(&agent).values().sum();
    assert_eq!(seen.len() as u64, stored, "every edge record once in the cloud");
    assert_eq!(stored, 12 * 400);
}

/// What a replay job left in the cloud: per edge partition, the offsets of its copies (in
/// cloud order), checked to cover `0..next` of every partition. Returns how many repeat.
fn replay_copies(cloud: &Cloud, id: u64, next: &BTreeMap<u32, u64>) -> usize {
    let mut copies: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in kcat_telemetry(cloud) {
        if r.h("replay") == id.to_string() {
            copies.entry(r.edge().0).or_default().push(r.edge().1);
        }
    }
    let mut repeats = 0;
    for (p, n) in next {
        let mut offs = copies.remove(p).unwrap_or_default();
        let all = offs.len();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(
            offs,
            (0..*n).collect::<Vec<_>>(),
            "partition {p}: the whole range"
        );
        repeats += all - offs.len();
    }
    assert!(copies.is_empty(), "copies of unknown partitions");
    repeats
}

/// Starts a replay of the whole telemetry topic; returns its id once it is under way with
/// records in flight.
fn replay_under_way(agent: &EdgeAgent) -> u64 {
    let (code, body) = agent.post("/api/replay?topic=telemetry&from_offset=0").unwrap();
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    wait::until(
        Duration::from_secs(60),
        "the replay under way with records in flight",
        || {
            let st = replay_job(agent, id)?;
            let (sent, acked) = (st["sent"].as_u64()?, st["acked"].as_u64()?);
            (acked >= 1_000 && sent >= acked + 50).then_some(())
        },
    )
    .unwrap();
    id
}

fn replay_job(agent: &EdgeAgent, id: u64) -> Option<serde_json::Value> {
    let (code, body) = agent.get(&format!("/api/replay/{id}")).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Waits for the job to finish; checks that nothing failed, that records were sent again, and
/// that the cloud holds the whole range with repeats only among those.
fn replay_completes(agent: &EdgeAgent, cloud: &Cloud, id: u64) {
    let st = wait::until(Duration::from_secs(120), "the replay to finish", || {
        let st = replay_job(agent, id)?;
        st["done"].as_bool()?.then_some(st)
    })
    .unwrap();
    assert_eq!(st["failed"], 0, "{st}");
    let resent = st["resent"].as_u64().unwrap();
    assert!(resent > 0, "records were in flight when it was interrupted: {st}");
    let repeats = replay_copies(cloud, id, &edge_next(agent));
    assert!(
        repeats as u64 <= resent,
        "{repeats} repeated replay records, {resent} reported re-sent"
    );
}

/// 12,000 readings forwarded, then a capped replay whose records wait in librdkafka (a long
/// linger), so an interruption always finds some in flight.
fn replay_setup(tag: &str) -> (Scratch, Cloud, EdgeAgent) {
    let dir = tempdir(tag);
    let cloud = Cloud::start(&dir);
    let agent = agent(
        &dir,
        &cloud,
        Some("[bridge]\nmax_bytes_per_sec = 150000\nlinger_ms = 300\n"),
    );
    let report = fleet(&agent, "rr-", 8, 1_000.0, 1_500).join().unwrap();
    assert_fleet_lossless(&report);
    wait_drained(&agent, Duration::from_secs(120));
    (dir, cloud, agent)
}

/// A replay outlives the session it started in: an operator asks for a new bridge session
/// (`POST /api/bridge/restart`) mid-replay. The job sends what was in flight again from its
/// own checkpoint and completes with nothing failed.
#[test]
fn a_replay_outlives_a_session_restart() {
    let (_dir, cloud, agent) = replay_setup("replay-restart");
    let sessions_before = bridge_status(&agent)["sessions"].as_u64().unwrap();
    let id = replay_under_way(&agent);
    let (code, body) = agent.post("/api/bridge/restart").unwrap();
    assert_eq!(code, 202, "{body}");
    replay_completes(&agent, &cloud, id);
    assert!(bridge_status(&agent)["sessions"].as_u64().unwrap() > sessions_before);
}

/// A replay outlives the agent: kill -9 mid-replay, start again; the job, saved with the
/// checkpoints, goes on from where its own checkpoints were.
#[test]
fn a_replay_outlives_a_kill_9_of_the_agent() {
    let (_dir, cloud, mut agent) = replay_setup("replay-kill");
    let id = replay_under_way(&agent);
    agent.restart().unwrap();
    replay_completes(&agent, &cloud, id);
}
