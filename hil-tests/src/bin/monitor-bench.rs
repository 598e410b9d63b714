//! `monitor-bench`: what the cloud's device monitor costs per device, and how fast it reads.
//!
//! In one process, the monitor the cloud broker runs ([`cloud_broker::monitor::Monitor`]) is
//! fed `--devices` devices through its record path (the same decoding as from the topics):
//! a status each, and `--readings` readings each over `--channels` channels, one device in
//! `--lossy-every` losing every `--gap-every`th reading (its gaps are kept as ranges). The
//! resident memory it grew by, per device, and the records read per second are reported, with
//! what the views cost at that size (`/api/devices` sorted, one device's page, `/metrics`).
//!
//! Run: `cargo build --release -p hil-tests --bin monitor-bench && ./target/release/monitor-bench`

use std::time::Instant;

use clap::Parser;
use cloud_broker::monitor::{view::DeviceQuery, Monitor, Rec, Settings};
use firmware::wire::{Counters, DeviceStatus, Reading, ReadingRecord};

/// The device monitor's memory per device and read rate.
#[derive(Debug, Parser)]
#[command(name = "monitor-bench")]
struct Cli {
    /// Devices.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 100)]
    readings: u64,
    /// Channels per device.
    #[arg(long, default_value_t = 2)]
    channels: u16,
    /// One device in this many loses readings.
    #[arg(long, default_value_t = 10)]
    lossy_every: usize,
    /// A lossy device loses every this-many-th reading.
    #[arg(long, default_value_t = 7)]
    gap_every: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pid = std::process::id();
    let now = foundation::time::now_ms();
    let mut m = Monitor::new(Settings {
        max_devices: cli.devices.max(1),
        ..Settings::default()
    });
    let rss_before = foundation::procfs::rss_kib(pid).0;
    let mut buf = [0u8; 256];
    let mut offset = 0i64;
    let mut records = 0u64;
    let started = Instant::now();
    for d in 0..cli.devices {
        let id = format!("dev-{d:06}");
        let gw = format!("gw-{:03}/telemetry/0/", d % 500);
        let status = DeviceStatus {
            device_id: id.as_str().try_into().map_err(|_| anyhow::anyhow!("device id"))?,
            boot_id: 1,
            online: true,
            firmware_version: "1.4.2".try_into().map_err(|_| anyhow::anyhow!("version"))?,
            buffer_capacity: 1024,
            uptime_ms: 1,
            counters: Counters::default(),
        };
        let v = firmware::wire::encode(&status, &mut buf)?.to_vec();
        m.apply(
            &Rec {
                topic: "device-status",
                partition: 0,
                offset,
                timestamp_ms: Some(now),
                key: Some(id.as_bytes()),
                value: Some(&v),
                edge: None,
            },
            now,
        );
        offset += 1;
        records += 1;
        let lossy = cli.lossy_every > 0 && d % cli.lossy_every == 0;
        for seq in 0..cli.readings {
            if lossy && cli.gap_every > 0 && seq % cli.gap_every == cli.gap_every - 1 {
                continue;
            }
            let r = ReadingRecord {
                boot_id: 1,
                seq,
                reading: Reading {
                    channel: (seq % u64::from(cli.channels.max(1))) as u16,
                    timestamp_ms: now as u64,
                    value: seq as f32,
                },
            };
            let v = firmware::wire::encode(&r, &mut buf)?;
            let edge = format!("{gw}{offset}");
            m.apply(
                &Rec {
                    topic: "telemetry",
                    partition: 0,
                    offset,
                    timestamp_ms: Some(now - 1000 + seq as i64),
                    key: Some(id.as_bytes()),
                    value: Some(v),
                    edge: Some(edge.as_bytes()),
                },
                now,
            );
            offset += 1;
            records += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rss_after = foundation::procfs::rss_kib(pid).0;
    anyhow::ensure!(
        m.undecodable == 0,
        "records the monitor could not read: {:?}",
        m.last_error
    );
    let per_device = (rss_after.saturating_sub(rss_before) * 1024) as f64 / cli.devices.max(1) as f64;

    let t = Instant::now();
    let list = m.devices(
        &DeviceQuery {
            sort: Some("-missing".into()),
            limit: Some(100),
            ..DeviceQuery::default()
        },
        now,
    );
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let one = m.device("dev-000000", now);
    let device_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let page = m.metrics(now);
    let metrics_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = serde_json::json!({
        "devices": cli.devices, "readings_per_device": cli.readings, "channels": cli.channels,
        "records": records, "seconds": secs, "records_per_s": (records as f64 / secs).round(),
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "bytes_per_device": per_device.round(),
        "devices_listed": list.total, "missing_total": list.missing,
        "worst_device_missing": list.devices.first().map(|d| d.missing),
        "gaps_of_a_lossy_device": one.map(|d| d.gaps.len()),
        "api_devices_sorted_ms": list_ms, "api_device_ms": device_ms,
        "metrics_ms": metrics_ms, "metrics_bytes": page.len(),
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} devices x {} readings ({} channels; every {}th device loses every {}th reading): {} records in {:.1} s = {:.0} records/s",
            cli.devices, cli.readings, cli.channels, cli.lossy_every, cli.gap_every, records, secs, records as f64 / secs
        );
        println!(
            "resident memory grew {:.1} MiB: {:.0} bytes per device",
            (rss_after.saturating_sub(rss_before)) as f64 / 1024.0,
            per_device
        );
        println!(
            "/api/devices sorted by missing, first 100: {list_ms:.1} ms; one device: {device_ms:.3} ms; /metrics: {metrics_ms:.1} ms ({} bytes)",
            page.len()
        );
        println!("readings missing over the fleet: {}", list.missing);
    }
    Ok(())
}
