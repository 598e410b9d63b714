//! The cloud: `--nodes` cloud broker processes (one, or a cluster), each behind an uplink
//! proxy on its user-facing Kafka port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use anyhow::Context;
use hil_tests::agent::http_get;
use hil_tests::proxy::Proxy;

use crate::child::Proc;
use crate::secure::Secured;
use crate::{Args, Event};

/// One cloud node: its process, the uplink proxy in front of it, its HTTP port.
pub(crate) struct CloudNode {
    pub(crate) proc: Proc,
    pub(crate) proxy: Proxy,
    /// Where the broker itself listens (behind the proxy).
    private: SocketAddr,
    pub(crate) http: u16,
}

/// Starts the cloud: `--nodes` broker processes (a cluster when more than one: node N in
/// `<data>/cloud/node-N`, Raft on private loopback ports; one node in `<data>/cloud`), each
/// with a SASL_SSL listener behind an uplink proxy on its user-facing Kafka port, advertising
/// it, and its plaintext listener on a private loopback port (its own monitor and schema
/// registry read there), and waits until every node is up and, for a cluster, every node has
/// joined.
pub(crate) fn start_cloud(
    a: &Args,
    exe: &Path,
    data_dir: &Path,
    logs: &Path,
    events: &mpsc::Receiver<Event>,
    secured: &Secured,
) -> anyhow::Result<Vec<CloudNode>> {
    let n = a.nodes;
    // Distinct free ports for every node's Raft, private Kafka and HTTP listeners (two given
    // the same port would have one answer for the other), none of the user-facing ones.
    let taken: Vec<u16> = [a.mqtt_port, a.mqtts_port, a.admin_port, a.cloud_http_port]
        .into_iter()
        .chain((0..n).map(|i| a.kafka_port + i))
        .collect();
    let mut free: Vec<u16> = Vec::new();
    while free.len() < 4 * n as usize {
        let p = foundation::net::free_port().context("finding a free loopback port")?;
        if !free.contains(&p) && !taken.contains(&p) {
            free.push(p);
        }
    }
    let raft: Vec<u16> = free[..n as usize].to_vec();
    let mut free = free[n as usize..].iter().copied();
    let mut next = || free.next().context("out of free ports");
    let mut nodes: Vec<CloudNode> = Vec::new();
    for i in 0..n {
        let private = SocketAddr::from(([127, 0, 0, 1], next()?));
        let internal = SocketAddr::from(([127, 0, 0, 1], next()?));
        let user = a.kafka_port + i;
        let proxy = Proxy::start_on(user, private)
            .with_context(|| format!("127.0.0.1:{user} is in use: choose another port with --kafka-port"))?;
        let http = if i == 0 { a.cloud_http_port } else { next()? };
        let config = data_dir.join("cloud").join(format!("node-{}.toml", i + 1));
        std::fs::write(
            &config,
            crate::secure::cloud_config(secured, private, &format!("127.0.0.1:{user}")),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["cloud-broker", "run", "--config"])
            .arg(&config)
            .arg("--kafka-listen")
            .arg(internal.to_string())
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http}"))
            .env("NO_COLOR", "1");
        let (name, log) = if n == 1 {
            cmd.arg("--data-dir").arg(data_dir.join("cloud"));
            ("cloud broker".to_string(), logs.join("cloud-broker.log"))
        } else {
            let id = i + 1;
            cmd.arg("--data-dir")
                .arg(data_dir.join("cloud").join(format!("node-{id}")))
                .args(["--node-id", &id.to_string()])
                .arg("--raft-listen")
                .arg(format!("127.0.0.1:{}", raft[i as usize]));
            for (j, port) in raft.iter().enumerate() {
                if j as u16 != i {
                    cmd.arg("--peer").arg(format!("{}=127.0.0.1:{port}", j + 1));
                }
            }
            (
                format!("cloud node {id}"),
                logs.join(format!("cloud-node-{id}.log")),
            )
        };
        let proc = Proc::spawn(name, cmd, &log)?;
        nodes.push(CloudNode {
            proc,
            proxy,
            private,
            http,
        });
    }
    for node in &mut nodes {
        let http = node.http;
        let private = node.private;
        node.proc.wait_ready("the cloud broker to be up", events, || {
            std::net::TcpStream::connect(private).is_ok()
                && http_get(http, "/health").is_ok_and(|(code, _)| code == 200)
        })?;
    }
    if n > 1 {
        let http = nodes[0].http;
        nodes[0]
            .proc
            .wait_ready("the cloud nodes to form a cluster", events, || {
                foundation::http::json(&format!("127.0.0.1:{http}"), "GET", "/api/cluster").is_ok_and(|v| {
                    v["nodes"].as_array().is_some_and(|a| a.len() == n as usize)
                        && v["controller"].as_i64().is_some_and(|c| c > 0)
                })
            })?;
    }
    Ok(nodes)
}
