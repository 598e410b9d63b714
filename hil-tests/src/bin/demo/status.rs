//! What the edge agent says ([`Snapshot`], from its admin API), and what the demo prints: the
//! banner, a status line every few seconds, the summary at the end.

use std::path::Path;
use std::time::Duration;

use hil_tests::sim::Report;

use crate::{Args, Reason, GATEWAY_ID};

fn get_json(port: u16, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(foundation::http::json(&format!("127.0.0.1:{port}"), "GET", path)?)
}

/// What the edge agent says, at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Devices whose last status is online.
    pub(crate) devices_online: u64,
    /// Readings the gateway stored — and so acknowledged — since it started.
    pub(crate) device_readings: u64,
    /// Telemetry records in the edge log (all runs on this data dir).
    pub(crate) edge_telemetry: u64,
    /// Telemetry records the cloud acknowledged (sum of the bridge's checkpoints).
    pub(crate) cloud_telemetry: u64,
    /// Telemetry records not yet acknowledged by the cloud.
    pub(crate) telemetry_backlog: u64,
    /// Records of every forwarded topic not yet acknowledged by the cloud.
    pub(crate) backlog: u64,
    /// The bridge has a working session with the cloud.
    pub(crate) connected: bool,
    /// When the cloud last acknowledged a record, ms since the Unix epoch (0 = never).
    pub(crate) last_ack_ms: i64,
}

pub(crate) fn snapshot(admin_port: u16) -> anyhow::Result<Snapshot> {
    let u = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let mut s = Snapshot::default();
    let devices = get_json(admin_port, "/api/devices")?;
    if let Some(map) = devices.get("devices").and_then(|d| d.as_object()) {
        for d in map.values() {
            s.device_readings += u(d, "readings");
            if d.get("online").and_then(|o| o.as_bool()) == Some(true) {
                s.devices_online += 1;
            }
        }
    }
    let log = get_json(admin_port, "/api/log")?;
    let topics = log.get("topics").and_then(|t| t.as_array());
    for t in topics.into_iter().flatten() {
        if t.get("name").and_then(|n| n.as_str()) == Some("telemetry") {
            let parts = t.get("partitions").and_then(|p| p.as_array());
            s.edge_telemetry = parts.into_iter().flatten().map(|p| u(p, "next_offset")).sum();
        }
    }
    let bridge = get_json(admin_port, "/api/bridge")?;
    s.connected = bridge.get("connected").and_then(|c| c.as_bool()) == Some(true);
    s.last_ack_ms = bridge.get("last_ack_ms").and_then(|x| x.as_i64()).unwrap_or(0);
    let sources = bridge.get("sources").and_then(|x| x.as_array());
    for src in sources.into_iter().flatten() {
        let backlog = u(src, "backlog_records");
        s.backlog += backlog;
        if src.get("topic").and_then(|t| t.as_str()) == Some("telemetry") {
            s.telemetry_backlog += backlog;
            s.cloud_telemetry += u(src, "checkpoint");
        }
    }
    Ok(s)
}

pub(crate) fn status_line(elapsed: Duration, admin_port: u16, uplink_down: bool) -> String {
    let t = elapsed.as_secs();
    let down = if uplink_down { " | UPLINK DOWN" } else { "" };
    let s = match snapshot(admin_port) {
        Ok(s) => s,
        Err(e) => return format!("[{t:>4}s] the edge agent does not answer: {e:#}{down}"),
    };
    // The bridge calls itself connected until 10 s pass without an ack; say sooner when
    // records wait and no ack comes.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let silent_s = (now_ms - s.last_ack_ms) / 1000;
    let bridge = if !s.connected {
        "bridge not connected".to_string()
    } else if s.backlog > 0 && s.last_ack_ms > 0 && silent_s >= 2 {
        format!("no cloud ack for {silent_s} s")
    } else {
        "bridge connected".to_string()
    };
    format!(
        "[{t:>4}s] devices {} online, {} readings acked | edge log {} | cloud {}, backlog {} ({bridge}){down}",
        s.devices_online, s.device_readings, s.edge_telemetry, s.cloud_telemetry, s.telemetry_backlog,
    )
}

