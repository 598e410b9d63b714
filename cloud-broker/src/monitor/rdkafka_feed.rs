//! The monitor's feed through librdkafka (`[monitor] client = "librdkafka"`, feature
//! `monitor-feed`): for clusters the native client cannot reach (TLS, SASL: librdkafka's
//! properties). An ordinary consumer in a group of its own.
//!
//! It reads every partition from the beginning the first time it is given it (so the
//! registry rebuilds itself from the log after a restart), and from where it stands after a
//! rebalance. It commits its offsets like any consumer, so Kafka tools show its lag; the
//! partition ends come from librdkafka's statistics every second (`/api/monitor`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tracing::{debug, warn};

use super::feed::{Feed, FeedConfig};
use super::{lock, Rec, Shared};

/// Starts the librdkafka consumer on the feed's thread.
pub(super) fn start(monitor: Shared, cfg: FeedConfig) -> anyhow::Result<Feed> {
    let topics = lock(&monitor).settings.topic_names();
    let ctx = Ctx {
        monitor: monitor.clone(),
    };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap)
        .set("group.id", &cfg.group_id)
        .set("client.id", "iot-monitor")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Topics created after the monitor started (a first gateway) are found soon.
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("statistics.interval.ms", "1000")
        // Keep fetching while the queue holds less than this; librdkafka's defaults (100k
        // messages, then a 1 s pause) starve a reader of small records: measured 3 M
        // readings in 19.7 s with them, 3.7 s with these (BENCHMARKS.md). Memory stays
        // bounded by the queue's 32 MiB.
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.queue.backoff.ms", "0")
        .set("log_level", "4");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx)?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    Feed::spawn(Box::new(move || stop.store(true, Ordering::Relaxed)), move || {
        run(consumer, monitor, flag)
    })
}

/// Most records taken from the consumer's queue before they are applied under one lock.
const BATCH: usize = 1024;

fn run(consumer: BaseConsumer<Ctx>, monitor: Shared, stop: Arc<AtomicBool>) {
    // Messages are gathered without the monitor's lock (polling runs the rebalance and
    // statistics callbacks, which take it), then applied under one lock with one clock read.
    let mut batch = Vec::with_capacity(BATCH);
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        let mut next = consumer.poll(Duration::from_millis(100));
        while let Some(m) = next {
            match m {
                Ok(m) => batch.push(m),
                Err(e) => failed = Some(e),
            }
            if batch.len() >= BATCH {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if batch.is_empty() && failed.is_none() {
            continue;
        }
        let now = foundation::time::now_ms();
        let mut g = lock(&monitor);
        for m in &batch {
            let edge = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == vocab::headers::EDGE)
                    .and_then(|h| h.value)
            });
            let rec = Rec {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
                edge,
            };
            g.apply(&rec, now);
        }
        if let Some(e) = failed.take() {
            debug!(error = %e, "monitor feed");
            g.feed = if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                format!("waiting for the topics ({e})")
            } else {
                format!("error: {e}")
            };
        }
        drop(g);
        batch.clear();
    }
    lock(&monitor).feed = "stopping".into();
    drop(batch);
    // Dropping the consumer leaves the group.
    drop(consumer);
    lock(&monitor).feed = "stopped".into();
}

struct Ctx {
    monitor: Shared,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut m = lock(&self.monitor);
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                if *p < 0 || !part.desired {
                    continue;
                }
                // The last stable offset under read_committed (librdkafka's default), else the
                // high watermark.
                let end = if part.ls_offset >= 0 {
                    part.ls_offset
                } else {
                    part.hi_offset
                };
                if end >= 0 {
                    m.set_end(topic, *p, end);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut m = lock(&self.monitor);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
            // Before the first gateway has forwarded anything: the topics come with it.
            debug!(reason, "monitor feed");
            m.feed = format!("waiting for the topics ({reason})");
        } else {
            warn!(%error, reason, "monitor feed");
            m.feed = format!("error: {reason}");
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            {
                let m = lock(&self.monitor);
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (t, p) in parts {
                    // From where this monitor stands, or from the very beginning.
                    let at = m
                        .positions
                        .get(&t)
                        .and_then(|ps| ps.get(&p))
                        .map_or(Offset::Beginning, |pos| Offset::Offset(pos.next));
                    let _ = tpl.set_partition_offset(&t, p, at);
                }
            }
            let r = c.assign(tpl);
            let mut m = lock(&self.monitor);
            m.feed = match r {
                Ok(()) => format!("reading {} partitions", tpl.count()),
                Err(e) => format!("error: assigning partitions: {e}"),
            };
        } else {
            let _ = c.unassign();
            lock(&self.monitor).feed = "rebalancing".into();
        }
    }
}
