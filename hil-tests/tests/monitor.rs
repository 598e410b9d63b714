//! Monitoring devices from the cloud, end to end: `device-sim` devices (the firmware library)
//! → edge agent and its bridge → the cloud broker, whose monitor reads the cloud topics as a
//! Kafka consumer. One device loses readings for real: its buffer is tiny and its gateway is
//! killed while it samples. The monitor must list exactly the sequence ranges that never
//! reached the cloud (checked against kcat's view of the topic), their count must equal the
//! device's own overflow count, devices and the gateway must turn offline within the timeout
//! once they stop, and a restarted broker's monitor must rebuild the same from the log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hil_tests::agent::EdgeAgent;
use hil_tests::cloud::CloudBroker;
use hil_tests::sim::{self, SimConfig};
use hil_tests::{free_port, wait};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_demo");
const GATEWAY: &str = "gw-mon";
const LOSSY: &str = "lossy-0";
const LOSSY_READINGS: u64 = 400;
const HEALTHY_READINGS: u64 = 150;
/// `[monitor] device_timeout_s` and `gateway_timeout_s` of the broker under test.
const TIMEOUT_S: u64 = 4;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fleet(
    agent: &EdgeAgent,
    prefix: &str,
    devices: usize,
    readings: u64,
    buffer: usize,
    sampled: Option<Arc<AtomicU64>>,
) -> std::thread::JoinHandle<sim::Report> {
    let cfg = SimConfig {
        broker: agent.mqtt_addr(),
        devices,
        rate: 50.0,
        batch: 4,
        readings: Some(readings),
        buffer,
        id_prefix: prefix.into(),
        resend_timeout_ms: 1_000,
        keep_alive_s: 5,
        drain_timeout: Duration::from_secs(60),
        sampled,
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

fn api(http: &str, path: &str) -> Option<Value> {
    foundation::http::json(http, "GET", path).ok()
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("cloud-broker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cloud-broker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The gaps `/api/devices/<id>` lists: `(boot, from, to)`.
fn gaps(d: &Value) -> Vec<(u64, u64, u64)> {
    d["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["boot"].as_u64().unwrap(),
                g["from_seq"].as_u64().unwrap(),
                g["to_seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The device's readings in the cloud's telemetry topic, as kcat reads them: `(boot, seq)`.
fn kcat_readings(bootstrap: &str, device: &str) -> BTreeSet<(u64, u64)> {
    let out = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH") // Debian\'s librdkafka, not rdkafka-sys\'s
        .args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            "telemetry",
            "-e",
            "-q",
            "-f",
            "%k\t%h\n",
        ])
        .output()
        .expect("kcat is installed by scripts/setup");
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| *k == device)
        .map(|(_, h)| {
            let v = h
                .split(',')
                .find_map(|kv| kv.strip_prefix("reading="))
                .expect("a reading header");
            let (boot, seq) = bridge::headers::parse_reading(v.as_bytes()).expect("boot/seq");
            (u64::from(boot), seq)
        })
        .collect()
}

/// The holes below the highest sequence number of each boot, from 0.
fn holes(seen: &BTreeSet<(u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64)> = None; // (boot, next expected)
    for &(boot, seq) in seen {
        let next = match cur {
            Some((b, n)) if b == boot => n,
            _ => 0,
        };
        if seq > next {
            out.push((boot, next, seq - 1));
        }
        cur = Some((boot, seq + 1));
    }
    out
}

/// A scratch dir, a cloud broker with `[monitor]` timeouts of [`TIMEOUT_S`], and an edge agent
/// forwarding to it as `gateway` with `edge_toml` (`{http}` in it stands for the broker's HTTP
/// address). Bound in this order, they are dropped in the reverse: the processes first.
/// A cloud broker (`cloud_toml` added to its configuration: top-level keys; `{dir}` is the
/// scratch directory, where `files` are written first) and an edge agent forwarding to it
/// (`edge_toml`: `{http}` is the cloud's HTTP address).
fn setup(
    tag: &str,
    gateway: &str,
    (cloud_toml, files): (&str, &[(&str, &str)]),
    edge_toml: &str,
) -> (Scratch, CloudBroker, EdgeAgent, String) {
    let dir = Scratch(std::env::temp_dir().join(format!("{tag}-{}-{}", std::process::id(), free_port())));
    std::fs::create_dir_all(&dir.0).unwrap();
    for (name, text) in files {
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let cloud_cfg = dir.0.join("cloud.toml");
    std::fs::write(
        &cloud_cfg,
        format!(
            "{}\n[monitor]\ndevice_timeout_s = {TIMEOUT_S}\ngateway_timeout_s = {TIMEOUT_S}\n",
            cloud_toml.replace("{dir}", dir.0.to_str().unwrap())
        ),
    )
    .unwrap();
    let cloud = CloudBroker::start_with_args(
        Path::new(BIN),
        &["cloud-broker"],
        &dir.0.join("cloud"),
        &["--config", cloud_cfg.to_str().unwrap()],
    )
    .unwrap();
    let http = format!("127.0.0.1:{}", cloud.http_port);
    let edge_cfg = dir.0.join("edge.toml");
    std::fs::write(&edge_cfg, edge_toml.replace("{http}", &http)).unwrap();
    let agent = EdgeAgent::launch(
        Path::new(BIN),
        &["edge-agent"],
        &dir.0.join("edge"),
        free_port(),
        free_port(),
        &[
            "--cloud",
            &cloud.addr(),
            "--gateway-id",
            gateway,
            "--config",
            edge_cfg.to_str().unwrap(),
        ],
    )
    .unwrap();
    (dir, cloud, agent, http)
}

#[test]
fn the_monitor_lists_exactly_what_a_device_lost_and_sees_devices_and_gateways_go_offline() {
    let (_dir, mut cloud, mut agent, http) = setup(
        "monitor-e2e",
        GATEWAY,
        ("", &[]),
        "[bridge]\nheartbeat_interval_ms = 500\n",
    );
    let bootstrap = cloud.addr();

    let healthy = fleet(&agent, "ok-", 3, HEALTHY_READINGS, 100_000, None);
    let sampled = Arc::new(AtomicU64::new(0));
    let lossy = fleet(&agent, "lossy-", 1, LOSSY_READINGS, 16, Some(sampled.clone()));

    // Readings of the lossy device reach the monitor live, and it is online.
    wait::until(
        Duration::from_secs(60),
        "the monitor to see the lossy device's readings",
        || {
            let d = api(&http, &format!("/api/devices/{LOSSY}"))?;
            (d["readings"].as_u64()? >= 40).then_some(())
        },
    )
    .unwrap();
    let d = api(&http, &format!("/api/devices/{LOSSY}")).unwrap();
    assert_eq!(d["online"], true, "{d}");
    assert_eq!(d["gateway"], GATEWAY, "{d}");

    // The gateway goes away while the device samples: its buffer of 16 overflows.
    agent.kill9();
    wait::until(
        Duration::from_secs(60),
        "the lossy device to finish sampling",
        || (sampled.load(Ordering::Relaxed) >= LOSSY_READINGS).then_some(()),
    )
    .unwrap();
    agent.restart().unwrap();
    let healthy = healthy.join().unwrap();
    let lossy = lossy.join().unwrap();
    let dropped = lossy.devices[0].counters.dropped_overflow;
    assert!(dropped > 0, "the device lost nothing: the test proves nothing");
    assert_eq!(lossy.unacked(), 0, "the device drained");

    // The monitor ends up with every reading the cloud has, and the rest as gaps.
    let d = wait::until(
        Duration::from_secs(60),
        "the monitor to read the whole drain",
        || {
            let d = api(&http, &format!("/api/devices/{LOSSY}"))?;
            (d["readings"].as_u64()? + dropped == LOSSY_READINGS
                && d["dropped_overflow"].as_u64()? == dropped)
                .then_some(d)
        },
    )
    .unwrap();
    let listed = gaps(&d);
    let in_cloud = kcat_readings(&bootstrap, LOSSY);
    assert_eq!(in_cloud.len() as u64, LOSSY_READINGS - dropped);
    assert_eq!(
        listed,
        holes(&in_cloud),
        "the gaps are exactly the readings kcat does not find"
    );
    let missing: u64 = listed.iter().map(|(_, f, t)| t - f + 1).sum();
    assert_eq!(
        missing, dropped,
        "the gaps add up to the device's own overflow count"
    );
    assert_eq!(d["missing"].as_u64(), Some(dropped));
    assert!(listed[0].1 >= 40, "the loss is in the middle: {listed:?}");
    for r in &healthy.devices {
        let d = api(&http, &format!("/api/devices/{}", r.id)).unwrap();
        assert_eq!(d["missing"], 0, "{d}");
        assert_eq!(d["readings"].as_u64(), Some(HEALTHY_READINGS), "{d}");
    }

    // The CLI and /metrics say the same.
    let table = cli(&["devices", "--http", &http, "--lossy"]);
    assert!(table.contains(LOSSY) && !table.contains("ok-0"), "{table}");
    let one = cli(&["devices", LOSSY, "--http", &http]);
    let (b, f, t) = listed[0];
    assert!(one.contains(&format!("{b}: {f}..={t}")), "{one}");
    let gws = cli(&["gateways", "--http", &http]);
    assert!(gws.contains(GATEWAY), "{gws}");
    let page = foundation::http::get(&http, "/metrics").unwrap().1;
    let m = foundation::prom::Metrics::parse(&page).unwrap();
    assert_eq!(m.value("monitor_missing_readings", &[]), Some(dropped as f64));
    assert_eq!(
        m.value("monitor_device_missing_readings", &[("device", LOSSY)]),
        Some(dropped as f64)
    );
    // The broker's own figures: what it acknowledged, per API, and the monitor's group lag.
    let in_telemetry = 3 * HEALTHY_READINGS + in_cloud.len() as u64;
    assert!(m.value("kafka_produced_records_total", &[]).unwrap() >= in_telemetry as f64);
    assert!(m.value("kafka_requests_total", &[("api", "Fetch")]).unwrap() > 0.0);
    let cluster = api(&http, "/api/cluster").unwrap();
    let hw: u64 = cluster["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["topic"] == "telemetry")
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(hw, in_telemetry, "{cluster}");
    let disk = &cluster["nodes"][0]["disk"];
    assert!(
        disk["usable_bytes"].as_i64().unwrap() > 0 && disk["bytes"].as_i64().unwrap() > 0,
        "{cluster}"
    );
    wait::until(
        Duration::from_secs(30),
        "the monitor's committed lag on telemetry to reach 0",
        || {
            let page = foundation::http::get(&http, "/metrics").ok()?.1;
            let m = foundation::prom::Metrics::parse(&page).ok()?;
            (m.value(
                "kafka_consumer_group_lag",
                &[("group", "iot-monitor-1"), ("topic", "telemetry")],
            )? == 0.0)
                .then_some(())
        },
    )
    .unwrap();
    let lines = cli(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "telemetry",
        "--from-beginning",
        "--count",
        "5",
    ]);
    let recs: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 5);
    for r in &recs {
        let (boot, seq) =
            bridge::headers::parse_reading(r["headers"]["reading"].as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(
            (r["value"]["boot_id"].as_u64(), r["value"]["seq"].as_u64()),
            (Some(u64::from(boot)), Some(seq))
        );
    }

    // The gateway: online, nothing left at the edge; every device went through it.
    let gw = wait::until(
        Duration::from_secs(30),
        "the gateway's backlog to reach 0",
        || {
            let g = api(&http, "/api/gateways")?;
            let g = g.as_array()?.iter().find(|g| g["id"] == GATEWAY)?.clone();
            (g["online"] == true && g["backlog_records"] == 0).then_some(g)
        },
    )
    .unwrap();
    assert_eq!(gw["devices"], 4, "{gw}");

    // Stopped devices turn offline within the timeout; so does the stopped gateway.
    let all_offline = |http: &str| {
        let l = api(http, "/api/devices")?;
        (l["total"] == 4 && l["online"] == 0).then_some(())
    };
    wait::until(
        Duration::from_secs(TIMEOUT_S + 10),
        "the stopped devices to turn offline",
        || all_offline(&http),
    )
    .unwrap();
    agent.terminate(Duration::from_secs(20)).unwrap();
    wait::until(
        Duration::from_secs(TIMEOUT_S + 10),
        "the stopped gateway to turn offline",
        || {
            let g = api(&http, "/api/gateways")?;
            (g.as_array()?.iter().find(|g| g["id"] == GATEWAY)?["online"] == false).then_some(())
        },
    )
    .unwrap();

    // A restarted broker's monitor reads the log again and finds the same.
    cloud.restart().unwrap();
    let again = wait::until(
        Duration::from_secs(60),
        "the restarted monitor to rebuild",
        || {
            let d = api(&http, &format!("/api/devices/{LOSSY}"))?;
            (d["readings"].as_u64()? + dropped == LOSSY_READINGS).then_some(d)
        },
    )
    .unwrap();
    assert_eq!(gaps(&again), listed);
    assert_eq!(
        again["online"], false,
        "old records do not make a device look online"
    );
}

/// The dashboard in a real browser (headless Chromium through ChromeDriver): the device rows
/// and the gateway appear, a device's page draws a chart of its values, and a device that
/// stops turns offline on the open page within the configured timeout (plus one refresh).
/// Screenshots are saved under the target directory.
#[test]
fn the_dashboard_shows_the_fleet_in_a_real_browser_and_a_stopped_device_turns_offline() {
    let (_dir, _cloud, agent, http) = setup(
        "dashboard-e2e",
        "gw-dash",
        ("", &[]),
        "[bridge]\nheartbeat_interval_ms = 500\n",
    );
    // Two devices that keep sampling for the whole test (not joined: the process ends them),
    // and one that stops after 4 s.
    let _running = fleet(&agent, "pump-", 2, 3_000, 100_000, None);
    let stopping = fleet(&agent, "valve-", 1, 200, 100_000, None);

    let browser = hil_tests::browser::Browser::start().unwrap();
    browser.goto(&format!("http://{http}/")).unwrap();
    let rows = r#"return Array.from(document.querySelectorAll('#devices tr[data-device]')).map(r => [r.dataset.device, r.dataset.online]);"#;
    wait::until(
        Duration::from_secs(60),
        "the dashboard to list the three devices online",
        || {
            let v = browser.eval(rows).ok()?;
            let rows = v.as_array()?;
            (rows.len() == 3 && rows.iter().all(|r| r[1] == "true")).then_some(())
        },
    )
    .unwrap();
    wait::until(Duration::from_secs(30), "the gateways panel to show the gateway online", || {
        let v = browser
            .eval(r#"const r = document.querySelector('#gateways tr[data-gateway="gw-dash"]'); return r && r.dataset.online;"#)
            .ok()?;
        (v == "true").then_some(())
    })
    .unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"));
    browser
        .screenshot(&artifacts.join("dashboard-fleet.png"))
        .unwrap();

    // A device's page draws its chart.
    browser
        .eval("location.hash = '#/device/pump-0'; return true;")
        .unwrap();
    let points = wait::until(Duration::from_secs(30), "the device page to draw a chart", || {
        let v = browser
            .eval(r#"const s = document.querySelector('#charts svg.chart-svg'); return s && document.querySelector('#d-title').textContent === 'pump-0' ? Number(s.dataset.points) : 0;"#)
            .ok()?;
        (v.as_u64()? >= 2).then_some(v)
    })
    .unwrap();
    assert!(
        points.as_u64().unwrap() <= 32,
        "the chart holds the recent points only: {points}"
    );
    let polyline = browser
        .eval("return document.querySelector('#charts polyline.line').getAttribute('points').split(' ').length;")
        .unwrap();
    assert_eq!(polyline, points, "one vertex per point");
    browser
        .screenshot(&artifacts.join("dashboard-device.png"))
        .unwrap();

    // Back on the fleet page, left open: the stopped device turns offline by itself.
    browser.eval("location.hash = '#/'; return true;").unwrap();
    stopping.join().unwrap();
    let stopped = std::time::Instant::now();
    wait::until(
        Duration::from_secs(TIMEOUT_S + 4),
        "the open page to show the stopped device offline within the timeout",
        || {
            let v = browser.eval(rows).ok()?;
            let rows = v.as_array()?;
            let valve = rows.iter().find(|r| r[0] == "valve-0")?;
            let pumps_online = rows.iter().filter(|r| r[0] != "valve-0").all(|r| r[1] == "true");
            (valve[1] == "false" && pumps_online).then_some(())
        },
    )
    .unwrap();
    eprintln!(
        "valve-0 shown offline {:?} after it stopped (timeout {TIMEOUT_S} s); screenshots in {}",
        stopped.elapsed(),
        artifacts.display()
    );
    browser
        .screenshot(&artifacts.join("dashboard-offline.png"))
        .unwrap();

    // The cluster page: the node with its disk, the partitions.
    browser.eval("location.hash = '#/cluster'; return true;").unwrap();
    wait::until(Duration::from_secs(30), "the cluster page to show the node's disk and the partitions", || {
        let v = browser
            .eval(r#"const n = document.querySelectorAll('#nodes tr[data-node] td.num'); const p = document.querySelectorAll('#partitions tbody tr'); return n.length >= 3 && !document.querySelector('#nodes td.lossy') && p.length > 0;"#)
            .ok()?;
        (v == true).then_some(())
    })
    .unwrap();
    browser
        .screenshot(&artifacts.join("dashboard-cluster.png"))
        .unwrap();
}

/// The bridge's `registry` value format: readings go to the cloud in Confluent's wire format
/// with the reading's JSON Schema registered at the broker's schema registry; the monitor
/// reads them, and so does confluent-kafka's JSONDeserializer, fetching the schema by the id
/// in each record (`tests/python/registry_readings.py`).
#[test]
fn readings_in_the_registry_format_are_read_by_the_monitor_and_by_confluent_kafka() {
    // The cloud's HTTP listener wants its token for writes (registering a schema among them):
    // the bridge presents it as the password in the registry's URL.
    let token = "registry-test-token-0123456789";
    let (_dir, cloud, agent, http) = setup(
        "registry-e2e",
        "gw-reg",
        (
            "http_auth = \"writes\"\nhttp_token_file = \"{dir}/http-token\"\n",
            &[("http-token", &format!("{token}\n"))],
        ),
        &format!("[bridge]\nvalue_format = \"registry\"\nschema_registry_url = \"http://gw-reg:{token}@{{http}}\"\n"),
    );
    let report = fleet(&agent, "reg-", 2, 50, 100_000, None).join().unwrap();
    assert_eq!(report.acked(), 100);
    wait::until(
        Duration::from_secs(60),
        "the monitor to read the 100 readings",
        || {
            let l = api(&http, "/api/devices")?;
            (l["total"] == 2 && l["readings"] == 100 && l["missing"] == 0).then_some(())
        },
    )
    .unwrap();
    let subjects = api(&http, "/subjects").unwrap();
    assert!(
        subjects
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "telemetry-value"),
        "{subjects}"
    );
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/registry_readings.py");
    let out = Command::new(python)
        .arg(script)
        .args([
            "--bootstrap",
            &cloud.addr(),
            "--registry",
            &format!("http://{http}"),
            "--count",
            "100",
        ])
        .output()
        .expect("the venv made by scripts/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("registry_readings: ok 100"),
        "{text}"
    );
    let m = api(&http, "/api/monitor").unwrap();
    assert_eq!(m["undecodable"], 0, "{m}");
    // Without the token, no write: neither a registration nor a deletion.
    let (code, _) = foundation::http::request(
        &http,
        "DELETE",
        "/subjects/telemetry-value",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (code, _) = foundation::http::request_with(
        &http,
        "POST",
        "/subjects/other-value/versions",
        Some(("application/json", br#"{"schema":"{}","schemaType":"JSON"}"#)),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(code, 401);
    let subjects = api(&http, "/subjects").unwrap();
    assert_eq!(subjects, serde_json::json!(["telemetry-value"]));
    let metrics = foundation::http::get(&http, "/metrics").unwrap().1;
    assert!(metrics.contains("http_auth_refused_total 2"), "{metrics}");
    drop(cloud);
}
