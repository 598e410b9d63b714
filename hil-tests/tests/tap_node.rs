//! The WiFi boards' network path, run on the host: the firmware library's `net::Gateway` and
//! `driver::run` over embassy-net (smoltcp) on a Linux TAP device — the code the ESP32-C3 image
//! runs over WiFi — against a real edge agent, in a network namespace the test makes (its own
//! loopback, the TAP device, nothing shared with the machine). The agent is killed with SIGKILL
//! and started again mid-run; every reading is in its log exactly once, in order.
//!
//! Needs root (a network namespace and `/dev/net/tun`) and `ip`/`unshare`, which
//! `scripts/setup` installs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use firmware::buffer::OverflowPolicy;
use firmware::mqtt::{Config, Uplink};
use firmware::net::Gateway;
use firmware::wire::Reading;
use hil_tests::agent::EdgeAgent;
use hil_tests::{free_port, wait};

const BIN: &str = env!("CARGO_BIN_EXE_demo");
/// Set in the copy of this test that runs inside the network namespace.
const INNER: &str = "TAP_NODE_INNER";
const TAP: &str = "tapnode";
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const DEVICE: &str = "tap-1";
const READINGS: u64 = 600;

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status();
    assert!(
        st.as_ref().is_ok_and(|s| s.success()),
        "`{}` failed: {st:?}",
        args.join(" ")
    );
}

#[test]
fn embassy_net_over_tap_delivers_every_reading_once_across_an_agent_kill_9() {
    if std::env::var_os(INNER).is_some() {
        return inside_the_namespace();
    }
    // This test again, alone, in a new network namespace.
    let exe = std::env::current_exe().unwrap();
    let st = Command::new("unshare")
        .arg("--net")
        .arg(&exe)
        .args([
            "--exact",
            "embassy_net_over_tap_delivers_every_reading_once_across_an_agent_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .status()
        .expect("unshare (util-linux) runs");
    assert!(
        st.success(),
        "the test in its network namespace failed (its output is above): {st}"
    );
}

fn inside_the_namespace() {
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
    sh(&["ip", "addr", "add", &format!("{AGENT_IP}/24"), "dev", TAP]);
    sh(&["ip", "link", "set", TAP, "up"]);

    let dir = std::env::temp_dir().join(format!("tap-node-{}-{}", std::process::id(), free_port()));
    let mqtt = SocketAddr::from((AGENT_IP, free_port()));
    let mut agent = EdgeAgent::launch_on(Path::new(BIN), &["edge-agent"], &dir, mqtt, free_port(), &[])
        .expect("the agent starts on the TAP address");

    let pushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let node = {
        let (pushed, stop) = (pushed.clone(), stop.clone());
        std::thread::spawn(move || futures::executor::block_on(node(mqtt, &pushed, &stop)))
    };
    let _stop = StopOnDrop(stop.clone());

    // Halfway, the gateway dies and comes back on the same data.
    wait::until(Duration::from_secs(60), "half the readings to be pushed", || {
        (pushed.load(Ordering::SeqCst) >= READINGS / 2).then_some(())
    })
    .unwrap();
    agent.kill9();
    std::thread::sleep(Duration::from_millis(500)); // down for a while, not only a reconnect
    agent.restart().expect("the agent starts again");

    let left = wait::until(Duration::from_secs(120), "every reading acknowledged", || {
        node.is_finished().then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    left.unwrap();
    let report = node.join().expect("the node thread");
    assert_eq!(
        report.unacked, 0,
        "the node holds nothing unacknowledged: {report:?}"
    );
    assert!(
        report.reconnects >= 1,
        "the node reconnected after the kill: {report:?}"
    );

    let seqs = stored_seqs(&agent);
    assert_eq!(
        seqs,
        (0..READINGS).collect::<Vec<_>>(),
        "every reading in the agent's log exactly once, in order"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct NodeReport {
    unacked: usize,
    reconnects: u64,
}

/// The node: embassy-net with a static address on the TAP device, the library's gateway
/// connector and driver; `READINGS` readings at 100 a second, then until all are acknowledged.
async fn node(gateway: SocketAddr, pushed: &AtomicU64, stop: &AtomicBool) -> NodeReport {
    let mut device = TunTapDevice::new(TAP).expect("the TAP device opens");
    device.set_hardware_address([0x02, 0x00, 0x00, 0x77, 0x00, 0x02]);
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(NODE_IP, 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    let resources: &'static mut StackResources<3> = Box::leak(Box::new(StackResources::new()));
    let (stack, mut runner) = embassy_net::new(device, config, resources, 0x5eed);
    let state: &'static TcpClientState<2, 1536, 1536> = Box::leak(Box::new(TcpClientState::new()));
    let mut client = TcpClient::new(stack, state);
    client.set_timeout(Some(embassy_time::Duration::from_secs(5)));
    let client: &'static TcpClient<'static, 2, 1536, 1536> = Box::leak(Box::new(client));
    let host: &'static str = Box::leak(gateway.ip().to_string().into_boxed_str());
    let mut connector = Gateway::new(stack, client, host, gateway.port(), |l| {
        eprintln!("tap node: {l}")
    });

    let mut cfg = Config::new(DEVICE, 0x7a9).expect("a device id");
    cfg.keep_alive_s = 5;
    cfg.batch_max = 8;
    cfg.resend_timeout_ms = 1_000;
    cfg.response_timeout_ms = 3_000;
    cfg.reconnect_min_ms = 200;
    cfg.reconnect_max_ms = 1_000;
    let now = || embassy_time::Instant::now().as_millis();
    let mut uplink: Uplink<_, 1024> = Uplink::new(
        cfg,
        [Reading::default(); READINGS as usize],
        OverflowPolicy::RefuseNewest,
        0,
        now(),
    );
    let mut next = now();
    let mut n = 0u64;
    let mut delay = embassy_time::Delay;
    let run = firmware::driver::run(&mut uplink, &mut connector, &Clock, &mut delay, |u, t| {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        if n < READINGS && t >= next {
            let r = Reading {
                channel: 0,
                timestamp_ms: t,
                value: 20.0 + n as f32 / 100.0,
            };
            if u.push(r, t).is_ok() {
                n += 1;
                pushed.store(n, Ordering::SeqCst);
            }
            next = t + 10;
        }
        if n == READINGS && u.buffer().is_empty() {
            return None;
        }
        Some(if n < READINGS { next } else { t + 50 })
    });
    embassy_futures::select::select(runner.run(), run).await;
    NodeReport {
        unacked: uplink.buffer().len(),
        reconnects: uplink.counters().reconnects,
    }
}

struct Clock;

impl firmware::driver::Clock for Clock {
    fn now_ms(&self) -> u64 {
        embassy_time::Instant::now().as_millis()
    }
}

/// The sequence numbers of the device's readings in the agent's log, in log order.
fn stored_seqs(agent: &EdgeAgent) -> Vec<u64> {
    let (code, body) = agent.get("/api/log").unwrap();
    assert_eq!(code, 200, "{body}");
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    let parts = log["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "telemetry")
        .expect("a telemetry topic")["partitions"]
        .as_array()
        .unwrap()
        .len();
    let mut seqs = Vec::new();
    for p in 0..parts {
        let (code, body) = agent
            .get(&format!(
                "/api/log/records?topic=telemetry&partition={p}&from=0&limit=10000"
            ))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let recs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        seqs.extend(
            recs.iter()
                .filter(|r| r["value"]["device"] == DEVICE)
                .map(|r| r["value"]["seq"].as_u64().unwrap()),
        );
    }
    seqs
}
