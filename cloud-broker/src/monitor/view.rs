//! What the JSON API, the dashboard and the CLI show: rows built from a [`Monitor`] at a
//! given time (online and rates depend on it), serialisable both ways.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::gateways::Gateway;
use super::registry::Device;
use super::Monitor;

/// One device in the device table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Its id.
    pub id: String,
    /// The gateway its latest reading came through.
    pub gateway: Option<String>,
    /// Heard from within the timeout, and its last will has not said it went away.
    pub online: bool,
    /// First record of it (ms since the Unix epoch, the records' time).
    pub first_seen_ms: i64,
    /// Latest record of it.
    pub last_seen_ms: i64,
    /// Its current boot.
    pub boot: u32,
    /// Firmware version from its status.
    pub firmware: Option<String>,
    /// Readings received (each once).
    pub readings: u64,
    /// Readings that arrived more than once.
    pub duplicates: u64,
    /// Readings never received, over the boots kept (the sum of the gaps).
    pub missing: u64,
    /// Readings the device says it dropped itself (buffer full), from its latest status.
    pub dropped_overflow: u64,
    /// Readings per second.
    pub rate: f64,
    /// The latest value of each channel (keyed by the channel number, as JSON keys are
    /// strings).
    pub last_values: BTreeMap<String, f32>,
}

/// A run of readings never received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The boot.
    pub boot: u32,
    /// First sequence number missing.
    pub from_seq: u64,
    /// Last sequence number missing (inclusive).
    pub to_seq: u64,
}

/// One boot of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootView {
    /// Boot id.
    pub boot: u32,
    /// Readings received.
    pub received: u64,
    /// Highest sequence number received.
    pub highest: Option<u64>,
    /// Readings missing below it.
    pub missing: u64,
    /// Holes given up to bound memory (not in `gaps`).
    pub forgotten_gaps: u64,
}

/// A device's page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The table row.
    #[serde(flatten)]
    pub row: DeviceRow,
    /// Every run of readings never received, per boot, oldest boot first.
    pub gaps: Vec<Gap>,
    /// Per boot.
    pub boots: Vec<BootView>,
    /// Its latest status as it sent it.
    pub status: Option<serde_json::Value>,
    /// Each channel's recent values: `[timestamp ms, value]` pairs, oldest first.
    pub channels: BTreeMap<String, Vec<(i64, f32)>>,
    /// Readings of channels past the charted bound.
    pub uncharted: u64,
    /// Boots forgotten to bound memory.
    pub forgotten_boots: u64,
}

/// `/api/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Devices known.
    pub total: usize,
    /// Of which online.
    pub online: usize,
    /// Devices matching the query.
    pub matched: usize,
    /// Readings received by the devices matching the query.
    pub readings: u64,
    /// Readings missing, over every device.
    pub missing: u64,
    /// Records of devices past the bound (not tracked).
    pub untracked: u64,
    /// The rows asked for.
    pub devices: Vec<DeviceRow>,
}

/// One gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayRow {
    /// Its id.
    pub id: String,
    /// A heartbeat within the timeout.
    pub online: bool,
    /// Its latest heartbeat's time.
    pub last_heartbeat_ms: i64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Edge agent uptime at that heartbeat, s.
    pub uptime_s: u64,
    /// When the cloud last acknowledged one of its records.
    pub last_ack_ms: i64,
    /// Records at the edge not yet in the cloud.
    pub backlog_records: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Age of the oldest of them, ms.
    pub oldest_age_ms: u64,
    /// Records dropped for quota.
    pub dropped: u64,
    /// Records the cloud refused for good.
    pub rejected: u64,
    /// Records forwarded per second between its last two heartbeats.
    pub send_rate: f64,
    /// Devices whose latest reading came through it.
    pub devices: usize,
    /// Component versions.
    pub versions: BTreeMap<String, String>,
    /// Per edge partition.
    pub partitions: Vec<vocab::heartbeat::PartitionBacklog>,
}

/// `/api/monitor`: how far the monitor has read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedView {
    /// The feed's state.
    pub feed: String,
    /// Records read.
    pub records: u64,
    /// Records in the topics not read yet.
    pub lag: u64,
    /// Records that could not be read.
    pub undecodable: u64,
    /// Why the last one could not.
    pub last_error: Option<String>,
    /// Devices known.
    pub devices: usize,
    /// Gateways known.
    pub gateways: usize,
    /// Per partition: `topic/partition → {next, end}`.
    pub positions: BTreeMap<String, super::Position>,
}

