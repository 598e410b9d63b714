//! Request figures for `/metrics`: per Kafka API, requests, bytes in and out and a latency
//! histogram; records and bytes produced (acknowledged) and fetched. Lock-free counters, one
//! set per API key, bumped once per request.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

/// Upper bounds of the latency buckets, seconds (`+Inf` follows).
pub const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// API keys counted: 0..KEYS (others are counted under the last slot's `other`).
const KEYS: usize = 80;

#[derive(Debug, Default)]
struct PerApi {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
}

/// The broker's request figures.
#[derive(Debug)]
pub struct Stats {
    apis: Box<[PerApi]>,
    /// Records acknowledged to producers.
    pub produced_records: AtomicU64,
    /// Their batch bytes.
    pub produced_bytes: AtomicU64,
    /// Record batch bytes served to fetches (consumers and followers outside Raft).
    pub fetched_bytes: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            apis: (0..=KEYS).map(|_| PerApi::default()).collect(),
            produced_records: AtomicU64::new(0),
            produced_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// One request of API `key` served in `took`, `bytes_in` long, answered with `bytes_out`.
    pub fn request(&self, key: i16, took: Duration, bytes_in: usize, bytes_out: usize) {
        let a = &self.apis[usize::try_from(key).map_or(KEYS, |k| k.min(KEYS))];
        a.requests.fetch_add(1, Relaxed);
        a.bytes_in.fetch_add(bytes_in as u64, Relaxed);
        a.bytes_out.fetch_add(bytes_out as u64, Relaxed);
        a.micros.fetch_add(took.as_micros() as u64, Relaxed);
        let s = took.as_secs_f64();
        let i = BUCKETS_S.iter().position(|b| s <= *b).unwrap_or(BUCKETS_S.len());
        a.buckets[i].fetch_add(1, Relaxed);
    }

    /// Requests of API `key` so far.
    pub fn requests(&self, key: i16) -> u64 {
        usize::try_from(key)
            .ok()
            .and_then(|k| self.apis.get(k))
            .map_or(0, |a| a.requests.load(Relaxed))
    }

