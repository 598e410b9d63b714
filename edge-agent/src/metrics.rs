//! The agent's counters and histograms, rendered as Prometheus text by the admin API.
//!
//! One place bumps a counter and logs the event together (see `ingest`), so a log line and its
//! metric never disagree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram (Prometheus `histogram` type).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// Buckets with upper `bounds`; observed values are multiplied by `scale` for the sum's
    /// fixed-point storage (1e6 for seconds).
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((v * self.scale).max(0.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value below which a fraction `q` of observations fall (bucket upper bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            if acc >= target {
                return Some(self.bounds[i]);
            }
        }
        Some(f64::INFINITY)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / self.scale
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every counter the agent keeps.
#[derive(Debug)]
pub struct Metrics {
    /// MQTT publishes taken from the broker.
    pub publishes: AtomicU64,
    /// Readings written to the telemetry topic (each once).
    pub readings: AtomicU64,
    /// Readings received again and dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Payloads written to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// MQTT connections refused by `[mqtt] auth` (unknown device, wrong password, client id
    /// and username differ).
    pub mqtt_auth_refused: AtomicU64,
    /// MQTT connections closed by the front for a topic, subscription or will the device may
    /// not use (or a protocol it does not serve).
    pub mqtt_denied: AtomicU64,
    /// MQTT connections closed by the front for a packet not whole within its deadline.
    pub mqtt_frame_timeouts: AtomicU64,
    /// TLS handshakes with devices that failed (no, a bad or an expired certificate; not TLS).
    pub mqtt_tls_failures: AtomicU64,
    /// MQTT connections closed at once: `[mqtt] max_connections` were open.
    pub mqtt_connection_limit: AtomicU64,
    /// MQTT connections closed for naming a device id past `[mqtt] max_devices`.
    pub mqtt_device_limit: AtomicU64,
    /// The admin API's gate (`[admin] auth`), whose refusals are shown.
    pub admin_gate: std::sync::OnceLock<std::sync::Arc<foundation::token::Gate>>,
    /// MQTT connections open through the front (gauge).
    pub mqtt_connections: AtomicU64,
    /// Distinct device ids taken since the start with `auth = "none"` (gauge).
    pub mqtt_devices: AtomicU64,
    /// Invalid payloads only counted, over a topic's dead-letter budget.
    pub dead_letters_suppressed: AtomicU64,
    /// Batches that arrived ahead of a missing one (a broker-side loss, e.g. rumqttd skipping a
    /// lagging reader); the device re-sends and nothing is lost, but it is counted.
    pub lag_detected: AtomicU64,
    /// Jumps in rumqttd's delivery cursor: messages rumqttd skipped for this agent.
    pub cursor_jumps: AtomicU64,
    /// Readings devices reported dropped for overflow before sending them.
    pub device_dropped: AtomicU64,
    /// Durable commits.
    pub commits: AtomicU64,
    /// Failed commits (nothing acked for them).
    pub commit_errors: AtomicU64,
    /// Acks published.
    pub acks: AtomicU64,
    /// 1 while writes fail (acking stopped), else 0.
    pub degraded: AtomicU64,
    /// Records per commit.
    pub batch_records: Histogram,
    /// Commit duration, seconds.
    pub commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        static RECORDS: [f64; 12] = [
            1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0,
        ];
        static SECONDS: [f64; 14] = [
            0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
        ];
        Metrics {
            publishes: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            mqtt_auth_refused: AtomicU64::new(0),
            mqtt_denied: AtomicU64::new(0),
            mqtt_frame_timeouts: AtomicU64::new(0),
            mqtt_tls_failures: AtomicU64::new(0),
            mqtt_connection_limit: AtomicU64::new(0),
            mqtt_device_limit: AtomicU64::new(0),
            mqtt_connections: AtomicU64::new(0),
            admin_gate: std::sync::OnceLock::new(),
            mqtt_devices: AtomicU64::new(0),
            dead_letters_suppressed: AtomicU64::new(0),
            lag_detected: AtomicU64::new(0),
            cursor_jumps: AtomicU64::new(0),
            device_dropped: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_errors: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            batch_records: Histogram::new(&RECORDS, 1.0),
            commit_seconds: Histogram::new(&SECONDS, 1e6),
        }
    }
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    /// Renders the counters; `extra` is appended (per-partition and per-device gauges).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 17] = [
            ("edge_mqtt_publishes_total", "MQTT publishes taken from the broker", &self.publishes),
            ("edge_readings_ingested_total", "Readings written to the telemetry topic", &self.readings),
            ("edge_duplicates_dropped_total", "Readings received again and dropped", &self.duplicates),
            ("edge_dead_letters_total", "Payloads written to the dead-letter topic", &self.dead_letters),
            ("edge_mqtt_auth_refused_total", "MQTT connections refused by [mqtt] auth (unknown device, wrong password, client id and username differ)", &self.mqtt_auth_refused),
            ("edge_mqtt_denied_total", "MQTT connections closed by the front: a topic, subscription or will the device may not use, or another protocol level", &self.mqtt_denied),
            ("edge_mqtt_frame_timeouts_total", "MQTT connections closed by the front: a packet not whole within [mqtt] frame_timeout_s", &self.mqtt_frame_timeouts),
            ("edge_mqtt_connection_limit_total", "MQTT connections closed at once: [mqtt] max_connections were open", &self.mqtt_connection_limit),
            ("edge_mqtt_device_limit_total", "MQTT connections closed for naming a device id past [mqtt] max_devices (auth = none)", &self.mqtt_device_limit),
            ("edge_mqtt_tls_failures_total", "TLS handshakes with devices that failed: no certificate where one is required, one from another CA or expired, not TLS", &self.mqtt_tls_failures),
            ("edge_dead_letters_suppressed_total", "Invalid payloads over a topic's dead-letter budget, counted but not stored", &self.dead_letters_suppressed),
            ("edge_rumqttd_lag_detected_total", "Batches that arrived after a gap in a device's sequence (broker-side loss; resent by the device)", &self.lag_detected),
            ("edge_rumqttd_cursor_jumps_total", "Messages rumqttd skipped for the ingest link", &self.cursor_jumps),
            ("edge_device_dropped_readings_total", "Readings devices dropped for buffer overflow", &self.device_dropped),
            ("edge_commits_total", "Durable log commits", &self.commits),
            ("edge_commit_errors_total", "Failed log commits", &self.commit_errors),
            ("edge_acks_sent_total", "Acks published to devices", &self.acks),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP edge_admin_auth_refused_total Admin HTTP requests refused for want of the admin token ([admin] auth)\n# TYPE edge_admin_auth_refused_total counter\nedge_admin_auth_refused_total {}",
            self.admin_gate.get().map_or(0, |g| g.refused())
        );
        let _ = writeln!(
            out,
            "# HELP edge_mqtt_connections MQTT connections open through the front\n# TYPE edge_mqtt_connections gauge\nedge_mqtt_connections {}",
            get(&self.mqtt_connections)
        );
        let _ = writeln!(
            out,
            "# HELP edge_mqtt_devices_taken Distinct device ids taken since the start (auth = none; bounded by [mqtt] max_devices)\n# TYPE edge_mqtt_devices_taken gauge\nedge_mqtt_devices_taken {}",
            get(&self.mqtt_devices)
        );
        let _ = writeln!(
            out,
            "# HELP edge_degraded 1 while log writes fail and acking is stopped\n# TYPE edge_degraded gauge\nedge_degraded {}",
            get(&self.degraded)
        );
        self.batch_records.render(
            &mut out,
            "edge_commit_batch_records",
            "Records per durable commit",
        );
        self.commit_seconds
            .render(&mut out, "edge_commit_duration_seconds", "Durable commit latency");
        out.push_str(extra);
        out
    }
}