/// What `/api/devices` is asked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeviceQuery {
    /// Only ids or gateways containing this.
    pub filter: Option<String>,
    /// `online` or `offline`.
    pub status: Option<String>,
    /// Only devices with readings missing.
    pub lossy: bool,
    /// A [`DeviceRow`] field; `-` before it for descending [default: `id`].
    pub sort: Option<String>,
    /// Rows skipped.
    pub offset: usize,
    /// Most rows [default 1000].
    pub limit: Option<usize>,
}

impl Monitor {
    fn row(&self, id: &str, d: &Device, now_ms: i64) -> DeviceRow {
        DeviceRow {
            id: id.to_string(),
            gateway: d.gateway.as_deref().map(str::to_string),
            online: d.online(now_ms, self.device_timeout_ms()),
            first_seen_ms: d.first_seen_ms,
            last_seen_ms: d.last_seen_ms,
            boot: d.current_boot,
            firmware: d.status.as_ref().map(|s| s.firmware_version.as_str().to_string()),
            readings: d.readings,
            duplicates: d.duplicates,
            missing: d.boots.values().map(|b| b.missing()).sum(),
            dropped_overflow: d.dropped_overflow(),
            rate: d.rate.per_sec(now_ms),
            last_values: d
                .channels
                .iter()
                .filter_map(|(c, h)| h.last().map(|(_, v)| (c.to_string(), v)))
                .collect(),
        }
    }

    /// `/api/devices`.
    pub fn devices(&self, q: &DeviceQuery, now_ms: i64) -> DeviceList {
        let timeout = self.device_timeout_ms();
        let filter = q.filter.as_deref().map(str::to_lowercase);
        let want_online = match q.status.as_deref() {
            Some("online") => Some(true),
            Some("offline") => Some(false),
            _ => None,
        };
        let mut total_missing = 0;
        let mut online = 0;
        let mut rows = Vec::new();
        for (id, d) in &self.registry.devices {
            let on = d.online(now_ms, timeout);
            online += usize::from(on);
            let missing: u64 = d.boots.values().map(|b| b.missing()).sum();
            total_missing += missing;
            if want_online.is_some_and(|w| w != on) || (q.lossy && missing == 0) {
                continue;
            }
            if let Some(f) = &filter {
                let gw = d.gateway.as_deref().unwrap_or("");
                if !id.to_lowercase().contains(f.as_str()) && !gw.to_lowercase().contains(f.as_str()) {
                    continue;
                }
            }
            rows.push(self.row(id, d, now_ms));
        }
        let (desc, key) = match q.sort.as_deref() {
            Some(s) => s.strip_prefix('-').map_or((false, s), |k| (true, k)),
            None => (false, "id"),
        };
        sort_rows(&mut rows, key, desc);
        let matched = rows.len();
        let readings = rows.iter().map(|r| r.readings).sum();
        let limit = q.limit.unwrap_or(1000);
        let devices = rows.into_iter().skip(q.offset).take(limit).collect();
        DeviceList {
            total: self.registry.devices.len(),
            online,
            matched,
            readings,
            missing: total_missing,
            untracked: self.registry.untracked,
            devices,
        }
    }

    /// `/api/devices/{id}`.
    pub fn device(&self, id: &str, now_ms: i64) -> Option<DeviceDetail> {
        let d = self.registry.devices.get(id)?;
        Some(DeviceDetail {
            row: self.row(id, d, now_ms),
            gaps: d
                .gaps()
                .into_iter()
                .map(|(boot, from_seq, to_seq)| Gap {
                    boot,
                    from_seq,
                    to_seq,
                })
                .collect(),
            boots: d
                .boots
                .iter()
                .map(|(b, boot)| BootView {
                    boot: *b,
                    received: boot.received(),
                    highest: boot.highest(),
                    missing: boot.missing(),
                    forgotten_gaps: boot.forgotten_gaps,
                })
                .collect(),
            status: d.status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
            channels: d
                .channels
                .iter()
                .map(|(c, h)| (c.to_string(), h.points().collect()))
                .collect(),
            uncharted: d.uncharted,
            forgotten_boots: d.forgotten_boots,
        })
    }