    /// The Prometheus series.
    pub fn render(&self, out: &mut String) {
        let name = |k: usize| {
            i16::try_from(k)
                .ok()
                .filter(|_| k < KEYS)
                .and_then(|k| ApiKey::try_from(k).ok())
                .map_or_else(|| "other".to_string(), |a| format!("{a:?}"))
        };
        let used: Vec<(usize, &PerApi)> = self
            .apis
            .iter()
            .enumerate()
            .filter(|(_, a)| a.requests.load(Relaxed) > 0)
            .collect();
        let _ = writeln!(
            out,
            "# HELP kafka_requests_total Kafka requests served, per API\n# TYPE kafka_requests_total counter"
        );
        for (k, a) in &used {
            let _ = writeln!(
                out,
                "kafka_requests_total{{api=\"{}\"}} {}",
                name(*k),
                a.requests.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP kafka_request_bytes_total Request bytes received, per API\n# TYPE kafka_request_bytes_total counter");
        for (k, a) in &used {
            let _ = writeln!(
                out,
                "kafka_request_bytes_total{{api=\"{}\"}} {}",
                name(*k),
                a.bytes_in.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP kafka_response_bytes_total Response bytes sent, per API\n# TYPE kafka_response_bytes_total counter");
        for (k, a) in &used {
            let _ = writeln!(
                out,
                "kafka_response_bytes_total{{api=\"{}\"}} {}",
                name(*k),
                a.bytes_out.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP kafka_request_seconds Time from a request's arrival to its response (a produce: until durable; a fetch: including its long poll)\n# TYPE kafka_request_seconds histogram");
        for (k, a) in &used {
            let api = name(*k);
            let mut cum = 0;
            for (i, b) in BUCKETS_S.iter().enumerate() {
                cum += a.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "kafka_request_seconds_bucket{{api=\"{api}\",le=\"{b}\"}} {cum}"
                );
            }
            cum += a.buckets[BUCKETS_S.len()].load(Relaxed);
            let _ = writeln!(
                out,
                "kafka_request_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {cum}"
            );
            let _ = writeln!(
                out,
                "kafka_request_seconds_sum{{api=\"{api}\"}} {}",
                a.micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "kafka_request_seconds_count{{api=\"{api}\"}} {cum}");
        }
        for (n, help, v) in [
            (
                "kafka_produced_records_total",
                "Records acknowledged to producers",
                &self.produced_records,
            ),
            (
                "kafka_produced_bytes_total",
                "Record batch bytes acknowledged to producers",
                &self.produced_bytes,
            ),
            (
                "kafka_fetched_bytes_total",
                "Record batch bytes served to fetches",
                &self.fetched_bytes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {n} {help}\n# TYPE {n} counter\n{n} {}",
                v.load(Relaxed)
            );
        }
    }
}

/// The broker's Kafka series: [`Stats`], partitions, and each consumer group's lag per topic
/// (the high watermark less the committed offset, over the partitions this node has).
pub fn broker_metrics(b: &super::Broker) -> String {
    use std::collections::BTreeMap;
    let mut out = String::new();
    b.stats.render(&mut out);
    let topics = b.catalog.all();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let _ = writeln!(
        out,
        "# HELP kafka_partitions Partitions this node serves\n# TYPE kafka_partitions gauge\nkafka_partitions {partitions}"
    );
    let mut lag: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let offsets = b.offsets.read().unwrap_or_else(|e| e.into_inner());
    let by_name: BTreeMap<&str, &crate::state::TopicView> =
        topics.iter().map(|t| (t.meta.name.as_str(), &**t)).collect();
    for ((group, topic, p), c) in offsets.iter() {
        let Some(view) = by_name
            .get(topic.as_str())
            .and_then(|t| t.partitions.get(*p as usize))
        else {
            continue;
        };
        let hw = view.hw.load(Relaxed);
        *lag.entry((group.as_str(), topic.as_str())).or_insert(0) += (hw - c.offset).max(0);
    }
    if !lag.is_empty() {
        let _ = writeln!(out, "# HELP kafka_consumer_group_lag Records past a group's committed offsets, per topic\n# TYPE kafka_consumer_group_lag gauge");
        for ((g, t), l) in lag {
            let g = g.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(out, "kafka_consumer_group_lag{{group=\"{g}\",topic=\"{t}\"}} {l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_api_and_bucket() {
        let s = Stats::default();
        s.request(0, Duration::from_micros(700), 100, 50);
        s.request(0, Duration::from_secs(9), 10, 5);
        s.request(1, Duration::from_millis(3), 1, 2);
        s.request(-1, Duration::ZERO, 1, 1);
        s.request(i16::MAX, Duration::ZERO, 1, 1);
        let mut page = String::new();
        s.render(&mut page);
        let m = foundation::prom::Metrics::parse(&page).unwrap();
        assert_eq!(m.value("kafka_requests_total", &[("api", "Produce")]), Some(2.0));
        assert_eq!(m.value("kafka_requests_total", &[("api", "other")]), Some(2.0));
        assert_eq!(
            m.value("kafka_request_bytes_total", &[("api", "Produce")]),
            Some(110.0)
        );
        let b = m.buckets("kafka_request_seconds");
        assert!(!b.is_empty());
        assert_eq!(s.requests(0), 2);
        let page_has = |l: &str| page.lines().any(|x| x == l);
        assert!(
            page_has("kafka_request_seconds_bucket{api=\"Produce\",le=\"0.001\"} 1"),
            "{page}"
        );
        assert!(page_has(
            "kafka_request_seconds_bucket{api=\"Produce\",le=\"5\"} 1"
        ));
        assert!(page_has(
            "kafka_request_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2"
        ));
        assert!(page_has(
            "kafka_request_seconds_bucket{api=\"Fetch\",le=\"0.005\"} 1"
        ));
    }
}
