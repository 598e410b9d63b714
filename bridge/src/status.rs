//! What the bridge reports: a snapshot for `/metrics`, the admin API and the heartbeat.

use std::fmt::Write as _;

use serde::Serialize;

/// One forwarded edge partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// Edge topic.
    pub topic: String,
    /// Edge partition.
    pub partition: u32,
    /// Cloud topic it goes to.
    pub cloud_topic: String,
    /// Every offset below this is in the cloud.
    pub checkpoint: u64,
    /// Next offset the edge log will assign.
    pub next_offset: u64,
    /// Records not yet acknowledged by the cloud.
    pub backlog_records: u64,
    /// Estimated bytes of those records.
    pub backlog_bytes: u64,
    /// Age of the oldest unforwarded record, ms (0 when none).
    pub oldest_age_ms: u64,
    /// Records dropped before forwarding (quota, retention).
    pub dropped: u64,
    /// Records the cloud refused for good.
    pub rejected: u64,
    /// Records sent (including re-sends after a restart of the session).
    pub sent: u64,
    /// Records acknowledged by the cloud.
    pub acked: u64,
    /// Live data is going ahead of a backlog.
    pub live_first: bool,
    /// Why reading this partition from the edge log fails, while it does (damaged data: see
    /// `edge-agent log verify`); the partition is retried every few seconds, the others go on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

/// A replay job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayStatus {
    /// Job id.
    pub id: u64,
    /// Edge topic.
    pub topic: String,
    /// Records in the range.
    pub total: u64,
    /// Records sent.
    pub sent: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records the cloud refused for good.
    pub failed: u64,
    /// Records sent again after a new session (those in flight) or a restart of the agent
    /// (those possibly sent since the job's last save): at most this many are in the cloud
    /// twice, both copies marked with this job.
    pub resent: u64,
    /// Every record of the range acknowledged (or refused for good, or gone from the log).
    pub done: bool,
    /// Seconds since the job started.
    pub elapsed_s: f64,
}

/// The bridge's state at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// Gateway id.
    pub gateway_id: String,
    /// Cloud bootstrap servers.
    pub bootstrap: String,
    /// A session is up (reconciled, producing) and the cloud acknowledged recently or
    /// nothing is waiting.
    pub connected: bool,
    /// Milliseconds since the Unix epoch of the last acknowledgement (0 = never).
    pub last_ack_ms: i64,
    /// Sessions started (the first, plus restarts after fatal producer errors or reconnects).
    pub sessions: u64,
    /// Failed delivery reports and failed session starts.
    pub errors: u64,
    /// Bytes sent (keys, values, headers).
    pub sent_bytes: u64,
    /// Heartbeats acknowledged.
    pub heartbeats: u64,
    /// Produce requests librdkafka sent again (over all sessions; from its statistics).
    pub producer_retries: u64,
    /// Broker connections of the producer that went down (over all sessions).
    pub producer_disconnects: u64,
    /// Records in the producer's queue, sent or waiting to be (last statistics).
    pub producer_queued: u64,
    /// Per edge partition.
    pub sources: Vec<SourceStatus>,
    /// Replay jobs, newest last.
    pub replays: Vec<ReplayStatus>,
    /// Per cloud `topic/partition`: where a reconciliation after a crash would start reading.
    pub scan_from: std::collections::BTreeMap<String, i64>,
}

impl Status {
    /// Prometheus text for the agent's `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let g = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut out,
            "bridge_connected",
            "gauge",
            "1 while the cloud accepts records",
            f64::from(u8::from(self.connected)),
        );
        g(
            &mut out,
            "bridge_sessions_total",
            "counter",
            "Producer sessions started (reconcile, then send)",
            self.sessions as f64,
        );
        g(
            &mut out,
            "bridge_errors_total",
            "counter",
            "Failed deliveries and failed session starts",
            self.errors as f64,
        );
        g(
            &mut out,
            "bridge_sent_bytes_total",
            "counter",
            "Bytes handed to the producer",
            self.sent_bytes as f64,
        );
        g(
            &mut out,
            "bridge_heartbeats_total",
            "counter",
            "Gateway heartbeats acknowledged",
            self.heartbeats as f64,
        );
        g(
            &mut out,
            "bridge_producer_retries_total",
            "counter",
            "Produce requests librdkafka retried (outages, timeouts)",
            self.producer_retries as f64,
        );
        g(
            &mut out,
            "bridge_producer_disconnects_total",
            "counter",
            "Broker connections of the producer that went down",
            self.producer_disconnects as f64,
        );
        g(
            &mut out,
            "bridge_producer_queued_records",
            "gauge",
            "Records in the producer's queue (in flight or waiting)",
            self.producer_queued as f64,
        );
        g(
            &mut out,
            "bridge_last_ack_timestamp_seconds",
            "gauge",
            "When the cloud last acknowledged a record",
            self.last_ack_ms as f64 / 1000.0,
        );
        type Field = fn(&SourceStatus) -> f64;
        let per: [(&str, &str, &str, Field); 10] = [
            (
                "bridge_checkpoint",
                "gauge",
                "Every edge offset below this is in the cloud",
                |s| s.checkpoint as f64,
            ),
            (
                "bridge_backlog_records",
                "gauge",
                "Records not yet acknowledged by the cloud (lag)",
                |s| s.backlog_records as f64,
            ),
            (
                "bridge_backlog_bytes",
                "gauge",
                "Estimated bytes not yet acknowledged",
                |s| s.backlog_bytes as f64,
            ),
            (
                "bridge_oldest_unforwarded_age_seconds",
                "gauge",
                "Age of the oldest unforwarded record",
                |s| s.oldest_age_ms as f64 / 1000.0,
            ),
            (
                "bridge_dropped_records_total",
                "counter",
                "Records dropped for the disk quota or retention before forwarding",
                |s| s.dropped as f64,
            ),
            (
                "bridge_rejected_records_total",
                "counter",
                "Records the cloud refused for good",
                |s| s.rejected as f64,
            ),
            ("bridge_sent_records_total", "counter", "Records sent", |s| {
                s.sent as f64
            }),
            (
                "bridge_acked_records_total",
                "counter",
                "Records acknowledged by the cloud",
                |s| s.acked as f64,
            ),
            (
                "bridge_live_first",
                "gauge",
                "1 while live data goes ahead of a backlog",
                |s| f64::from(u8::from(s.live_first)),
            ),
            (
                "bridge_read_failing",
                "gauge",
                "1 while reading the partition from the edge log fails (it is held back; the others go on)",
                |s| f64::from(u8::from(s.read_error.is_some())),
            ),
        ];
        for (name, kind, help, f) in per {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &self.sources {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                    s.topic,
                    s.partition,
                    f(s)
                );
            }
        }
        out
    }
}
