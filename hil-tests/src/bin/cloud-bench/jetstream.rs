//! NATS JetStream through async-nats, the peer: one server (`jetstream`) or three clustered
//! servers with a stream of three replicas (`jetstream-r3`), through the same async driver.

use foundation::process::Guard;
use std::future::IntoFuture;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::driver::{produce_phases, Ack, AsyncDriver, Sink};
use crate::kafka::consume_json;
use crate::procs::{payload, spawn_server, Dirs, BENCH};
use crate::Cli;

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

pub(crate) async fn bench_jetstream(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
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
pub(crate) async fn bench_jetstream_r3(cli: &Cli, root: &Path, dirs: &Dirs) -> anyhow::Result<Value> {
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