pub(crate) fn print_banner(
    a: &Args,
    data_dir: &Path,
    qemu: bool,
    logs: &[&Path],
    http_ports: &[u16],
    kcat_properties: &Path,
    (admin_token, cloud_token): (&Path, &Path),
) {
    let k = a.kafka_port;
    let cloud = if a.nodes == 1 {
        format!(
            "cloud broker  Kafka 127.0.0.1:{k} (SASL_SSL, through the uplink), health http://127.0.0.1:{}/health",
            a.cloud_http_port
        )
    } else {
        let nodes: Vec<String> = http_ports
            .iter()
            .enumerate()
            .map(|(i, h)| {
                format!(
                    "\n                node {}: Kafka 127.0.0.1:{} (SASL_SSL), http://127.0.0.1:{h}",
                    i + 1,
                    k + i as u16
                )
            })
            .collect();
        let status: Vec<String> = http_ports
            .iter()
            .map(|h| format!("--node 127.0.0.1:{h}"))
            .collect();
        format!(
            "cloud         a {}-node replicated cluster (through the uplink):{}\n                \
             status: demo cloud-broker cluster status {}",
            a.nodes,
            nodes.concat(),
            status.join(" ")
        )
    };
    let admin = format!("http://127.0.0.1:{}", a.admin_port);
    let fleet = if a.devices > 0 {
        format!("{} simulated devices x {} readings/s", a.devices, a.rate)
    } else {
        "no simulated devices".to_string()
    };
    let q = if qemu {
        " + the firmware image under QEMU (qemu-1)"
    } else {
        ""
    };
    let logs: Vec<String> = logs.iter().map(|p| p.display().to_string()).collect();
    // Every node serves the dashboard; the first is named.
    let dash = http_ports.first().copied().unwrap_or(a.cloud_http_port);
    println!(
        "\nThe appliance is running. Data: {data} (a second start resumes from it)\n\
         \n  {cloud}\
         \n  edge agent    gateway {GATEWAY_ID}, MQTT 127.0.0.1:{mqtt} (passwords) and MQTT over TLS 127.0.0.1:{mqtts} (client certificates), admin {admin}\
         \n                devices: {data}/edge/credentials.toml, certificates: {data}/certs\
         \n  devices       {fleet}{q}\
         \n  logs          {logs}\n\
         \nWhere to look:\
         \n  http://127.0.0.1:{dash}/   the fleet dashboard: devices, gaps, gateways, cluster\
         \n  demo cloud-broker devices --http 127.0.0.1:{dash}   the same from the command line\
         \n  kcat -F {props} -C -b 127.0.0.1:{k} -t telemetry -f '%p %o %k %h\\n'   readings in the cloud\
         \n  kcat -F {props} -C -b 127.0.0.1:{k} -t gateways -f '%s\\n'             gateway heartbeats\
         \n  curl {admin}/api/bridge     bridge: connected, backlog, acked, checkpoints\
         \n  curl {admin}/metrics        Prometheus metrics\
         \n  curl {admin}/api/devices    the devices as the gateway sees them\
         \n  curl -u admin:$(cat {admin_token}) -X POST {admin}/api/bridge/restart   writes need the admin token\
         \n                (the cloud's HTTP writes: {cloud_token})",
        data = data_dir.display(),
        mqtt = a.mqtt_port,
        mqtts = a.mqtts_port,
        props = kcat_properties.display(),
        admin_token = admin_token.display(),
        cloud_token = cloud_token.display(),
        logs = logs.join(", "),
    );
    if let Some(off) = a.offline_after {
        let until = a
            .online_after
            .map_or("until the end".to_string(), |on| format!("until {on} s"));
        println!(
            "\nThe uplink goes down at {off} s, {until}. The gateway reaches the cloud at \
             127.0.0.1:{k}, the address kcat uses, so kcat pauses too: meanwhile watch the \
             backlog grow on /api/bridge, then kcat catch up."
        );
    }
    println!("\nCtrl-C stops everything.\n");
}

pub(crate) fn print_summary(
    reason: Reason,
    elapsed: Duration,
    report: Option<&Report>,
    last: anyhow::Result<Snapshot>,
    cuts: u32,
) {
    let why = match reason {
        Reason::Duration => "--duration".to_string(),
        Reason::Signal(sig) => sig.to_string(),
    };
    println!("\nSummary (stopped by {why} after {} s)", elapsed.as_secs());
    match report {
        Some(r) => println!(
            "  readings acked to devices    {}  (simulated fleet: generated {}, dropped {}, unacked {}, re-sent {}, reconnects {})",
            r.acked(),
            r.generated(),
            r.dropped(),
            r.unacked(),
            r.resent(),
            r.reconnects()
        ),
        None => {
            if let Ok(s) = &last {
                println!(
                    "  readings acked to devices    {}  (stored by the gateway since it started)",
                    s.device_readings
                );
            }
        }
    }
    match last {
        Ok(s) => {
            println!(
                "  readings in the edge log     {}  (telemetry, every run on this data dir)",
                s.edge_telemetry
            );
            println!(
                "  readings acked by the cloud  {}  (the bridge's telemetry checkpoints)",
                s.cloud_telemetry
            );
            println!(
                "  not yet in the cloud         {}  (kept at the edge; the next start forwards them)",
                s.telemetry_backlog
            );
        }
        Err(e) => println!("  the edge agent did not answer at the end: {e:#}"),
    }
    println!("  uplink cuts                  {cuts}");
}