    fn gateway_row(&self, id: &str, g: &Gateway, devices: usize, now_ms: i64) -> GatewayRow {
        let hb = g.last.as_ref();
        GatewayRow {
            id: id.to_string(),
            online: g.online(now_ms, self.gateway_timeout_ms()),
            last_heartbeat_ms: g.last_heartbeat_ms(),
            heartbeats: g.heartbeats,
            uptime_s: hb.map_or(0, |h| h.uptime_s),
            last_ack_ms: hb.map_or(0, |h| h.last_ack_ms),
            backlog_records: g.backlog_records(),
            backlog_bytes: g.backlog_bytes(),
            oldest_age_ms: g.oldest_age_ms(),
            dropped: g.dropped(),
            rejected: g.rejected(),
            send_rate: g.send_rate,
            devices,
            versions: hb.map(|h| h.versions.clone()).unwrap_or_default(),
            partitions: hb.map(|h| h.partitions.clone()).unwrap_or_default(),
        }
    }

    fn devices_per_gateway(&self) -> BTreeMap<&str, usize> {
        let mut n = BTreeMap::new();
        for d in self.registry.devices.values() {
            if let Some(g) = d.gateway.as_deref() {
                *n.entry(g).or_insert(0) += 1;
            }
        }
        n
    }

    /// `/api/gateways`. Gateways seen only as the path of readings (no heartbeat yet) are
    /// listed too, offline.
    pub fn gateway_rows(&self, now_ms: i64) -> Vec<GatewayRow> {
        let per = self.devices_per_gateway();
        let none = Gateway::default();
        let mut ids: Vec<&str> = self.gateways.gateways.keys().map(String::as_str).collect();
        ids.extend(
            per.keys()
                .copied()
                .filter(|g| !self.gateways.gateways.contains_key(*g)),
        );
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let g = self.gateways.gateways.get(id).unwrap_or(&none);
                self.gateway_row(id, g, per.get(id).copied().unwrap_or(0), now_ms)
            })
            .collect()
    }

    /// `/api/monitor`.
    pub fn feed_view(&self) -> FeedView {
        FeedView {
            feed: self.feed.clone(),
            records: self.records,
            lag: self.lag(),
            undecodable: self.undecodable,
            last_error: self.last_error.clone(),
            devices: self.registry.devices.len(),
            gateways: self.gateways.gateways.len(),
            positions: self
                .positions
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |(p, pos)| (format!("{t}/{p}"), *pos)))
                .collect(),
        }
    }

    /// The monitor's Prometheus series: fleet totals, per gateway, and per device for the
    /// [`super::Settings::metrics_devices`] devices with the most readings missing.
    pub fn metrics(&self, now_ms: i64) -> String {
        let mut out = String::new();
        let timeout = self.device_timeout_ms();
        let (mut online, mut readings, mut dups, mut missing, mut overflow) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut worst: Vec<(u64, &str, &Device)> = Vec::new();
        for (id, d) in &self.registry.devices {
            online += u64::from(d.online(now_ms, timeout));
            readings += d.readings;
            dups += d.duplicates;
            overflow += d.dropped_overflow();
            let m: u64 = d.boots.values().map(|b| b.missing()).sum();
            missing += m;
            worst.push((m, id, d));
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut out,
            "monitor_devices",
            "Devices known to the monitor",
            "gauge",
            self.registry.devices.len() as f64,
        );
        gauge(
            &mut out,
            "monitor_devices_online",
            "Devices online",
            "gauge",
            online as f64,
        );
        gauge(
            &mut out,
            "monitor_readings_total",
            "Readings received (each once)",
            "counter",
            readings as f64,
        );
        gauge(
            &mut out,
            "monitor_duplicate_readings_total",
            "Readings received more than once",
            "counter",
            dups as f64,
        );
        gauge(
            &mut out,
            "monitor_missing_readings",
            "Readings never received (the devices' gaps)",
            "gauge",
            missing as f64,
        );
        gauge(
            &mut out,
            "monitor_device_overflow_readings",
            "Readings the devices say they dropped for a full buffer",
            "gauge",
            overflow as f64,
        );
        gauge(
            &mut out,
            "monitor_untracked_records_total",
            "Records of devices past monitor.max_devices",
            "counter",
            self.registry.untracked as f64,
        );
        gauge(
            &mut out,
            "monitor_records_total",
            "Records the monitor read",
            "counter",
            self.records as f64,
        );
        gauge(
            &mut out,
            "monitor_undecodable_records_total",
            "Records the monitor could not read",
            "counter",
            self.undecodable as f64,
        );
        gauge(
            &mut out,
            "monitor_lag_records",
            "Records in the monitored topics not read yet",
            "gauge",
            self.lag() as f64,
        );
        // Per device: a bounded number of series, the worst first.
        let cap = self.settings.metrics_devices;
        if cap > 0 && !worst.is_empty() {
            let k = cap.min(worst.len());
            worst.select_nth_unstable_by(k - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            worst.truncate(k);
            worst.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            let _ = writeln!(out, "# HELP monitor_device_missing_readings Readings never received, per device (the monitor.metrics_devices worst)\n# TYPE monitor_device_missing_readings gauge");
            for (m, id, _) in &worst {
                let _ = writeln!(
                    out,
                    "monitor_device_missing_readings{{device=\"{}\"}} {m}",
                    escape(id)
                );
            }
            let _ = writeln!(out, "# HELP monitor_device_overflow_readings_by_device Readings a device says it dropped, per device (the same devices)\n# TYPE monitor_device_overflow_readings_by_device gauge");
            for (_, id, d) in &worst {
                let _ = writeln!(
                    out,
                    "monitor_device_overflow_readings_by_device{{device=\"{}\"}} {}",
                    escape(id),
                    d.dropped_overflow()
                );
            }
        }
        let rows = self.gateway_rows(now_ms);
        if !rows.is_empty() {
            for (name, help, f) in [
                (
                    "monitor_gateway_online",
                    "1 while the gateway's heartbeats arrive",
                    (|g: &GatewayRow| f64::from(u8::from(g.online))) as fn(&GatewayRow) -> f64,
                ),
                (
                    "monitor_gateway_backlog_records",
                    "Records at the edge not yet in the cloud",
                    |g| g.backlog_records as f64,
                ),
                (
                    "monitor_gateway_backlog_bytes",
                    "Bytes at the edge not yet in the cloud",
                    |g| g.backlog_bytes as f64,
                ),
                (
                    "monitor_gateway_oldest_age_seconds",
                    "Age of the oldest record not yet in the cloud",
                    |g| g.oldest_age_ms as f64 / 1000.0,
                ),
                (
                    "monitor_gateway_dropped_records",
                    "Records the gateway dropped for quota",
                    |g| g.dropped as f64,
                ),
                ("monitor_gateway_send_rate", "Records forwarded per second", |g| {
                    g.send_rate
                }),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for g in &rows {
                    let _ = writeln!(out, "{name}{{gateway=\"{}\"}} {}", escape(&g.id), f(g));
                }
            }
        }
        out
    }
}

/// A Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn sort_rows(rows: &mut [DeviceRow], key: &str, desc: bool) {
    use std::cmp::Ordering;
    let f64cmp = |a: f64, b: f64| a.partial_cmp(&b).unwrap_or(Ordering::Equal);
    rows.sort_by(|a, b| {
        let o = match key {
            "gateway" => a.gateway.cmp(&b.gateway),
            "online" => a.online.cmp(&b.online),
            "first_seen_ms" => a.first_seen_ms.cmp(&b.first_seen_ms),
            "last_seen_ms" => a.last_seen_ms.cmp(&b.last_seen_ms),
            "boot" => a.boot.cmp(&b.boot),
            "firmware" => a.firmware.cmp(&b.firmware),
            "readings" => a.readings.cmp(&b.readings),
            "duplicates" => a.duplicates.cmp(&b.duplicates),
            "missing" => a.missing.cmp(&b.missing),
            "dropped_overflow" => a.dropped_overflow.cmp(&b.dropped_overflow),
            "rate" => f64cmp(a.rate, b.rate),
            _ => Ordering::Equal,
        }
        .then_with(|| a.id.cmp(&b.id));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
}
